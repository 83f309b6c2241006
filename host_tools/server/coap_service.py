"""The server side of docs/COAP.md on aiocoap, run by a thread with its own event loop.

Resources under `/<prefix>/`: `<device>/offer` (GET, the binary offer of docs/PROTOCOL.md),
`o/<offer id>` (GET with Block2: the offered payload, each block read from the package store
when asked for), `<device>/state` and `<device>/events` (POST, JSON). What answers them is a
`Backend`: `RegistryBackend` for `fota serve` (registry + package store), the gateway's own
for `fota gateway`.

    svc = CoapService(RegistryBackend(registry, store), host="127.0.0.1", port=5683)
    svc.start()
    ...
    svc.stop()

Q-Block2 (RFC 9177) bursts on `o/<offer id>`: a GET with one Q-Block2 option per block (up to
MAX_PAYLOADS, ascending) gets one 2.05 per block, in that order, each with Q-Block2, ETag and Size2,
all sent as NON responses with the request's token (`qblock_burst`), aiocoap's own response
suppressed. Devices use it to ask for many blocks, and the missing ones again, per request
(firmware/fota/coap/qblock.py); aiocoap's client uses Block2.

Block2 is done here, not by aiocoap: aiocoap's automatic block-wise renders the whole body
and keeps it per client for 93 s (a block asked for later gets 4.08) and sets no ETag. Here
every block is read on demand, carries ETag = SHA-256(payload)[:8] and Size2 = payload size.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiocoap
from aiocoap import error as coap_error
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import NON
from aiocoap.optiontypes import BlockOption, UintOption

from host_tools import protocol
from host_tools.errors import FotaError
from host_tools.image.package import PackageError
from host_tools.server import inbound
from host_tools.server.identity import Identities
from host_tools.server.loopthread import LoopThread
from host_tools.server.packages import PackageStore
from host_tools.server.registry import Registry

ETAG_LEN = 8
FORMAT_OCTETS = 42
MAX_SZX = 6  # 1024-byte blocks (7 is BERT, which CoAP over UDP does not have)
MAX_PAYLOADS = 10  # RFC 9177 7.2: blocks sent for one request before the client is heard from again
Block = BlockOption.BlockwiseTuple


class CoapServiceError(FotaError):
    """The CoAP service could not start."""


@dataclass(frozen=True)
class Payload:
    """An offered payload: its size, its ETag, and how to read a piece of it."""

    size: int
    etag: bytes
    read: Callable[[int, int], bytes]  # (offset, length) -> bytes


class Backend(Protocol):
    def offer(self, device: str) -> bytes | None: ...

    def payload(self, offer_id: int) -> Payload | None: ...

    # A report as the device POSTed it: JSON + its MAC trailer (docs/PROTOCOL.md "Authenticated reports").
    def state(self, device: str, payload: bytes) -> None: ...

    def event(self, device: str, payload: bytes) -> None: ...


def payload_etag(read: Callable[[int, int], bytes], size: int, piece: int = 1 << 16) -> bytes:
    """ETag of a payload: the first 8 bytes of its SHA-256, read piece by piece."""
    h = hashlib.sha256()
    for offset in range(0, size, piece):
        h.update(read(offset, min(piece, size - offset)))
    return h.digest()[:ETAG_LEN]


class RegistryBackend:
    """`fota serve`: offers from the registry, payloads from the package store."""

    def __init__(self, registry: Registry, store: PackageStore, *, on_final: Callable[[str], None] | None = None,
                 identities: Identities | None = None) -> None:
        self.registry = registry
        self.identities = identities  # checks each report's MAC and counter; None: no report is recorded
        self.store = store
        self.on_final = on_final  # called with the device when its offer reached a final status
        self._etags: dict[str, bytes] = {}  # package id -> ETag (8 bytes each; payloads are not kept)
        self._lock = threading.Lock()

    def offer(self, device: str) -> bytes | None:
        """The device's newest offer that has no outcome yet (what MQTT keeps retained)."""
        current = [o for o in self.registry.offers(device) if o.status not in protocol.FINAL]
        if not current:
            return None
        o = current[-1]
        return protocol.encode_offer(o.id, o.chunk, o.policy, self.store.offer_blob(o.package))

    def payload(self, offer_id: int) -> Payload | None:
        o = self.registry.offer(offer_id)
        if o is None:
            return None
        try:
            package, _ = self.store.load(o.package)
        except PackageError:
            return None
        pid = o.package
        size = package.manifest.encoded_size or package.manifest.image_size

        def read(offset: int, length: int) -> bytes:
            return self.store.chunk(pid, offset, length)

        with self._lock:
            etag = self._etags.get(pid)
            if etag is None:
                etag = self._etags[pid] = payload_etag(read, size)
        return Payload(size, etag, read)

    def _authentic(self, device: str, kind: str, payload: bytes) -> bytes | None:
        return self.identities.open_report(device, kind, payload) if self.identities is not None else None

    def state(self, device: str, payload: bytes) -> None:
        body = self._authentic(device, "state", payload)
        if body is not None and self.registry.record_state(device, inbound.parse_state(body).as_dict()) and self.on_final:
            self.on_final(device)  # an INSTALLING offer the state showed committed (Registry.settle_from_images)

    def event(self, device: str, payload: bytes) -> None:
        body = self._authentic(device, "events", payload)
        if body is not None and self.registry.record_event(device, inbound.parse_event(body).as_dict()) and self.on_final:
            self.on_final(device)


def block_response(request: aiocoap.Message, size: int, etag: bytes, read: Callable[[int, int], bytes],
                   max_szx: int = MAX_SZX) -> aiocoap.Message:
    """The Block2 answer to a GET (RFC 7959 2.4): the asked block, or block 0, at most 2**(max_szx+4) bytes."""
    asked = request.opt.block2
    if asked is None:
        block = Block(0, 0, max_szx)
    elif asked.size_exponent > MAX_SZX:  # BERT: not over UDP; answer with 1024-byte blocks
        block = Block(asked.block_number, 0, min(MAX_SZX, max_szx))
    else:
        block = asked.reduced_to(max_szx)  # a smaller SZX than asked: the client keeps it
    if block.start >= size and block.block_number > 0:
        return aiocoap.Message(code=Code.BAD_OPTION)
    data = read(block.start, block.size)
    more = block.start + len(data) < size
    msg = aiocoap.Message(code=Code.CONTENT, payload=data, etag=etag, size2=size, content_format=FORMAT_OCTETS)
    if asked is not None or more:
        msg.opt.block2 = Block(block.block_number, more, block.size_exponent)
    return msg


def qblock_values(request: aiocoap.Message) -> list[int] | None:
    """The request's Q-Block2 option values (RFC 9177 4.4), or None when it has none."""
    opts = request.opt.get_option(OptionNumber.Q_BLOCK2)
    if not opts:
        return None
    return [int.from_bytes(o.value, "big") if isinstance(o.value, bytes) else int(o.value) for o in opts]


def qblock_burst(values: list[int], size: int, etag: bytes, read: Callable[[int, int], bytes],
                 max_szx: int = MAX_SZX) -> list[aiocoap.Message]:
    """The 2.05 responses to a Q-Block2 GET, one per block asked for, in the order asked (the first
    MAX_PAYLOADS; blocks beyond the end are left out). No block at all: one 4.02 (as for Block2)."""
    out = []
    for v in values[:MAX_PAYLOADS]:
        szx = min(v & 7, max_szx, MAX_SZX)
        num = (v >> 4) << ((v & 7) - szx)  # a smaller size than asked: the block where the asked one starts
        start = num << (szx + 4)
        if start >= size:
            continue
        data = read(start, 16 << szx)
        more = start + len(data) < size
        msg = aiocoap.Message(code=Code.CONTENT, payload=data, etag=etag, size2=size, content_format=FORMAT_OCTETS)
        msg.opt.add_option(UintOption(OptionNumber.Q_BLOCK2, (num << 4) | (8 if more else 0) | szx))
        out.append(msg)
    return out or [aiocoap.Message(code=Code.BAD_OPTION)]


# Send `msg` as a NON response to `request` now, beside aiocoap's own response (a Q-Block2 burst).
# The message id comes from aiocoap's message layer when it can be reached (udp6: the interface's
# MessageManager), so it never repeats one aiocoap just used; False: it could not be sent.
def send_non_response(request: aiocoap.Message, msg: aiocoap.Message) -> bool:
    iface = getattr(request.remote, "interface", None)
    next_mid = getattr(getattr(iface, "_ctx", None), "_next_message_id", None)
    if iface is None or next_mid is None:
        return False
    msg.mtype, msg.token, msg.remote, msg.mid = NON, request.token, request.remote, next_mid()
    iface.send(msg)
    return True


class FotaResource(resource.Resource, resource.PathCapable):
    """Everything under /<prefix>/: the remaining path picks the resource."""

    def __init__(self, backend: Backend, *, max_szx: int = MAX_SZX) -> None:
        super().__init__()
        self.backend = backend
        self.max_szx = max_szx
        self.blocks_served = 0
        self.bytes_served = 0
        self.stats = inbound.InboundStats("coap")  # requests refused or failed (a metric)

    async def needs_blockwise_assembly(self, request) -> bool:
        # GETs answer Block2 themselves; POSTs may come in Block1, assembled only up to the cap
        block1 = request.opt.block1
        return request.code != Code.GET and (block1 is None or block1.start + block1.size <= inbound.MAX_STATE)

    async def render(self, request):
        try:
            return await super().render(request)
        except inbound.InboundError as exc:
            self.stats.refused(str(request.code), exc)
            return aiocoap.Message(code=Code.BAD_REQUEST)
        except Exception as exc:  # noqa: BLE001 - one request never ends the service (counted, logged)
            if isinstance(exc, coap_error.RenderableError):
                raise
            self.stats.failed(str(request.code), exc)
            return aiocoap.Message(code=Code.INTERNAL_SERVER_ERROR)

    async def render_get(self, request):
        path = request.opt.uri_path
        if len(path) == 2 and path[0] == "o" and path[1].isdigit():
            payload = self.backend.payload(int(path[1]))
            if payload is None:
                return aiocoap.Message(code=Code.NOT_FOUND)
            values = qblock_values(request)
            if values is not None:
                return self._burst(request, values, payload)
            msg = block_response(request, payload.size, payload.etag, payload.read, self.max_szx)
            self.blocks_served += 1
            self.bytes_served += len(msg.payload)
            return msg
        if len(path) == 2 and path[1] == "offer":
            blob = self.backend.offer(path[0])
            if blob is None:
                return aiocoap.Message(code=Code.NOT_FOUND)
            etag = hashlib.sha256(blob).digest()[:ETAG_LEN]
            return block_response(request, len(blob), etag, lambda o, n: blob[o : o + n], self.max_szx)
        return aiocoap.Message(code=Code.NOT_FOUND)

    # Every block goes out from here, in the order asked (aiocoap could send its own response after
    # blocks of the next request, and the device reads order); aiocoap's response is then suppressed
    # (RFC 7967 No-Response for 2.xx: nothing for a NON request, an empty ACK for a CON one).
    def _burst(self, request: aiocoap.Message, values: list[int], payload: Payload) -> aiocoap.Message:
        msgs = qblock_burst(values, payload.size, payload.etag, payload.read, self.max_szx)
        if msgs[0].code != Code.CONTENT:
            return msgs[0]
        for i, msg in enumerate(msgs):
            if not send_non_response(request, msg):
                return msgs[i]  # no way past aiocoap (another transport): this block as its response, the rest asked again
            self._served(msg)
        return aiocoap.Message(code=Code.CONTENT, no_response=2)

    def _served(self, msg: aiocoap.Message) -> None:
        self.blocks_served += 1
        self.bytes_served += len(msg.payload)

    async def render_post(self, request):
        path = request.opt.uri_path
        if len(path) != 2 or path[1] not in ("state", "events"):
            return aiocoap.Message(code=Code.NOT_FOUND)
        cap = inbound.MAX_STATE if path[1] == "state" else inbound.MAX_EVENT
        b1 = request.opt.block1  # an assembled body keeps the last block's option; one not assembled is over the cap
        if len(request.payload) > cap or (b1 is not None and (b1.more or len(request.payload) <= b1.start)):
            self.stats.refused(path[1], inbound.InboundError(f"a {path[1]} POST over {cap} bytes"))
            return aiocoap.Message(code=Code.REQUEST_ENTITY_TOO_LARGE, size1=cap)
        device = inbound.device_id(path[0])
        if path[1] == "state":  # the backend checks the device's MAC (or relays it unchanged: a gateway)
            self.backend.state(device, bytes(request.payload))
        else:
            self.backend.event(device, bytes(request.payload))
        return aiocoap.Message(code=Code.CHANGED)


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class CoapService:
    """aiocoap's UDP transport on (host, port), serving one FotaResource."""

    def __init__(self, backend: Backend, *, host: str = "127.0.0.1", port: int = 5683, prefix: str = "fota",
                 max_szx: int = MAX_SZX) -> None:
        self.host = host
        self.port = port or free_udp_port(host)
        self.resource = FotaResource(backend, max_szx=max_szx)
        self.prefix = prefix
        self._lt = LoopThread("coap-server")
        self._context: aiocoap.Context | None = None

    @property
    def url(self) -> str:
        return f"coap://{self.host}:{self.port}"

    def start(self, timeout: float = 10) -> None:
        try:
            self._context = self._lt.start(self._start, what=f"the CoAP service on {self.host}:{self.port}", timeout=timeout)
        except FotaError as exc:
            raise CoapServiceError(exc.message) from exc

    async def _start(self) -> aiocoap.Context:
        site = resource.Site()
        site.add_resource([self.prefix], self.resource)
        return await aiocoap.Context.create_server_context(site, bind=(self.host, self.port), transports=["udp6"])

    def alive(self) -> bool:
        return self._lt.alive()

    def stop(self) -> None:
        if self._context is not None:
            self._lt.stop(self._context.shutdown)
            self._context = None
