"""Reports beside a Q-Block2 download (docs/COAP.md "Q-Block2 downloads"): used by link/coap.py.

    bs = Beside(link)              # made only for a Q-Block2 link: Block2 devices never load it
    bs.step()                      # each step of the link: take the POST's answer, send the next report
    bs.settle()                    # the download is over: wait for the POST on its way
    bs.abandon()                   # the attempt ends: its report is queued again, its exchange cancelled

The Q-Block2 stream and the client's exchange slot are apart, so while blocks keep coming one
report goes as a CON POST, under RFC 7252's own timers: a lost POST or ACK costs its
retransmission wait, not the download's. The POST takes a place of the window
(QBlock2.fill counts client.busy()). Events leave the link's queue when their POST starts and go
back to its front when it fails; the state document goes after each event, as core.Link._flush
sends it.
"""

from ..agent import DOWNLOADING
from ..coap.message import BAD_RESPONSE, FORMAT_JSON, POST, CoapError
from ..compat import const, ticks_ms

_SERVER_ERROR = const(0xA0)  # 5.00 and above: the server failed, the report goes again


class Beside:
    def __init__(self, link):
        self.link = link
        self.posting = None  # the Exchange of the report POST on its way
        self._event = None  # the event it carries (None: the state document)

    # A Q-Block2 download is running: reports go beside its blocks.
    def downloading(self):
        link = self.link
        return link.agent.state == DOWNLOADING and link._rx.path is not None

    # Without waiting (while the download runs): take the POST's answer when it came, then send the
    # next report that is due.
    def step(self):
        link, ex = self.link, self.posting
        if ex is not None:
            if link.client.waiting(ex) and self.downloading():
                return  # the download's receive() polls the client meanwhile
            if link.client.waiting(ex):
                self.settle()  # no download any more, and the exchange slot is needed
            else:
                self._posted(ex)
        if self.downloading() and link._flush_due() and not link._reports_wait():
            if link._events:
                self._event, path = link._events.pop(0), link._p_events
            else:
                self._event, path, link._state_due = None, link._p_state, False
            text = link._report(self._event)
            self.posting = link.client.start(POST, path, payload=text.encode() if isinstance(text, str) else text,
                                             content_format=FORMAT_JSON)

    # The report POST ended: answered (done), failed or cancelled (the report goes again later).
    def _posted(self, ex):
        link, ev, code, error = self.link, self._event, ex.code, ex.error
        self.posting = self._event = None
        if code or error:
            link.client.free(ex)  # cancelled: the slot is free already (and may be someone else's)
        if error or not code or code >= _SERVER_ERROR:
            self._requeue(ev)
            if error or code:
                raise CoapError(error or BAD_RESPONSE, code)
            return
        link._ok()
        if ev is not None:
            link._state_due = True  # an event changes the state document too (core.Link._flush)
            if ev.get("event") == "progress" and link.agent.state == DOWNLOADING:
                link._reported, link._progressed = ticks_ms(), True

    def _requeue(self, ev):
        if ev is None:
            self.link._state_due = True
        else:
            self.link._events.insert(0, ev)

    # Wait for the report on its way (its answer, or its retransmissions running out): once the
    # download is over, before anything else needs the exchange slot or a report must go at once
    # (`rebooting` goes right before the reset). The download and its verification do not wait.
    def settle(self):
        ex, client = self.posting, self.link.client
        while ex is not None and client.waiting(ex):
            client.poll(100)
        if ex is not None:
            try:
                self._posted(ex)
            except CoapError:
                pass  # queued again: it goes with the next reports

    # The attempt ends without waiting: the report is queued again, its exchange cancelled.
    def abandon(self):
        ex = self.posting
        if ex is not None:
            if self.link.client.waiting(ex) or ex.code or ex.error:
                self.link.client.free(ex)  # still ours (nothing else starts while a report is on its way)
            self.posting = None
            self._requeue(self._event)
            self._event = None
