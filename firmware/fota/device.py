"""The device's update service: provisioned config, Wi-Fi, the agent, the MQTT link.

`fota provision` writes `config.json` and this `main.py`:

    import app
    from fota import device
    device.run(app)        # never returns; app.self_test() is the self-test

or, for an application that keeps running beside the service (firmware/README.md "Embedding"):

    svc = device.start(app)   # the same, then returns the service: svc.task() (asyncio) or svc.step()

config.json: {"board": "esp32_generic", "chip_id": 0, "hw_rev": "A",
              "server": "mqtt://192.168.1.10:1883" (or mqtts://), "ca": "<CA cert, DER hex>",
              "device_id": "<optional; default machine.unique_id() in hex>",
              "user": "<broker username>", "password": "<broker password>", "key": "<report key, hex>",
              "wifi": {"ssid": "...", "key": "..."}, "prefix": "fota", "self_test_ms": 30000,
              "app_timeout_ms": 30000 (the application's alive() at least this often, or no watchdog feed),
              "watchdog_ms": <optional: arm machine.WDT at start even without a self-test>,
              "power_install": <optional: no install while app.power() is below>, "power_download": <... no download>}
"""

import json

import machine
import network

from . import clock as _clock
from . import errors
from .agent import Agent, Identity
from .errors import OtaError

from .compat import const, sleep_ms, ticks_diff, ticks_ms


_WIFI_WAIT_MS = const(20000)


def load_config(path="config.json"):
    with open(path) as f:
        return json.loads(f.read())


# Unix time now, or None while the clock is not set (fota.clock converts from the port's epoch).
def clock():
    return _clock.unix_now()


# Join the provisioned Wi-Fi network (if any) with modem sleep off for downloads.
def connect_wifi(cfg):
    wifi = cfg.get("wifi")
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if wifi and not wlan.isconnected():
        wlan.config(pm=network.PM_NONE)  # pyright: ignore[reportAttributeAccessIssue] - ESP32 port only, not in the stubs
        wlan.connect(wifi["ssid"], wifi.get("key"))
        start = ticks_ms()
        while not wlan.isconnected() and ticks_diff(ticks_ms(), start) < _WIFI_WAIT_MS:
            sleep_ms(100)
    return wlan


def parse_server(url):
    scheme, rest = url.split("://", 1)
    host, _, port = rest.partition(":")
    tls = scheme == "mqtts"
    return host, int(port) if port else (8883 if tls else 1883), tls


def tls_context(cfg):
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bytes.fromhex(cfg["ca"]))
    return ctx


def build(app, cfg):
    """The agent and its MQTT link, wired; nothing connected yet."""
    from .mqtt.client import MQTTClient
    import trusted_keys  # pyright: ignore[reportMissingImports] - generated at provisioning (fota keys export)

    from .link.mqtt import WINDOW, MqttLink

    device_id = cfg.get("device_id") or machine.unique_id().hex()
    ident = Identity(cfg["board"], cfg.get("chip_id", 0), cfg["hw_rev"], getattr(app, "VERSION", "0"))
    agent = Agent(ident, trusted_keys.KEYS, clock=clock, self_test_ms=cfg.get("self_test_ms", 30000),
                  roots=getattr(trusted_keys, "ROOTS", ()))
    if hasattr(app, "self_test"):
        agent.add_check("app", app.self_test)
    if hasattr(app, "power"):  # the application's power check (firmware/README.md "Deep-sleep duty cycles")
        agent.set_power(app.power, cfg.get("power_install"), cfg.get("power_download"))
    host, port, _tls = parse_server(cfg["server"])
    client = MQTTClient(device_id, host, port, keepalive=cfg.get("keepalive", 30),  # TLS: use_tls() after boot()
                        user=cfg.get("user"), password=cfg.get("password"))
    link = MqttLink(agent, client, device_id, prefix=cfg.get("prefix", "fota"),
                    chunk_timeout_ms=cfg.get("chunk_timeout_ms", 3000), window=cfg.get("window", WINDOW),
                    deadline_ms=cfg.get("attempt_deadline_ms", 1800000))
    agent.reporter = link.report
    return agent, link


# mqtts://: the TLS context (the ssl module, the CA parsed by mbedTLS) is made after agent.boot(), so the
# boot checks run without it in the heap; nothing connects before this (the link connects in serve()).
def use_tls(link, cfg):
    if parse_server(cfg["server"])[2]:
        link.client.ssl = tls_context(cfg)


# Every report carries the device's MAC and counter (docs/SECURITY.md): `fota provision` writes the key.
def sign_reports(link, cfg):
    if cfg.get("key"):
        from .link.auth import Signer

        link.signer = Signer(bytes.fromhex(cfg["key"]), link.device_id)


def start(app, path="config.json"):
    """Config, Wi-Fi, `agent.boot()` (the self-test), the link: the service, ready to run beside the application
    (fota.service: `svc.task()` for asyncio, `svc.step()` for a loop of its own). Nothing is connected yet."""
    import gc

    from .service import Service

    gc.collect()  # the application's imports leave garbage between the blocks the buffers below need whole
    cfg = load_config(path)
    agent, link = build(app, cfg)
    connect_wifi(cfg)
    try:
        agent.boot()  # before anything else: confirm a new image (or report its rollback)
    except OtaError as e:  # recorded and reported by the agent; the service still runs (and reports it)
        print("fota: boot:", errors.name(e.code))
    use_tls(link, cfg)  # after boot(), like the signer
    sign_reports(link, cfg)  # after boot(): its checks run in the emptiest heap; its events are sealed when sent
    wdt = None
    if agent.wdt is None and cfg.get("watchdog_ms"):  # a watchdog for the application's whole life
        wdt = machine.WDT(timeout=cfg["watchdog_ms"])
    print("fota: running", agent.version())
    return Service(agent, link, app_timeout_ms=cfg.get("app_timeout_ms", 30000), wdt=wdt)


def run(app, path="config.json"):
    """The service alone (main.py of `fota provision`): never returns; the service's loop feeds the watchdog."""
    start(app, path).run()
