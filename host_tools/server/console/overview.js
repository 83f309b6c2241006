// The fleet overview: devices by version and state, online and last seen, adoption over time, campaigns.
"use strict";

const COLORS = ["#2e6fdb", "#12b76a", "#f79009", "#7a5af8", "#d92d20", "#0ba5ec", "#667085"];
let rows = [];

function renderDevices() {
  const t0 = performance.now();
  const f = document.getElementById("filter").value.trim().toLowerCase();
  const shown = f ? rows.filter((d) => [d.id, d.version, d.state_name, d.hw_rev, ...d.groups].join(" ").toLowerCase().includes(f)) : rows;
  const { esc, pill, ago } = fota;
  document.querySelector("#devices tbody").innerHTML = shown.map((d) => {
    const err = d.errors.length ? d.errors[d.errors.length - 1] : null;
    return `<tr data-device="${esc(d.id)}"><td><a href="device.html?id=${encodeURIComponent(d.id)}">${esc(d.id)}</a></td>` +
      `<td>${esc(d.board ?? "-")}</td><td>${esc(d.hw_rev ?? "-")}</td><td>${esc(d.version ?? "-")}</td><td>${pill(d.state_name)}</td>` +
      `<td>${d.online ? pill("online") : pill("offline")}</td><td>${ago(d.last_seen)}</td><td>${esc(d.groups.join(", "))}</td>` +
      `<td class="wrap">${err ? esc(err[0] + " " + err[1]) : ""}</td></tr>`;
  }).join("");
  return performance.now() - t0;
}

function renderChart(series) {
  const svg = document.getElementById("adoption");
  if (!series.length) { svg.innerHTML = '<text x="10" y="100" fill="#667085">no samples yet</text>'; return; }
  const now = Date.now() / 1000, pts = [...series, { t: now, counts: series[series.length - 1].counts }];
  const versions = [...new Set(pts.flatMap((p) => Object.keys(p.counts)))].sort();
  const t0 = pts[0].t, span = Math.max(1, now - t0);
  const max = Math.max(1, ...pts.map((p) => Object.values(p.counts).reduce((a, b) => a + b, 0)));
  const x = (t) => ((t - t0) / span) * 590 + 5, y = (n) => 195 - (n / max) * 185;
  svg.innerHTML = versions.map((v, i) => {
    let d = "", prev = null;
    for (const p of pts) { const n = p.counts[v] || 0; if (prev !== null) d += `L${x(p.t)},${y(prev)} `; d += `${d ? "L" : "M"}${x(p.t)},${y(n)} `; prev = n; }
    return `<path d="${d}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2" data-version="${fota.esc(v)}"/>`;
  }).join("");
  document.getElementById("legend").innerHTML = versions.map((v, i) => `<span style="color:${COLORS[i % COLORS.length]}">&#9632;</span> ${fota.esc(v)}`).join(" &nbsp; ") +
    ` &nbsp; since ${fota.time(t0)}`;
}

async function load() {
  const t0 = performance.now();
  const [fleet, devices, campaigns] = await Promise.all([fota.api("/api/fleet"), fota.api("/api/devices"), fota.api("/api/campaigns")]);
  rows = devices;
  const { esc, pill } = fota;
  const card = (n, l) => `<div class="card"><div class="n">${n}</div><div class="l">${esc(l)}</div></div>`;
  document.getElementById("cards").innerHTML = card(fleet.devices, "devices") + card(fleet.online, "online") +
    Object.entries(fleet.by_state).map(([s, n]) => card(n, s)).join("");
  document.querySelector("#versions tbody").innerHTML = Object.entries(fleet.by_version).map(([v, n]) =>
    `<tr data-version="${esc(v)}"><td>${esc(v)}</td><td>${n}</td><td><div class="bar"><span class="ok" style="width:${(100 * n) / Math.max(1, fleet.devices)}%"></span></div></td></tr>`).join("");
  renderChart(fleet.adoption);
  document.querySelector("#campaigns tbody").innerHTML = campaigns.map((c) => {
    const total = Object.entries(c.by_status).filter(([s]) => s !== "EXCLUDED").reduce((a, [, n]) => a + n, 0);
    return `<tr data-campaign="${esc(c.name)}"><td><a href="campaign.html?name=${encodeURIComponent(c.name)}">${esc(c.name)}</a></td><td>${pill(c.status)}</td>` +
      `<td>${c.wave + 1}/${c.spec.waves.length}</td><td>${c.by_status.SUCCEEDED || 0}/${total} succeeded</td><td class="wrap">${esc(c.note || "")}</td></tr>`;
  }).join("") || '<tr><td colspan="5" class="muted">no campaigns</td></tr>';
  renderDevices();
  window.fotaRenderMs = performance.now() - t0;  // read by bench/console.py
  document.body.dataset.loaded = String(Date.now());
}

document.getElementById("filter").addEventListener("input", renderDevices);
fota.start({ load, throttleMs: 1500 });  // a big fleet sends many changes: redraw at most every 1.5 s
