// The driver's app view: find a charger near a place, reserve it, start, follow and
// stop a charge, see the bill. It talks only to the driver API on this origin
// (/driver/v1) with "Authorization: Bearer <app token>"; the token lives in this
// tab's sessionStorage and never goes into a URL. Everything shown is built with
// textContent: nothing from the API is parsed as HTML.
"use strict";

(function () {
  const API = "/driver/v1";
  const TOKEN_KEY = "evtwin-driver-app-token";
  const POLL_MS = 2000;            // a followed session, a start being waited for
  const STATIONS_EVERY = 5;        // refresh the station list every 5th poll (10 s)
  const START_WAIT_MS = 120000;    // how long a remote start may take to show up

  const $ = (id) => document.getElementById(id);
  const state = {
    place: null,        // {lat, lon} of the last search
    stations: [],
    reservation: null,  // the driver's reservation in force, or null
    following: null,    // {station_id, transaction_id} of the session shown
    pending: null,      // {station_id, evse_id, since} a remote start not yet seen
    session: null,      // the followed session as last read
    bill: null,
    ticks: 0,
    busy: false,
  };

  // ------------------------------------------------------------------ token
  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  function showLoggedIn(yes) {
    $("login").hidden = yes;
    $("app").hidden = !yes;
    $("forget").hidden = !yes;
  }

  function forget() {
    sessionStorage.removeItem(TOKEN_KEY);
    Object.assign(state, {reservation: null, following: null, pending: null,
                          session: null, bill: null, stations: []});
    render();
    showLoggedIn(false);
  }

  // ------------------------------------------------------------------ messages
  function showError(text) {
    const e = $("error");
    e.textContent = text;
    e.hidden = !text;
  }

  function showNotice(text) {
    const n = $("notice");
    n.textContent = text || "";
    n.hidden = !text;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // One line from an API error: its message and, for a 422, each field named.
  function errorLine(status, body) {
    if (!body || typeof body.message !== "string") return `the server answered ${status}`;
    let line = body.message;
    if (Array.isArray(body.problems) && body.problems.length) {
      line += ": " + body.problems.map((p) => `${p.path}: ${p.message}`).join("; ");
    }
    if (body.station_status) line += ` (station: ${body.station_status})`;
    return line.replace(/\s+/g, " ");
  }

  async function api(method, path, body) {
    const headers = {"Authorization": "Bearer " + token(), "Accept": "application/json"};
    const init = {method, headers, cache: "no-store", credentials: "omit"};
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (err) {
      throw new ApiError(0, "cannot reach the charging service: check your connection");
    }
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    if (!response.ok) {
      if (response.status === 401) {
        forget();
      }
      throw new ApiError(response.status, errorLine(response.status, data));
    }
    return data;
  }

  // ------------------------------------------------------------------ formatting
  const money = (v, currency) => `${Number(v).toFixed(2)} ${currency}`;
  const km = (v) => `${v < 10 ? v.toFixed(1) : v.toFixed(0)} km`;
  const kw = (v) => `${Number(v).toFixed(1)} kW`;
  const kwh = (v) => `${Number(v).toFixed(2)} kWh`;

  function priceText(p) {
    const parts = [`${Number(p.energy_per_kwh).toFixed(2)} ${p.currency}/kWh`];
    if (p.time_per_hour) parts.push(`${Number(p.time_per_hour).toFixed(2)} ${p.currency}/h`);
    if (p.session_fee) parts.push(`${Number(p.session_fee).toFixed(2)} ${p.currency} per session`);
    return parts.join(" + ");
  }

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return `${h} h ${m} min`;
    return r ? `${m} min ${r} s` : `${m} min`;
  }

  function clock(iso) {
    const t = new Date(iso);
    return isNaN(t) ? iso : t.toLocaleString([], {dateStyle: "short", timeStyle: "short"});
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else if (k === "onclick") e.addEventListener("click", v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function field(label, id, value) {
    return el("div", {class: "field"}, el("span", {class: "label"}, label),
              el("span", {class: "value", id}, value));
  }

  // ------------------------------------------------------------------ actions
  async function act(what, fn) {
    if (state.busy) return;
    state.busy = true;
    showError("");
    showNotice(what + "…");
    document.body.classList.add("busy");
    try {
      await fn();
    } catch (err) {
      showNotice("");
      showError(err.message);
    } finally {
      state.busy = false;
      document.body.classList.remove("busy");
      render();
    }
  }

  async function search() {
    const lat = parseFloat($("lat").value), lon = parseFloat($("lon").value);
    if (!isFinite(lat) || !isFinite(lon)) {
      showError("enter a latitude and a longitude (degrees)");
      return;
    }
    state.place = {lat, lon};
    await act("Looking for chargers", async () => {
      await refreshStations();
      showNotice(state.stations.length ? "" : "No chargers near this place.");
    });
  }

  async function refreshStations() {
    if (!state.place) return;
    const q = new URLSearchParams({lat: state.place.lat, lon: state.place.lon});
    state.stations = (await api("GET", "/stations?" + q)).stations;
  }

  async function refreshReservation() {
    const list = (await api("GET", "/reservations")).reservations;
    const now = Date.now();
    state.reservation = list.find((r) => (r.status === "Accepted" || r.status === "Requested")
                                          && new Date(r.expiry).getTime() > now - 5000) || null;
  }

  function reserve(station, evse) {
    const minutes = parseFloat($("minutes").value);
    act("Reserving", async () => {
      const body = {station_id: station.station_id, evse_id: evse.evse_id};
      if (isFinite(minutes)) body.minutes = minutes;
      state.reservation = await api("POST", "/reservations", body);
      showNotice(`Reserved EVSE ${evse.evse_id} at ${station.station_id} until ` +
                 clock(state.reservation.expiry) + ".");
      await refreshStations();
    });
  }

  function cancel() {
    const r = state.reservation;
    act("Cancelling the reservation", async () => {
      await api("DELETE", `/reservations/${encodeURIComponent(r.reservation_id)}`);
      state.reservation = null;
      showNotice("Reservation cancelled.");
      await refreshStations();
    });
  }

  function start(station, evse) {
    act("Asking the station to start", async () => {
      await api("POST", "/sessions", {station_id: station.station_id, evse_id: evse.evse_id});
      state.bill = null;
      state.pending = {station_id: station.station_id, evse_id: evse.evse_id, since: Date.now()};
      showNotice(`Start accepted by ${station.station_id}: waiting for the charge to begin…`);
    });
  }

  function stop() {
    const f = state.following;
    act("Stopping", async () => {
      await api("POST", `${sessionPath(f)}/stop`);
      showNotice("Stop accepted: waiting for the station to end the charge…");
    });
  }

  function sessionPath(f) {
    return `/sessions/${encodeURIComponent(f.station_id)}/` +
           encodeURIComponent(f.transaction_id);
  }

  function useMyLocation() {
    if (!navigator.geolocation || !window.isSecureContext) {
      showError("your location is not available here: enter latitude and longitude");
      return;
    }
    showNotice("Finding your location…");
    navigator.geolocation.getCurrentPosition((pos) => {
      $("lat").value = pos.coords.latitude.toFixed(5);
      $("lon").value = pos.coords.longitude.toFixed(5);
      showNotice("");
      search();
    }, (err) => {
      showNotice("");
      showError("your location is not available (" + err.message + "): enter latitude " +
                "and longitude");
    }, {enableHighAccuracy: false, timeout: 10000, maximumAge: 60000});
  }

  // ------------------------------------------------------------------ polling
  async function poll() {
    if (!token() || state.busy) return;
    state.ticks += 1;
    let changed = false;  // a charge began or ended: the EVSEs' states changed too
    try {
      if (state.pending) {
        const p = state.pending;
        const open = (await api("GET", "/sessions")).sessions.find(
          (s) => s.open && s.station_id === p.station_id &&
                 (p.evse_id == null || s.evse_id === p.evse_id));
        if (open) {
          state.pending = null;
          state.following = {station_id: open.station_id, transaction_id: open.transaction_id};
          state.session = open;
          state.reservation = null;
          changed = true;
          showNotice("Charging.");
        } else if (Date.now() - p.since > START_WAIT_MS) {
          state.pending = null;
          showNotice("");
          showError(`${p.station_id} has not started the charge: is the car plugged in?`);
        }
      } else if (state.following && !state.bill) {
        state.session = await api("GET", sessionPath(state.following));
        if (!state.session.open) {
          try {
            state.bill = await api("GET", sessionPath(state.following) + "/bill");
            changed = true;
            showNotice("The charge has ended: here is your bill.");
          } catch (err) {
            if (err.status !== 409 && err.status !== 404) throw err;  // not billed yet
          }
        }
      }
      if (changed || state.ticks % STATIONS_EVERY === 0) {
        await refreshReservation();
        await refreshStations();
      }
      render();
    } catch (err) {
      showError(err.message);
    }
  }

  // ------------------------------------------------------------------ drawing
  function render() {
    renderSession();
    renderReservation();
    renderStations();
  }

  function renderSession() {
    const panel = $("session-panel"), box = $("session");
    box.replaceChildren();
    const s = state.session;
    if (state.pending && !s) {
      panel.hidden = false;
      box.append(el("p", {id: "session-state"}, `Waiting for ${state.pending.station_id} to ` +
                                                 "start…"));
      return;
    }
    if (!s) { panel.hidden = true; return; }
    panel.hidden = false;
    if (state.bill) {
      const b = state.bill;
      box.append(el("p", {id: "session-state", class: "done"},
                    `Ended at ${b.station_id}: your bill`),
                 el("div", {id: "bill", class: "grid"},
                    field("Energy", "bill-energy", kwh(b.energy_kwh)),
                    field("Duration", "bill-duration", duration(b.duration_s)),
                    field("Cost", "bill-cost", money(b.cost, b.currency)),
                    field("Average power", "bill-power", b.duration_s > 0 ?
                          kw(b.energy_kwh / (b.duration_s / 3600)) : "–"),
                    el("div", {class: "field wide"}, el("span", {class: "label"}, "When"),
                       el("span", {class: "value small", id: "bill-when"},
                          `${clock(b.started_at)} – ${clock(b.ended_at)}`))),
                 el("button", {type: "button", id: "dismiss", class: "quiet",
                               onclick: () => { state.following = state.session = null;
                                                state.bill = null; showNotice("");
                                                render(); }}, "Done"));
      return;
    }
    const cost = s.cost === null ? "…" : money(s.cost, s.currency);
    box.append(
      el("p", {id: "session-state", "data-open": String(s.open)},
         s.open ? `Charging at ${s.station_id}, EVSE ${s.evse_id}` :
                  `Ended at ${s.station_id}: the bill follows…`),
      el("div", {class: "grid"},
         field("Power", "power", kw(s.power_kw)),
         field("Energy", "energy", kwh(s.energy_kwh)),
         field("Battery", "soc", s.soc_percent === null ? "–" :
                                 `${Number(s.soc_percent).toFixed(0)} %`),
         field(s.open ? "Cost so far" : "Cost", "cost", cost),
         el("div", {class: "field wide"}, el("span", {class: "label"}, "Since"),
            el("span", {class: "value small", id: "since"}, clock(s.started_at)))));
    if (s.open) {
      box.append(el("button", {type: "button", id: "stop", class: "danger", onclick: stop},
                    "Stop charging"));
    }
  }

  function renderReservation() {
    const r = state.reservation;
    $("reservation-panel").hidden = !r;
    const box = $("reservation");
    box.replaceChildren();
    if (!r) return;
    box.append(el("p", {id: "reservation-text"},
                  `${r.station_id}, EVSE ${r.evse_id ?? "any"}: held for you until ` +
                  clock(r.expiry)),
               el("button", {type: "button", id: "cancel", class: "quiet", onclick: cancel},
                  "Cancel reservation"));
  }

  function mine(station, evse) {
    const r = state.reservation;
    return r && r.station_id === station.station_id &&
           (r.evse_id === null || r.evse_id === evse.evse_id);
  }

  function renderStations() {
    const box = $("stations");
    box.replaceChildren();
    const charging = state.pending || (state.session && state.session.open);
    for (const st of state.stations) {
      const evses = st.evses.map((e) => {
        const buttons = [];
        const ownHold = e.status === "Reserved" && mine(st, e);
        if (!charging && st.connected) {
          if (e.status === "Available" && !state.reservation) {
            buttons.push(el("button", {type: "button", "data-action": "reserve",
                                       onclick: () => reserve(st, e)}, "Reserve"));
          }
          if (e.status === "Available" || e.status === "Occupied" || ownHold) {
            buttons.push(el("button", {type: "button", "data-action": "start",
                                       onclick: () => start(st, e)}, "Start"));
          }
        }
        return el("li", {class: "evse", "data-station": st.station_id,
                         "data-evse": String(e.evse_id), "data-status": e.status},
                  el("span", {class: "evse-name"}, `EVSE ${e.evse_id}`),
                  el("span", {class: "power"}, kw(e.max_power_kw)),
                  el("span", {class: "status status-" + e.status.toLowerCase()},
                     ownHold ? "Reserved for you" : e.status),
                  el("span", {class: "buttons"}, ...buttons));
      });
      const where = [st.site_name, st.address, st.city].filter(Boolean).join(", ");
      box.append(el("article", {class: "station", "data-station": st.station_id},
                    el("div", {class: "station-head"},
                       el("h3", {}, st.station_id),
                       el("span", {class: "distance"}, km(st.distance_km))),
                    el("p", {class: "where"}, where),
                    el("p", {class: "price"}, "Now: " + priceText(st.price)),
                    st.connected ? null : el("p", {class: "offline"}, "offline"),
                    el("ul", {class: "evses"}, ...evses)));
    }
  }

  // ------------------------------------------------------------------ start up
  async function resume() {
    // After a reload: the reservation in force and an open session, if any.
    try {
      await refreshReservation();
      const open = (await api("GET", "/sessions")).sessions.find((s) => s.open);
      if (open) {
        state.following = {station_id: open.station_id, transaction_id: open.transaction_id};
        state.session = open;
      }
      render();
    } catch (err) {
      showError(err.message);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      $("token").value = "";
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      showError("");
      showLoggedIn(true);
      await resume();
    });
    $("place-form").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
    $("locate").addEventListener("click", useMyLocation);
    $("forget").addEventListener("click", () => { showError(""); showNotice(""); forget(); });
    showLoggedIn(!!token());
    if (token()) resume();
    setInterval(poll, POLL_MS);
  });
})();
