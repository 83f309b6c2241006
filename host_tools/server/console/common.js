// fota console: token, API calls, the live event stream, small render helpers. Plain JS, no build step.
"use strict";

const fota = (() => {
  const KEY = "fota-token";
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname + location.search); }
  const token = () => sessionStorage.getItem(KEY);

  async function api(path, opts = {}) {
    const res = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: "Bearer " + token() } });
    if (res.status === 401) { showLogin("the token was refused"); throw new Error("401"); }
    const body = res.headers.get("content-type")?.includes("json") ? await res.json() : await res.text();
    if (!res.ok) throw new Error(typeof body === "object" ? JSON.stringify(body.detail) : body);
    return body;
  }

  function showLogin(why) {
    const main = document.querySelector("main");
    main.innerHTML = `<form id="login"><h1>fota console</h1><p class="muted">${esc(why)}: paste an API token
      (api_tokens.json in the server's data directory).</p><input type="password" id="token-input" placeholder="token">
      <p><button>Open</button></p></form>`;
    main.querySelector("form").onsubmit = (e) => { e.preventDefault(); sessionStorage.setItem(KEY, main.querySelector("#token-input").value.trim()); location.reload(); };
  }

  // The live feed: server-sent events read with fetch (so the token goes in a header, not the URL).
  function live(onMessage) {
    const dot = document.getElementById("live");
    async function run() {
      try {
        const res = await fetch("/api/events/stream", { headers: { Authorization: "Bearer " + token() } });
        if (!res.ok) throw new Error(res.status);
        dot && (dot.textContent = "live", dot.classList.add("on"));
        const reader = res.body.getReader(), dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const frame = buf.slice(0, i); buf = buf.slice(i + 2);
            const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
            if (data) onMessage(JSON.parse(data));
          }
        }
      } catch (e) { /* reconnect below */ }
      dot && (dot.textContent = "reconnecting", dot.classList.remove("on"));
      setTimeout(run, 2000);
    }
    run();
  }

  // One load at a time: loads that overlap (a slow API, a feed message while a button's action reloads)
  // may finish out of order and draw an older state over a newer one (a campaign shown RUNNING again,
  // its Resume button disabled, after Pause). A call while one runs asks for one more run after it; the
  // promise settles when a load that started after the call has finished.
  function serial(fn) {
    let busy = null, queued = null;
    const run = () => {
      if (!busy) {
        busy = Promise.resolve().then(fn).finally(() => { busy = null; });
        return busy;
      }
      queued = queued || busy.catch(() => {}).then(() => { queued = null; return run(); });
      return queued;
    };
    return run;
  }
  let reload = () => Promise.resolve();  // the page's serialized load, once start() has it

  // Refresh at most every `ms` while messages arrive (a campaign sends many).
  function throttle(fn, ms = 400) {
    let timer = null, again = false;
    return () => {
      if (timer) { again = true; return; }
      fn(); timer = setTimeout(() => { timer = null; if (again) { again = false; fn(); } }, ms);
    };
  }

  function esc(s) { return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }
  function ago(t) {
    if (!t) return "never";
    const s = Math.max(0, Date.now() / 1000 - t);
    return s < 60 ? `${Math.round(s)} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : s < 86400 ? `${Math.round(s / 3600)} h ago` : new Date(t * 1000).toLocaleString();
  }
  function seconds(ms) { return ms == null ? "-" : `${(ms / 1000).toFixed(1)} s`; }  // a downtime
  function time(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "-"; }
  function pill(text, cls) { return `<span class="pill ${esc(cls ?? text)}">${esc(text)}</span>`; }
  function param(name) { return new URLSearchParams(location.search).get(name); }

  async function start(page) {
    if (!token()) { showLogin("no token"); return; }
    try {
      const who = await api("/api/whoami");
      document.getElementById("who").textContent = `${who.name} (${who.role})`;
      document.body.dataset.role = who.role;
      reload = serial(() => page.load(who));
      await reload();
      live(throttle(reload, page.throttleMs || 400));
    } catch (e) {
      if (e.message !== "401") document.querySelector("main").insertAdjacentHTML("afterbegin", `<p class="err">${esc(e.message)}</p>`);
    }
  }

  return { api, live, esc, ago, time, seconds, pill, param, start, reload: () => reload() };
})();
