// A campaign: waves with progress bars, why it paused, pause / resume / abort, the report.
"use strict";

const NAME = fota.param("name");
const ACTIONS = { pause: ["RUNNING"], resume: ["PAUSED"], abort: ["CREATED", "RUNNING", "PAUSED"] };

async function load(who) {
  const [st, rep] = await Promise.all([fota.api(`/api/campaigns/${encodeURIComponent(NAME)}`), fota.api(`/api/campaigns/${encodeURIComponent(NAME)}/report`)]);
  const { esc, pill } = fota, c = st.campaign;
  document.getElementById("name").textContent = c.name;
  document.getElementById("status").innerHTML = pill(c.status);
  document.getElementById("status").dataset.status = c.status;
  document.getElementById("paused-because").textContent = st.paused_because ? `Paused: ${st.paused_because}` : "";
  document.getElementById("summary").textContent = `package ${c.spec.package} · waves ${c.spec.waves.join(" → ")} · error gate ${Math.round(c.spec.error_threshold * 100)} % after ${c.spec.min_sample} finished · at most ${c.spec.max_in_flight} in flight · ${c.note || ""}`;
  for (const [action, allowed] of Object.entries(ACTIONS)) {
    document.getElementById(`btn-${action}`).disabled = who.role !== "operator" || !allowed.includes(c.status);
  }
  const secs = fota.seconds, exp = st.expected_downtime;
  document.getElementById("expected-downtime").textContent = exp ?
    `Expected downtime per device (the application not running): median ${secs(exp.median_ms)}, worst ${secs(exp.worst_ms)}, from wave ${exp.waves.map((i) => i + 1).join(", ")} (${exp.devices} devices)` :
    "Expected downtime per device: not known until a wave is done";
  document.querySelector("#waves tbody").innerHTML = st.waves.map((w) => {
    const pct = (n) => (w.total ? (100 * n) / w.total : 0);
    const busy = w.in_flight.map((d) => {
      const p = d.progress || [0, 0];
      return `<div>${esc(d.device)} ${pill(d.status)} <progress max="${p[1] || 1}" value="${p[0] || 0}"></progress> ${p[1] ? `${p[0]}/${p[1]}` : ""}</div>`;
    }).join("");
    const current = w.index === c.wave && ["RUNNING", "PAUSED"].includes(c.status) ? " ◀" : "";
    return `<tr class="wave" data-wave="${w.index}" data-finished="${w.finished}" data-total="${w.total}"><td>${w.index + 1}. ${esc(w.name)}${current}</td>` +
      `<td><div class="bar" title="${w.finished}/${w.total}"><span class="ok" style="width:${pct(w.succeeded)}%"></span><span class="bad" style="width:${pct(w.failed)}%"></span>` +
      `<span class="busy" style="width:${pct(w.finished - w.succeeded - w.failed)}%"></span></div></td>` +
      `<td>${w.finished}/${w.total}</td><td>${w.succeeded}</td><td>${w.failed}</td>` +
      `<td class="downtime" data-median="${w.downtime.median_ms ?? ""}" data-worst="${w.downtime.worst_ms ?? ""}">${w.downtime.devices ? `${secs(w.downtime.median_ms)} / ${secs(w.downtime.worst_ms)}` : "-"}</td><td>${busy}</td></tr>`;
  }).join("");
  document.querySelector("#reasons tbody").innerHTML = Object.entries(rep.by_reason).map(([r, n]) => `<tr><td>${n}</td><td class="wrap">${esc(r)}</td></tr>`).join("") ||
    '<tr><td colspan="2" class="muted">none</td></tr>';
  document.querySelector("#hwrevs tbody").innerHTML = Object.entries(rep.by_hw_rev).map(([hw, counts]) =>
    `<tr data-hw="${esc(hw)}"><td>${esc(hw)}</td><td>${Object.entries(counts).map(([s, n]) => `${pill(s)} ${n}`).join(" ")}</td></tr>`).join("") ||
    '<tr><td colspan="2" class="muted">none</td></tr>';
  document.querySelector("#cdevices tbody").innerHTML = st.devices.map((d) =>
    `<tr data-device="${esc(d.device)}"><td><a href="device.html?id=${encodeURIComponent(d.device)}">${esc(d.device)}</a></td><td>${d.wave < 0 ? "-" : d.wave + 1}</td>` +
    `<td>${esc(d.hw_rev ?? "-")}</td><td>${pill(d.status)}</td><td class="downtime" data-ms="${d.downtime_ms ?? ""}">${secs(d.downtime_ms)}</td><td class="wrap">${esc(d.reason || "")}</td></tr>`).join("");
  document.body.dataset.loaded = String(Date.now());
}

for (const action of Object.keys(ACTIONS)) {
  document.getElementById(`btn-${action}`).addEventListener("click", async () => {
    if (action === "abort" && !confirm(`Abort campaign ${NAME}? Offers not yet taken are withdrawn.`)) return;
    const out = document.getElementById("action-result");
    try {
      const c = await fota.api(`/api/campaigns/${encodeURIComponent(NAME)}/${action}`, { method: "POST" });
      out.textContent = `${action}: now ${c.status}`;
    } catch (e) { out.textContent = `${action} refused: ${e.message}`; }
    await fota.reload();  // after any load already running: its older answer cannot draw over this one
  });
}
fota.start({ load });
