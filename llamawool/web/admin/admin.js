// The admin console: support staff's view of the admin API. The page holds no
// data; every datum comes from /api/v1/admin/* calls the server answers only to
// an admin's token (a player's token gets 403 there, whatever this page does).
// Everything shown is set as text, never as HTML: player names and broadcast
// messages are typed by others.

import { formatNumber, formatTimestamp } from "../format.js";
import { Api, ApiError, Auth } from "../net.js";

const $ = (sel) => document.querySelector(sel);
const auth = new Auth({ storeKey: "llamawool.admin-session", guests: false });
const api = new Api(auth);
let current = null; // the player looked up (their id)

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function button(label, onClick, cls = "btn btn-ghost-dark") {
  const b = el("button", label, cls);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell ?? "—";
    tr.append(td);
  }
  return tr;
}

function fill(tbody, rows, columns, emptyText) {
  tbody.replaceChildren(...rows);
  if (!rows.length) {
    const td = el("td", emptyText, "empty");
    td.colSpan = columns;
    const tr = document.createElement("tr");
    tr.append(td);
    tbody.append(tr);
  }
}

function fields(dl, entries) {
  dl.replaceChildren();
  for (const [name, value] of entries) dl.append(el("dt", name), el("dd", value ?? "—"));
}

function notify(text, kind = "info") {
  const n = $("#notice");
  n.textContent = text;
  n.dataset.kind = kind;
  n.hidden = false;
}

/** Run an admin call; a refusal is shown, and a 403 (not an admin) signs out. */
async function run(fn, done) {
  try {
    const result = await fn();
    if (done) notify(typeof done === "function" ? done(result) : done);
    return result;
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) {
      await refuse();
      return null;
    }
    if (err instanceof ApiError && err.code === "SIGNED_OUT") {
      notify("Your session has ended: sign in again.", "error");
      return null;
    }
    notify(err.message || String(err), "error");
    return null;
  }
}

/** Not an admin: nothing of the console is shown, and the session is ended. */
async function refuse() {
  clearConsole();
  await auth.logout();
  show();
  $("#refused").hidden = false;
}

function clearConsole() {
  current = null;
  for (const id of ["#saves", "#sessions", "#events", "#audit"]) $(id).replaceChildren();
  for (const id of ["#player-fields", "#farm-fields"]) $(id).replaceChildren();
  $("#player").hidden = true;
}

function show() {
  const player = auth.player;
  const admin = player?.role === "admin";
  $("#console").hidden = !admin;
  $("#sign-in").hidden = admin;
  $("#who").hidden = $("#sign-out").hidden = !admin;
  $("#who").textContent = admin ? `Signed in as ${player.username ?? player.email}` : "";
  if (!admin) clearConsole();
}

// ---- a player ----------------------------------------------------------------------------

async function lookUp(ident) {
  const found = await run(() => api.get(`/admin/players/${encodeURIComponent(ident)}`));
  if (!found) return;
  const p = found.player;
  current = p.id;
  $("#player").hidden = false;
  fields($("#player-fields"), [
    ["Id", p.id],
    ["Username", p.username],
    ["Email", p.email],
    ["Role", p.role],
    ["Guest", p.is_guest ? "yes" : "no"],
    ["Created", formatTimestamp(p.created_at)],
    ["Flagged", p.flagged ? `yes, ${formatTimestamp(p.flagged_at)}: ${p.flag_reason ?? ""}` : "no"],
    ["Violations", p.violations_total],
    ["Device", p.device_id],
  ]);
  const farm = found.farm;
  fields(
    $("#farm-fields"),
    farm
      ? [
          ["Revision", farm.revision],
          ["Farm value", farm.farm_value === undefined ? "(not loaded)" : formatNumber(farm.farm_value)],
          ["Online", farm.online === undefined ? "—" : farm.online ? "yes" : "no"],
          ["Prestiges", farm.prestige_count ?? "—"],
        ]
      : [["Farm", "none yet"]],
  );
  fill(
    $("#saves"),
    found.saves.map((s) =>
      row([
        s.revision,
        formatTimestamp(s.taken_at),
        formatNumber(s.farm_value),
        button("Restore", () => restore(s.revision)),
      ]),
    ),
    4,
    "no saves",
  );
  showSessions(found.sessions);
}

function showSessions(sessions) {
  fill(
    $("#sessions"),
    sessions.map((s) =>
      row([
        s.id.slice(0, 12),
        formatTimestamp(s.started_at),
        formatTimestamp(s.last_refreshed_at),
        formatTimestamp(s.expires_at),
        s.status,
        s.status === "active" ? button("End", () => endSessions(s.id)) : "",
      ]),
    ),
    6,
    "no sessions",
  );
}

async function clearFlag() {
  const done = (r) => (r.cleared ? "Flag cleared." : "The player was not flagged.");
  if (await run(() => api.request("POST", `/admin/players/${current}/clear-flag`, { body: {} }), done)) {
    await refreshPlayer();
  }
}

async function restore(revision) {
  if (!window.confirm(`Restore save ${revision} as the farm's newest revision? (History is kept.)`)) return;
  const body = { revision };
  const done = (r) => `Save ${r.restored_from} restored as revision ${r.revision}.`;
  if (await run(() => api.request("POST", `/admin/players/${current}/restore`, { body }), done)) {
    await refreshPlayer();
  }
}

async function endSessions(sessionId = null) {
  const body = sessionId ? { session_id: sessionId } : {};
  const done = (r) => `${r.ended.length} session(s) ended.`;
  if (await run(() => api.request("POST", `/admin/players/${current}/sessions/end`, { body }), done)) {
    await refreshPlayer();
  }
}

async function refreshPlayer() {
  if (current) await lookUp(current);
  await loadAudit();
}

// ---- live events -------------------------------------------------------------------------

async function loadEvents() {
  const answer = await run(() => api.get("/admin/events?include_past=true"));
  if (!answer) return;
  fill(
    $("#events"),
    answer.events.map((e) =>
      row([
        e.name,
        `×${e.multiplier}`,
        e.tiers ? e.tiers.join(", ") : "all",
        formatTimestamp(e.starts_at),
        formatTimestamp(e.ends_at),
        e.status,
        e.status === "scheduled" || e.status === "running" ? button("Cancel", () => cancelEvent(e)) : "",
      ]),
    ),
    7,
    "no events",
  );
}

/** A datetime-local value read as UTC (the server's clock, as every time on this page). */
function unixSeconds(value) {
  const ms = Date.parse(`${value}Z`);
  return Number.isFinite(ms) ? ms / 1000 : NaN;
}

async function scheduleEvent(form) {
  const data = new FormData(form);
  const tiers = String(data.get("tiers") || "")
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
  const body = {
    name: String(data.get("name")),
    multiplier: Number(data.get("multiplier")),
    tiers: tiers.length ? tiers : null,
    starts_at: unixSeconds(data.get("starts_at")),
    ends_at: unixSeconds(data.get("ends_at")),
  };
  const done = (r) => `Event “${r.event.name}” scheduled.`;
  if (await run(() => api.request("POST", "/admin/events", { body }), done)) {
    form.reset();
    await loadEvents();
    await loadAudit();
  }
}

async function cancelEvent(event) {
  if (!window.confirm(`Cancel the event “${event.name}”?`)) return;
  const done = (r) => `Event “${r.event.name}” cancelled.`;
  if (await run(() => api.request("DELETE", `/admin/events/${encodeURIComponent(event.id)}`), done)) {
    await loadEvents();
    await loadAudit();
  }
}

// ---- broadcast and audit -----------------------------------------------------------------

async function broadcast(form) {
  const data = new FormData(form);
  const body = { message: String(data.get("message")), level: String(data.get("level")) };
  if (await run(() => api.request("POST", "/admin/broadcast", { body }), "Broadcast sent.")) {
    form.reset();
    await loadAudit();
  }
}

function describe(details) {
  return Object.entries(details || {})
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" ");
}

async function loadAudit() {
  const answer = await run(() => api.get("/admin/audit?limit=100"));
  if (!answer) return;
  fill(
    $("#audit"),
    answer.entries.map((e) =>
      row([formatTimestamp(e.at), e.admin_id.slice(0, 12), e.action, e.target, describe(e.details)]),
    ),
    5,
    "nothing yet",
  );
}

/** The tier keys an event may name, from the public rules (a hint beside the field). */
async function loadTiers() {
  try {
    const config = await api.get("/config", { auth: false });
    $("#tier-keys").textContent = `Tier keys: ${config.tiers.map((t) => t.key).join(", ")}`;
  } catch {
    // only a hint: the server names an unknown tier when one is typed
  }
}

async function loadConsole() {
  await Promise.all([loadEvents(), loadTiers()]);
  await loadAudit();
}

// ---- signing in and out ------------------------------------------------------------------

function submit(selector, handler) {
  $(selector).addEventListener("submit", (e) => {
    e.preventDefault();
    handler(e.currentTarget);
  });
}

submit("#sign-in-form", async (form) => {
  const data = new FormData(form);
  $("#refused").hidden = true;
  $("#notice").hidden = true;
  try {
    await auth.login(String(data.get("login")), String(data.get("password")));
  } catch (err) {
    notify(err.message || "sign-in failed", "error");
    return;
  }
  form.reset();
  if (auth.player?.role !== "admin") {
    await refuse();
    return;
  }
  show();
  await loadConsole();
});
submit("#lookup-form", (form) => lookUp(String(new FormData(form).get("player")).trim()));
submit("#event-form", scheduleEvent);
submit("#broadcast-form", broadcast);
$("#clear-flag").addEventListener("click", clearFlag);
$("#end-sessions").addEventListener("click", () => endSessions());
$("#audit-reload").addEventListener("click", loadAudit);
$("#sign-out").addEventListener("click", async () => {
  await auth.logout();
  $("#notice").hidden = true;
  show();
});
auth.onChange(() => show());

show();
if (auth.player?.role === "admin") loadConsole();
