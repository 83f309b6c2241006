"""CoAP delivery end to end: the update server's CoAP service (and `fota gateway` in front of an MQTT
server), virtual boards running the agent over CoAP, a lossy link between them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import subprocess
import sys
import time

import aiocoap
import pytest
from aiocoap.optiontypes import BlockOption

from coapkit import coap_board, start_server
from host_tools.server.coap_service import CoapService, Payload, RegistryBackend
from host_tools.server.gateway import Gateway, GatewayConfig
from host_tools.sim.flash import PowerPlan
from host_tools.sim.runtime import BoardRun
from mqttkit import device_id, wait_final, wait_until
from simkit import fw_image, fw_package
from udp_proxy import Impairment, UdpProxy

FOTA = [sys.executable, "-m", "host_tools.cli"]


@pytest.fixture
def server(tmp_path):
    srv = start_server(tmp_path / "server")
    yield srv
    srv.stop()


def pkg(version="2.0.0", behaviour="ok", sequence=2, pad=0, **fields):
    return fw_package(fw_image(version, behaviour, pad), version=version, sequence=sequence, **fields)


def connected(server, board):
    return wait_until(lambda: server.registry.device(device_id(board)), 30, "the device's first state")


def events(server, board) -> list[str]:
    return [e["event"] for e in server.registry.events(device_id(board))]


def slot_digests(board) -> list[str]:
    return [s.sha256 for s in board.status().slots]


@pytest.mark.fw
@pytest.mark.parametrize("encoding", ["raw", "zlib"])
def test_update_succeeds_only_after_the_self_test_committed(tmp_path, server, encoding):
    board = coap_board(tmp_path, "ok", ids=server.identities, port=server.coap.port, window=2)
    with BoardRun(board) as run:
        connected(server, board)
        offer_id = server.deploy(pkg(pad=20_000, encoding=encoding), [device_id(board)])[0]
        seen = []
        offer = wait_until(lambda: (o := server.registry.offer(offer_id)) and (seen.append(o.status) or o.status == "SUCCEEDED") and o,
                           60, "SUCCEEDED")
        wait_until(lambda: server.registry.device(device_id(board))["version"] == "2.0.0", 30, "v2 reported")
    names = events(server, board)
    assert names.index("committed") > names.index("rebooting") > names.index("downloaded")  # success only after the commit
    assert "SUCCEEDED" not in seen[:-1] and offer.status == "SUCCEEDED" and run.flash.faults == []


@pytest.mark.fw
@pytest.mark.parametrize("link, heap", [({}, "64k"), ({"qblock": True, "window": 16}, "96k")], ids=["block2", "qblock2"])
def test_zlib_update_fits_a_small_heap(tmp_path, server, link, heap):
    # Q-Block2 reads a window of answers at once: 16 blocks (18 KiB) of read buffer on top
    board = coap_board(tmp_path, "heap", ids=server.identities, port=server.coap.port, **link)
    with BoardRun(board, heapsize=heap) as run:
        connected(server, board)
        offer = wait_final(server, server.deploy(pkg(pad=20_000, encoding="zlib"), [device_id(board)])[0], 60)
    assert offer.status == "SUCCEEDED", f"{offer.status} {offer.code} {offer.reason}; board:\n{run.transcript()[-3000:]}"
    assert "MemoryError" not in run.transcript()


@pytest.mark.fw
def test_failed_self_test_is_recorded_as_rolled_back_with_the_reason(tmp_path, server):
    board = coap_board(tmp_path, "rb", ids=server.identities, port=server.coap.port)
    with BoardRun(board):
        connected(server, board)
        offer_id = server.deploy(pkg(behaviour="fail"), [device_id(board)])[0]
        offer = wait_final(server, offer_id, 60)
        wait_until(lambda: server.registry.device(device_id(board))["version"] == "1.0.0", 30, "v1 reported")
    assert offer.status == "ROLLED_BACK" and offer.code == 22 and "SELF_TEST_FAILED: app" in offer.reason


@pytest.mark.fw
def test_refused_packages_never_touch_flash(tmp_path, server):
    bad_sig = bytearray(pkg())
    bad_sig[32 + int.from_bytes(bad_sig[8:12], "little") + 5] ^= 1  # inside the signature
    cases = [  # one board, offered each in turn
        ("other board", pkg(board="esp32_generic"), 8),
        ("other hw rev", pkg(hw_revs=("Z",)), 10),
        ("replayed sequence", pkg(sequence=0), 11),
        ("bad signature", bytes(bad_sig), 5),
    ]
    board = coap_board(tmp_path, "ref", ids=server.identities, port=server.coap.port)
    with BoardRun(board) as run:
        connected(server, board)
        for label, data, code in cases:
            offer = wait_final(server, server.deploy(data, [device_id(board)])[0], 30)
            assert (offer.status, offer.code) == ("REFUSED", code), label
        assert run.flash.ops_in(0xD000, 0x310000) == 2  # the first boot's otadata write only (otadata and the app slots: files and NVS aside)
    assert server.coap.resource.blocks_served == 0  # not one block was asked for


@pytest.mark.fw
def test_power_cut_during_download_resumes_by_block(tmp_path, server):
    board = coap_board(tmp_path, "pc", ids=server.identities, port=server.coap.port)
    big = pkg(pad=160_000)
    chunks = -(-(len(big) - 32 - int.from_bytes(big[8:12], "little") - 64) // 1024)
    # 2 ops for the first boot's otadata, then per 4 KiB sector one erase and four 1 KiB writes: cut in sector 30
    with BoardRun(board, plan=PowerPlan(cut_before=2 + 5 * 30 + 2)) as run:
        connected(server, board)
        offer_id = server.deploy(big, [device_id(board)])[0]
        run.wait_event("power_loss", timeout=60)
        served_before = server.coap.resource.blocks_served
        run.power_on()
        offer = wait_final(server, offer_id, 60)
    downloading = [e["body"] for e in server.registry.events(device_id(board)) if e["event"] == "downloading"]
    assert downloading[0]["have"] == 0 and downloading[-1]["have"] >= 64  # the journal (every 64 KiB) was kept
    resumed = server.coap.resource.blocks_served - served_before
    assert resumed <= chunks - downloading[-1]["have"] + 2  # only the missing blocks were asked for
    assert offer.status == "SUCCEEDED" and run.flash.faults == []


@pytest.mark.fw
@pytest.mark.parametrize("link", [{"window": 2}, {"qblock": True, "window": 16}], ids=["block2", "qblock2"])
def test_lossy_link_completes_without_rewriting_flash(tmp_path, server, link):
    lossy = Impairment(loss=0.2, duplicate=0.05, reorder=0.05, jitter_ms=2)
    image = fw_image("2.0.0", "ok", 60_000, secure_version=2)  # built for sequence 2: the package carries it unchanged
    with UdpProxy(("127.0.0.1", server.coap.port), up=lossy, down=lossy, seed=20) as proxy:
        board = coap_board(tmp_path, "lossy", ids=server.identities, port=proxy.port, ack_timeout_ms=100, max_failures=8,
                           **link)
        with BoardRun(board) as run:
            connected(server, board)
            offer_id = server.deploy(fw_package(image, version="2.0.0", sequence=2), [device_id(board)])[0]
            offer = wait_final(server, offer_id, 90)
            wait_until(lambda: server.registry.device(device_id(board))["version"] == "2.0.0", 30, "v2 reported")
    up, down = proxy.stats["up"], proxy.stats["down"]
    assert up.dropped > 10 and down.dropped > 10 and up.duplicated + down.duplicated > 0 and up.reordered + down.reordered > 0
    assert offer.status == "SUCCEEDED" and "failed" not in events(server, board)
    assert run.flash.faults == []  # strict flash: no block was ever programmed over different data
    assert hashlib.sha256(image).hexdigest() in slot_digests(board)


@pytest.mark.fw
def test_a_qblock2_download_goes_on_while_its_reports_go_unanswered(tmp_path, server):
    package = pkg(pad=60_000)
    blocks = -(-(len(package) - 32 - int.from_bytes(package[8:12], "little") - 64) // 1024)
    with UdpProxy(("127.0.0.1", server.coap.port)) as proxy:
        board = coap_board(tmp_path, "rep", ids=server.identities, port=proxy.port, qblock=True, window=16, max_failures=8)
        with BoardRun(board) as run:
            connected(server, board)
            proxy.impair["up"] = Impairment(drop_if=lambda d: len(d) > 1 and d[1] == 0x02)  # every POST (0.02) is lost
            served = server.coap.resource.blocks_served
            offer_id = server.deploy(package, [device_id(board)])[0]
            wait_until(lambda: server.coap.resource.blocks_served - served >= blocks, 10, "every block asked for")
            unreported = "downloading" not in events(server, board)
            proxy.impair["up"] = Impairment()
            offer = wait_final(server, offer_id, 60)
    assert unreported and proxy.stats["up"].dropped > 0  # the blocks came while the 'downloading' report was lost
    assert offer.status == "SUCCEEDED" and run.flash.faults == [] and "downloading" in events(server, board)


@pytest.mark.fw
def test_link_loss_is_reported_and_the_download_resumes_where_it_stopped(tmp_path, server):
    link = Impairment(delay_ms=3)
    with UdpProxy(("127.0.0.1", server.coap.port), up=link, down=link) as proxy:
        board = coap_board(tmp_path, "ll", ids=server.identities, port=proxy.port, ack_timeout_ms=100, max_retransmit=2, max_failures=2)
        with BoardRun(board) as run:
            connected(server, board)
            offer_id = server.deploy(pkg(pad=160_000), [device_id(board)])[0]
            wait_until(lambda: "progress" in events(server, board), 30, "64 KiB downloaded")
            proxy.impair["up"] = Impairment(loss=1.0)  # the server is gone
            run.wait_for("CoAP attempt ends", timeout=30)
            proxy.impair["up"] = link
            wait_until(lambda: server.registry.device(device_id(board))["version"] == "2.0.0", 60, "v2 reported")
    bodies = [e["body"] for e in server.registry.events(device_id(board))]
    lost = [b for b in bodies if b["event"] == "failed"]
    assert [b["code"] for b in lost] == [28] and lost[0]["offer"] == offer_id  # CONNECTION_LOST, reported once back
    downloading = [b for b in bodies if b["event"] == "downloading"]
    assert len(downloading) == 2 and downloading[1]["have"] >= 64  # the second attempt kept what was in flash
    assert bodies[-1]["event"] == "committed" and run.flash.faults == []


class Meddling:
    """The server's backend, altered: another ETag after `etag_after` payload requests, or a wrong Size2."""

    def __init__(self, inner, *, etag_after: int | None = None, size_delta: int = 0) -> None:
        self.inner = inner
        self.etag_after = etag_after
        self.size_delta = size_delta
        self.calls = 0

    def payload(self, offer_id):
        p = self.inner.payload(offer_id)
        if p is None:
            return None
        self.calls += 1
        etag = p.etag
        if self.etag_after is not None and self.calls > self.etag_after:
            etag = bytes(b ^ 0xFF for b in etag)
        return Payload(p.size + self.size_delta, etag, p.read)

    def __getattr__(self, name):  # offer, state, event: unchanged
        return getattr(self.inner, name)


@pytest.fixture
def meddling_service(server):
    started = []

    def start(**kw) -> CoapService:
        max_szx = kw.pop("max_szx", 6)
        svc = CoapService(Meddling(RegistryBackend(server.registry, server.store, identities=server.identities), **kw), port=0, max_szx=max_szx)
        svc.start()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


@pytest.mark.fw
def test_smaller_blocks_from_the_server_are_kept_and_assembled_into_chunks(tmp_path, server, meddling_service):
    svc = meddling_service(max_szx=5)  # 512-byte blocks; the agent's chunks stay 1024
    board = coap_board(tmp_path, "szx", ids=server.identities, port=svc.port)
    data = pkg(pad=20_000)
    with BoardRun(board) as run:
        connected(server, board)
        offer = wait_final(server, server.deploy(data, [device_id(board)])[0], 60)
    size = len(data) - 32 - int.from_bytes(data[8:12], "little") - 64
    assert offer.status == "SUCCEEDED" and run.flash.faults == []
    assert svc.resource.blocks_served == -(-size // 512)  # every block once, at the server's size


@pytest.mark.fw
def test_etag_change_mid_download_starts_over_from_block_0(tmp_path, server, meddling_service):
    svc = meddling_service(etag_after=20)
    board = coap_board(tmp_path, "etag", ids=server.identities, port=svc.port)
    data = pkg(pad=20_000)
    with BoardRun(board) as run:
        connected(server, board)
        offer = wait_final(server, server.deploy(data, [device_id(board)])[0], 60)
    bodies = [e["body"] for e in server.registry.events(device_id(board))]
    assert [b["have"] for b in bodies if b["event"] == "downloading"] == [0, 0]  # restarted, journal dropped
    assert "failed" not in [b["event"] for b in bodies]  # a restart, not an outcome
    size = len(data) - 32 - int.from_bytes(data[8:12], "little") - 64
    assert svc.resource.blocks_served == 20 + 1 + -(-size // 1024)  # the first with the new ETag was thrown away
    assert offer.status == "SUCCEEDED" and run.flash.faults == []  # sectors erased again before rewriting


@pytest.mark.fw
def test_size2_other_than_the_manifest_says_is_refused_before_any_erase(tmp_path, server, meddling_service):
    svc = meddling_service(size_delta=4096)
    board = coap_board(tmp_path, "size2", ids=server.identities, port=svc.port)
    with BoardRun(board) as run:
        connected(server, board)
        offer = wait_final(server, server.deploy(pkg(), [device_id(board)])[0], 30)
    assert (offer.status, offer.code) == ("REFUSED", 14) and run.flash.ops_in(0xD000, 0x310000) == 2


@pytest.fixture
def gateway(tmp_path, server):
    gws = []

    def start(devices: list[str]) -> Gateway:
        cred = server.identities.enroll_gateway(f"test{len(gws)}", devices)  # its broker login: these devices' topics
        gw = Gateway(GatewayConfig(upstream=server.broker_url, data_dir=tmp_path / "gw", devices=devices, coap_port=0,
                                   auth=(cred.user, cred.password)))  # its client id: its login
        gw.start()
        gws.append(gw)
        return gw

    yield start
    for gw in gws:
        gw.stop()


@pytest.mark.fw
def test_device_behind_a_gateway_updates_from_an_mqtt_server(tmp_path, server, gateway):
    board = coap_board(tmp_path, "gw", ids=server.identities, port=0)
    gw = gateway([device_id(board), "other"])
    board.write_file("net.json", json.dumps({**json.loads(board.read_file("net.json").decode()), "port": gw.coap.port}))
    data = pkg(pad=20_000)
    with BoardRun(board) as run:
        connected(server, board)  # its state reached the MQTT server through the gateway
        offer_ids = server.deploy(data, [device_id(board), "other"])  # "other" never fetches: the cache serves both
        offer = wait_final(server, offer_ids[0], 60)
        wait_until(lambda: server.registry.device(device_id(board))["version"] == "2.0.0", 30, "v2 reported")
    assert offer.status == "SUCCEEDED" and run.flash.faults == []
    assert events(server, board)[-1] == "committed"
    assert gw.fetches_started == 1 and server.mqtt.chunks_served == -(-gw.bytes_fetched // 4096)  # once per digest
    assert server.coap.resource.blocks_served == 0  # everything came through the gateway


@pytest.mark.fw
def test_a_gateway_that_alters_a_cached_byte_gets_the_package_refused(tmp_path, server, gateway):
    board = coap_board(tmp_path, "gwt", ids=server.identities, port=0)
    gw = gateway([device_id(board)])

    def flip(path):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

    gw.tamper_hook = flip
    board.write_file("net.json", json.dumps({**json.loads(board.read_file("net.json").decode()), "port": gw.coap.port}))
    with BoardRun(board) as run:
        connected(server, board)
        offer = wait_final(server, server.deploy(pkg(), [device_id(board)])[0], 60)
        time.sleep(0.5)  # a reset would show now
    assert (offer.status, offer.code) == ("FAILED", 16) and "DIGEST_MISMATCH" in offer.reason
    assert "rebooting" not in events(server, board) and len(run.boots()) == 1  # set_boot() never called
    assert "APP 2.0.0" not in run.transcript()


def test_aiocoap_fetches_the_payload_blockwise_with_one_etag(server):
    data = pkg(pad=5_000)
    payload = data[32 + int.from_bytes(data[8:12], "little") + 64 :]
    offer_id = server.deploy(data, ["nobody"])[0]
    uri = f"coap://127.0.0.1:{server.coap.port}/fota/o/{offer_id}"

    async def fetch():
        ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            whole = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response  # aiocoap's own Block2
            blocks, etags, sizes, num = [], set(), set(), 0
            while True:
                req = aiocoap.Message(code=aiocoap.GET, uri=uri, block2=BlockOption.BlockwiseTuple(num, False, 5))
                r = await ctx.request(req, handle_blockwise=False).response
                blocks.append(r.payload)
                etags.add(r.opt.etag)
                sizes.add(r.opt.size2)
                if not r.opt.block2.more:
                    return whole, b"".join(blocks), etags, sizes, num
                num += 1
        finally:
            await ctx.shutdown()

    whole, joined, etags, sizes, last = asyncio.run(fetch())
    assert whole.code == aiocoap.CONTENT and whole.payload == payload and joined == payload
    assert etags == {hashlib.sha256(payload).digest()[:8]} and whole.opt.etag in etags
    assert sizes == {len(payload)} and last == (len(payload) - 1) // 512


def _banner(proc, pattern):
    """The line of `proc`'s output (stdout + stderr) matching `pattern`. Notes on stderr may come first:
    another process on 1883 or 8470 (a broker or server of a test running alongside) makes fota serve
    say it took a free port instead (host_tools/cli/server.py)."""
    seen = []
    for line in proc.stdout:
        match = re.search(pattern, line)
        if match:
            return match
        seen.append(line)
    raise AssertionError(f"no line matching {pattern!r} before the output ended: {seen}")


def test_fota_serve_and_fota_gateway_answer_coap(tmp_path):
    serve = subprocess.Popen([*FOTA, "serve", "--data", str(tmp_path / "srv"), "--coap-port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gw = None
    try:
        broker, coap = _banner(serve, r"broker (\S+), CoAP (\S+),").groups()
        assert json.loads((tmp_path / "srv" / "serve.json").read_text())["coap"] == coap
        gw = subprocess.Popen([*FOTA, "gateway", "--upstream", broker, "--coap-port", "0", "--device", "d1",
                               "--data", str(tmp_path / "gw")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        gw_coap = _banner(gw, r"CoAP (\S+),").group(1)

        async def ask(url):
            ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
            try:
                return (await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=url)).response).code
            finally:
                await ctx.shutdown()

        assert asyncio.run(ask(f"{coap}/fota/d1/offer")) == aiocoap.NOT_FOUND  # no offer yet
        assert asyncio.run(ask(f"{gw_coap}/fota/d1/offer")) == aiocoap.NOT_FOUND
    finally:
        for p in (gw, serve):
            if p is not None:
                p.send_signal(signal.SIGTERM)
                assert p.wait(timeout=30) == 0, p.stdout.read()
                p.stdout.close()


@pytest.mark.fw
def test_delta_update_over_coap_commits_and_a_wrong_base_is_refused_before_any_write(tmp_path, server):
    """Issue 20 over CoAP: the delta for the running image is patched from the running slot and committed;
    a delta naming another base is refused (BASE_MISMATCH) with no flash operation past the first boot's."""
    from test_delta import delta_package

    from host_tools.image.package import parse_package

    v1, v2 = fw_image("1.0.0"), fw_image("2.0.0", pad=20_000)
    board = coap_board(tmp_path, "delta", ids=server.identities, port=server.coap.port, window=2, image=v1)
    other = coap_board(tmp_path, "other", ids=server.identities, port=server.coap.port, window=2,
                       image=fw_image("1.0.0", pad=4096))
    with BoardRun(board) as run, BoardRun(other) as run_other:
        connected(server, board)
        connected(server, other)
        delta = delta_package(v1, v2)
        assert len(delta) < len(v2) // 4  # what goes over the air
        good, bad = server.deploy(delta, [device_id(board)])[0], server.deploy(delta, [device_id(other)])[0]
        offer = wait_final(server, good)
        refused = wait_final(server, bad)
        wait_until(lambda: server.registry.device(device_id(board))["version"] == "2.0.0", 30, "v2 reported")
    assert offer.status == "SUCCEEDED" and run.flash.faults == []
    assert parse_package(delta).manifest.image_sha256.hex() in slot_digests(board)  # the image the package names (stamped)
    assert refused.code == 39 and run_other.flash.ops_in(0xD000, 0x310000) == 2  # BASE_MISMATCH (otadata and the app slots: files and NVS aside); a campaign falls back to the full package
