// evtwin operator dashboard: renders the snapshots the server pushes (server-sent events).
// No framework and nothing from elsewhere; data only ever goes into text nodes.
"use strict";

let me = { user: "", role: "viewer", csrf: "" };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function num(value, digits, unit) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return `${Number(value).toFixed(digits)} ${unit}`;
}

function time(text) {
  if (!text) return "–";
  // Minutes are enough to read; the seconds stay in the data.
  return text.replace("T", " ").replace(/(:\d\d)?(\.\d+)?(Z|\+00:00)$/, " UTC");
}

function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))));
}

function bar(value, limit, unit, digits) {
  const share = limit ? Math.min(1, Math.max(0, value / limit)) : 0;
  const fill = el("span", { class: "fill" + (limit && value > limit ? " over" : "") });
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  return el("div", { class: "barline" },
    el("span", { class: "bar" }, fill),
    el("span", { class: "barlabel" },
      `${num(value, digits, unit)} of ${limit ? num(limit, digits, unit) : "no limit"}`));
}

async function act(path, body, button) {
  button.disabled = true;
  try {
    const resp = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": me.csrf },
      body: JSON.stringify(body),
    });
    const answer = await resp.json().catch(() => ({}));
    notice(resp.ok ? `Station answered: ${answer.status}`
                   : `Refused (${resp.status}): ${answer.message || answer.error || ""}`,
           !resp.ok);
  } catch (err) {
    notice(`Request failed: ${err}`, true);
  } finally {
    button.disabled = false;
  }
}

function notice(text, bad) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = "notice" + (bad ? " bad" : "");
  n.hidden = false;
}

function renderStations(stations) {
  const admin = me.role === "admin";
  return stations.map((s) => el("div", {
      class: "station" + (s.connected ? "" : " offline") + (s.faults.length ? " faulty" : ""),
      id: `station-${s.id}`, "data-station": s.id },
    el("div", { class: "station-head" },
      el("strong", {}, s.id), " ", el("span", { class: "muted" }, `${s.site} · `
        + (s.connected ? (s.protocol || "connected") : "offline"))),
    s.evses.map((e) => el("div", {
        class: "evse", id: `evse-${s.id}-${e.evse_id}`, "data-status": e.state || "Unknown" },
      el("span", { class: `badge status-${e.state || "Unknown"}` },
        `EVSE ${e.evse_id}: ${e.state || "unknown"}`),
      el("span", { class: "figures" },
        `${num(e.power_kw, 1, "kW")} · limit ${e.limit_kw === null ? num(e.max_power_kw, 1, "kW") : num(e.limit_kw, 1, "kW")}`),
      admin && s.actions ? el("button", {
        class: "small", type: "button",
        onclick: (ev) => act("/api/evse/availability",
          { station_id: s.id, evse_id: e.evse_id, operative: e.status === "Unavailable" },
          ev.target) }, e.status === "Unavailable" ? "Make available" : "Make unavailable")
        : null)),
    s.faults.length ? el("div", { class: "fault-line" },
      s.faults.map((f) => `⚠ ${f.component}${f.evse_id ? ` (EVSE ${f.evse_id})` : ""}: ${f.reason}`).join("; "))
      : null));
}

function renderGrid(grid) {
  if (!grid) return el("p", { class: "empty", id: "no-feeder" }, "no feeder");
  const lim = grid.limits || {};
  const parts = [el("p", {},
    `Bus voltages ${num(grid.vm_min_pu, 3, "p.u.")} to ${num(grid.vm_max_pu, 3, "p.u.")}`
    + ` (limits ${num(lim.v_min_pu, 2, "p.u.")} to ${num(lim.v_max_pu, 2, "p.u.")}); `
    + `${grid.source}, ${time(grid.at)}`)];
  if (grid.buses.length) {
    const canvas = el("canvas", { width: 480, height: 120, class: "buses", id: "bus-chart",
      "aria-label": "voltage of every bus in p.u." });
    parts.push(canvas);
    drawBuses(canvas, grid.buses, lim.v_min_pu || 0.9, lim.v_max_pu || 1.1);
  }
  parts.push(table(["Transformer", "Loading"], grid.trafos.map((t) =>
    [t.name, bar(t.loading_percent || 0, lim.trafo_loading_max_percent || 100, "%", 1)]),
    "no transformer"));
  parts.push(table([`Most loaded lines (of ${grid.line_count})`, "Loading"],
    grid.lines.slice(0, 5).map((l) =>
      [l.name, bar(l.loading_percent || 0, lim.line_loading_max_percent || 100, "%", 1)]),
    "no lines"));
  return parts;
}

function drawBuses(canvas, buses, vmin, vmax) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const lo = Math.min(vmin - 0.02, ...buses.map((b) => b.vm_pu ?? 1));
  const hi = Math.max(vmax + 0.02, ...buses.map((b) => b.vm_pu ?? 1));
  const y = (v) => h - ((v - lo) / (hi - lo)) * h;
  const bw = w / buses.length;
  buses.forEach((b, i) => {
    if (b.vm_pu === null) return;
    ctx.fillStyle = b.vm_pu < vmin || b.vm_pu > vmax ? "#c0392b" : "#2e86c1";
    ctx.fillRect(i * bw, y(b.vm_pu), Math.max(1, bw - 1), h - y(b.vm_pu));
  });
  ctx.strokeStyle = "#e67e22";
  for (const v of [vmin, vmax]) {
    ctx.beginPath(); ctx.moveTo(0, y(v)); ctx.lineTo(w, y(v)); ctx.stroke();
  }
  ctx.fillStyle = "#333";
  ctx.fillText(`${vmax.toFixed(2)} p.u.`, 2, y(vmax) - 2);
  ctx.fillText(`${vmin.toFixed(2)} p.u.`, 2, y(vmin) + 10);
}

function render(snap) {
  document.getElementById("clock").textContent = `CSMS time ${time(snap.at)}`;
  const run = snap.run;
  document.getElementById("run").textContent = run
    ? `twin run ${run.scenario}: ${num(run.progress_percent, 0, "%")}`
      + (run.pace ? ` · pace ${run.pace} s/s` : "") + (run.finished ? " · finished" : "")
    : "";
  document.getElementById("stations").replaceChildren(...renderStations(snap.stations));
  document.getElementById("sites").replaceChildren(table(
    ["Site", "Charging power", "EVSEs occupied", "Faulted"],
    snap.sites.map((s) => [s.name, bar(s.power_kw, s.limit_kw, "kW", 1),
      `${s.occupied} of ${s.evses} (${num(s.occupancy_percent, 0, "%")})`,
      `${s.faulted} of ${s.evses}`]), "no sites"));
  document.getElementById("faults").replaceChildren(table(
    ["Station", "EVSE", "Component", "Reason", "Raised"],
    snap.work_orders.map((o) => [o.station_id, o.evse_id || "all",
      o.component, o.reason + (o.risk !== null ? ` (risk ${num(o.risk * 100, 0, "%")})` : ""),
      time(o.raised_at)]), "no open work orders"));
  document.getElementById("reservations").replaceChildren(table(
    ["Station", "EVSE", "Details"],
    snap.reservations.map((r) => [r.station_id, r.evse_id ?? "any",
      Object.entries(r).filter(([k]) => !["station_id", "evse_id"].includes(k))
        .map(([k, v]) => `${k}: ${v}`).join(", ") || "status Reserved"]),
    "no reservations"));
  document.getElementById("grid").replaceChildren(...[renderGrid(snap.grid)].flat());
  const admin = me.role === "admin";
  // Stations the CSMS reaches over OCPP take admin actions (not the twin's direct ones).
  const actionable = new Set(snap.stations.filter((s) => s.actions).map((s) => s.id));
  document.getElementById("sessions").replaceChildren(table(
    ["Station", "EVSE", "Driver (pseudonym)", "Started", "Power", "Energy", "SoC", ""],
    snap.sessions.map((s) => [s.station_id, s.evse_id, s.id_token || "–", time(s.started_at),
      num(s.power_kw, 1, "kW"), num(s.energy_kwh, 2, "kWh"), num(s.soc_percent, 0, "%"),
      admin && actionable.has(s.station_id) ? el("button", { class: "small", type: "button",
        onclick: (ev) => act("/api/sessions/stop",
          { station_id: s.station_id, transaction_id: s.transaction_id }, ev.target) },
        "Stop") : ""]), "no open sessions"));
  document.getElementById("cdrs").replaceChildren(table(
    ["Station", "Driver (pseudonym)", "Ended", "Duration", "Energy", "Cost"],
    snap.cdrs.map((c) => [c.station_id, c.id_token || "–", time(c.ended_at),
      num(c.duration_min, 0, "min"), num(c.energy_kwh, 2, "kWh"),
      num(c.cost, 2, c.currency)]), "no charge detail records yet"));
  document.getElementById("partners").replaceChildren(table(
    ["Partner", "Details"],
    snap.partners.map((p) => [p.name || p.party_id || "?",
      Object.entries(p).filter(([k]) => k !== "name").map(([k, v]) => `${k}: ${v}`).join(", ")]),
    "no roaming partners"));
}

async function start() {
  const resp = await fetch("/api/me", { credentials: "same-origin" });
  if (resp.status === 401) { window.location = "/login"; return; }
  me = await resp.json();
  document.getElementById("who").textContent = `${me.user} (${me.role})`;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin",
                             headers: { "X-CSRF-Token": me.csrf } });
    window.location = "/login";
  });
  const source = new EventSource("/api/events");
  source.onmessage = (ev) => render(JSON.parse(ev.data));
  source.addEventListener("expired", () => { source.close(); window.location = "/login"; });
  source.onerror = () => {
    document.getElementById("clock").textContent = "connection lost: reconnecting…";
  };
}

document.addEventListener("DOMContentLoaded", start);
