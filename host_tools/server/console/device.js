// One device: state, the offer in flight with its download progress, error log, offers, event timeline.
"use strict";

const ID = fota.param("id");

async function load() {
  const d = await fota.api(`/api/devices/${encodeURIComponent(ID)}`);
  const { esc, pill, ago, time } = fota;
  document.getElementById("device-id").textContent = d.id;
  document.getElementById("state").innerHTML = pill(d.state_name) + " " + (d.online ? pill("online") : pill("offline"));
  const card = (n, l) => `<div class="card"><div class="n">${esc(n)}</div><div class="l">${esc(l)}</div></div>`;
  document.getElementById("facts").innerHTML = card(d.version ?? "-", "version") + card(d.seq ?? "-", "sequence") +
    card(d.slot ?? "-", "running slot") + card(`${d.board ?? "-"} / ${d.hw_rev ?? "-"}`, "board / hw rev") +
    card(ago(d.last_seen), "last seen") + card(d.groups.join(", ") || "-", "groups") +
    card(d.detail ?? "-", "last result");
  const f = d.in_flight;
  document.getElementById("in-flight").innerHTML = f ?
    `offer ${f.id}: version ${esc(f.version ?? "?")} ${pill(f.status)} <progress id="download" max="${f.total || 1}" value="${f.have || 0}"></progress> ` +
    `${f.total ? `${f.have}/${f.total} chunks (${Math.round((100 * f.have) / f.total)} %)` : ""}` : "none";
  document.querySelector("#errors tbody").innerHTML = [...d.errors].reverse().map((e) =>
    `<tr><td>${time(e[2])}</td><td>${esc(e[0])}</td><td class="wrap">${esc(e[1])}</td></tr>`).join("") || '<tr><td colspan="3" class="muted">no errors</td></tr>';
  document.querySelector("#offers tbody").innerHTML = [...d.offers].reverse().map((o) =>
    `<tr data-offer="${o.id}"><td>${o.id}</td><td>${esc(o.package)}</td><td>${pill(o.status)}</td><td class="downtime" data-ms="${o.downtime_ms ?? ""}">${fota.seconds(o.downtime_ms)}</td><td class="wrap reason">${esc(o.reason || "")}</td></tr>`).join("") ||
    '<tr><td colspan="5" class="muted">no offers</td></tr>';
  document.querySelector("#events tbody").innerHTML = [...d.events].reverse().map((e) => {
    const { event, offer, ...rest } = e.body;
    return `<tr class="ev-${esc(e.event)}"><td>${time(e.t)}</td><td>${esc(e.offer ?? "")}</td><td>${pill(e.event, e.event === "rolled_back" ? "ROLLED_BACK" : e.event === "committed" ? "SUCCEEDED" : "")}</td>` +
      `<td class="wrap">${esc(Object.entries(rest).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" "))}</td></tr>`;
  }).join("") || '<tr><td colspan="4" class="muted">no events</td></tr>';
  document.body.dataset.loaded = String(Date.now());
}

fota.start({ load });
