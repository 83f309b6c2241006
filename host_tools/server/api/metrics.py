"""Metrics in the Prometheus text exposition format (version 0.0.4), from the registry and the services.

    text = render_metrics(server, feed)      # served at GET /metrics (read token)

Gauges come from the registry at scrape time (devices by state and version, offers by status,
campaign devices by status and progress); counters from the running services (chunks and bytes
served, malformed and rejected device messages, webhook deliveries).
"""

from __future__ import annotations

from collections.abc import Iterable

from host_tools.protocol import FINAL

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = {0: "idle", 1: "downloading", 2: "downloaded", 3: "updating"}  # LwM2M Object 5 State


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{inner}}} {value:g}" if inner else f"{name} {value:g}")
    return lines


def render_metrics(server, feed=None) -> str:
    """The whole exposition, one family per metric, ending with a newline."""
    reg = server.registry
    db = reg.db
    lines: list[str] = []
    rows = db.query("SELECT state, version, COUNT(*) AS n FROM devices GROUP BY state, version ORDER BY state, version")
    lines += _family("fota_devices", "gauge", "Devices by reported state and version.",
                     (({"state": STATES.get(r["state"], "unknown"), "version": r["version"] or "unknown"}, r["n"]) for r in rows))
    rows = db.query("SELECT status, COUNT(*) AS n FROM offers GROUP BY status ORDER BY status")
    lines += _family("fota_offers", "gauge", "Offers by status.", (({"status": r["status"]}, r["n"]) for r in rows))
    mqtt, coap = server.mqtt, getattr(server.coap, "resource", None)
    chunks = [({"transport": "mqtt"}, mqtt.chunks_served if mqtt else 0)]
    served = [({"transport": "mqtt"}, mqtt.bytes_served if mqtt else 0)]
    if coap is not None:
        chunks.append(({"transport": "coap"}, coap.blocks_served))
        served.append(({"transport": "coap"}, coap.bytes_served))
    lines += _family("fota_chunks_served_total", "counter", "Package chunks (CoAP blocks) sent to devices.", chunks)
    lines += _family("fota_bytes_served_total", "counter", "Package payload bytes sent to devices.", served)
    lines += _family("fota_malformed_messages_total", "counter", "Device messages that could not be parsed (ignored).",
                     [({"transport": "mqtt"}, getattr(mqtt, "malformed", 0))])
    lines += _family("fota_rejected_requests_total", "counter",
                     "Chunk requests refused: unknown offer, another device's offer, too many offsets.",
                     [({"transport": "mqtt"}, getattr(mqtt, "rejected", 0))])
    inbound = [(svc, getattr(obj, "stats", None)) for svc, obj in (("mqtt", mqtt), ("coap", coap))]
    lines += _family("fota_inbound_refused_total", "counter",
                     "Messages from the network refused before they reached the registry (malformed, oversized, rate-limited).",
                     [({"service": svc, "kind": kind}, n) for svc, st in inbound if st for kind, n in sorted(st.counts.items())])
    lines += _family("fota_inbound_failed_total", "counter", "Handler failures caught so the service lived on (a bug to look at).",
                     [({"service": svc, "kind": kind}, n) for svc, st in inbound if st for kind, n in sorted(st.errors.items())])
    rows = db.query("SELECT campaign, status, COUNT(*) AS n FROM campaign_devices GROUP BY campaign, status ORDER BY campaign, status")
    lines += _family("fota_campaign_devices", "gauge", "Devices of each campaign by status.",
                     (({"campaign": r["campaign"], "status": r["status"]}, r["n"]) for r in rows))
    totals: dict[str, list[int]] = {}
    for r in rows:
        if r["status"] != "EXCLUDED":
            t = totals.setdefault(r["campaign"], [0, 0])
            t[1] += r["n"]
            t[0] += r["n"] if r["status"] in FINAL else 0
    lines += _family("fota_campaign_progress_ratio", "gauge", "Share of a campaign's targeted devices that finished.",
                     (({"campaign": c}, done / total if total else 1.0) for c, (done, total) in sorted(totals.items())))
    status = {c["name"]: c["status"] for c in reg.campaigns()}
    lines += _family("fota_campaign_info", "gauge", "1 for each campaign, with its status.",
                     (({"campaign": c, "status": s}, 1) for c, s in status.items()))
    if feed is not None:
        hooks = feed.webhooks.deliveries
        ok = sum(1 for d in hooks if d["status"] and d["status"] < 300)
        lines += _family("fota_webhook_deliveries", "gauge", "Recent webhook deliveries (last 200) by outcome.",
                         [({"outcome": "ok"}, ok), ({"outcome": "failed"}, len(hooks) - ok)])
        lines += _family("fota_feed_dropped_total", "counter", "Live-feed messages dropped for slow subscribers.", [({}, feed.dropped)])
    return "\n".join(lines) + "\n"
