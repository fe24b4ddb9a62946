// The protocol, done the way a game client should: tokens that refresh
// themselves, REST with problem details and Idempotency-Key, and a WebSocket
// that authenticates with its first message, correlates actions by id and
// reconnects with capped exponential backoff and jitter.

export const API = "/api/v1";
const STORE_KEY = "llamawool.session";
const DEVICE_KEY = "llamawool.device_id";

/** A refused request: the server's problem details (RFC 9457) or a WS `error`. */
export class ApiError extends Error {
  constructor(status, problem = {}) {
    super(problem.detail || problem.message || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || (status === 0 ? "NETWORK" : `HTTP_${status}`);
    this.problem = problem;
    const retry = Number(problem.retry_after ?? problem.retryAfter);
    this.retryAfter = Number.isFinite(retry) && retry > 0 ? retry : null;
  }

  get rateLimited() {
    return this.status === 429 || this.code === "RATE_LIMITED";
  }
}

/** A fresh Idempotency-Key: a retry that carries it again applies nothing twice. */
export function newIdempotencyKey() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

function newDeviceId() {
  const rnd = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  return `web-${rnd}`;
}

function jwtExpiry(token) {
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof payload.exp === "number" ? payload.exp : null;
  } catch {
    return null;
  }
}

async function readProblem(resp) {
  try {
    return await resp.json();
  } catch {
    return { detail: resp.statusText };
  }
}

/**
 * The session: a device id (the guest's identity on this browser) and the
 * token pair. Refresh tokens rotate on use, and reusing a spent one revokes
 * the family, so refreshes are single-flight within the tab and serialised
 * across tabs (Web Locks), and a tab adopts a pair another tab just stored.
 */
export class Auth {
  /** `storeKey`: where the session is kept (the admin console keeps its own);
   * `guests`: whether a lost session falls back to this device's guest (the game)
   * or ends signed out (the console: no one is signed in without a password). */
  constructor({ storeKey = STORE_KEY, guests = true } = {}) {
    this.storeKey = storeKey;
    this.guests = guests;
    this.session = this._load();
    this._refreshing = null;
    this._changing = null; // a request replacing the session in flight (see _replaceSession)
    this._listeners = new Set();
    window.addEventListener("storage", (e) => {
      if (e.key === this.storeKey) {
        const next = this._load();
        const changedPlayer = next?.player?.id !== this.session?.player?.id;
        this.session = next;
        if (changedPlayer) this._emit();
      }
    });
  }

  get deviceId() {
    let id = localStorage.getItem(DEVICE_KEY);
    if (!id) {
      id = newDeviceId();
      localStorage.setItem(DEVICE_KEY, id);
    }
    return id;
  }

  get player() {
    return this.session?.player ?? null;
  }

  get accessToken() {
    return this.session?.access_token ?? null;
  }

  onChange(fn) {
    this._listeners.add(fn);
  }

  _emit() {
    for (const fn of this._listeners) fn(this.player);
  }

  _load() {
    try {
      return JSON.parse(localStorage.getItem(this.storeKey) || "null");
    } catch {
      return null;
    }
  }

  _store(body) {
    const prev = this.player;
    this.session = {
      access_token: body.access_token,
      refresh_token: body.refresh_token,
      player: body.player,
    };
    localStorage.setItem(this.storeKey, JSON.stringify(this.session));
    const p = body.player || {};
    if (!prev || prev.id !== p.id || prev.is_guest !== p.is_guest || prev.username !== p.username) this._emit();
    return this.session;
  }

  async _post(path, body, token) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    let resp;
    try {
      resp = await fetch(API + path, { method: "POST", headers, body: JSON.stringify(body) });
    } catch (err) {
      throw new ApiError(0, { detail: `network error: ${err.message}` });
    }
    if (!resp.ok) {
      const problem = await readProblem(resp);
      if (resp.status === 429) problem.retry_after ??= resp.headers.get("Retry-After");
      throw new ApiError(resp.status, problem);
    }
    return resp.status === 204 ? null : resp.json();
  }

  /** A usable session: the stored one, or a guest one for this device. */
  async ensure() {
    if (this.session?.access_token) return this.session;
    return this.guest();
  }

  async guest() {
    return this._store(await this._post("/auth/guest", { device_id: this.deviceId }));
  }

  async login(login, password) {
    return this._store(await this._post("/auth/login", { login, password }));
  }

  /** Register; sent with the guest's token, the server upgrades the guest in place (the farm
   * stays), ends every session of the guest (this one too) and answers with a new one. */
  async register(email, password, username) {
    const body = { email, password, username };
    if (!this.player?.is_guest) return this._store(await this._post("/auth/register", body));
    return this._replaceSession("/auth/register", body, await this.freshAccessToken());
  }

  /** A new password: the server ends every session (this one too) and answers with a new one. */
  async changePassword(currentPassword, newPassword) {
    const token = await this.freshAccessToken();
    const body = { current_password: currentPassword, new_password: newPassword };
    return this._replaceSession("/auth/password", body, token);
  }

  /** A request that ends this session and answers with a new one. Its socket may hear of
   * the end (4401) before the answer arrives: a refresh meanwhile waits for the new
   * session instead of spending the old. */
  async _replaceSession(path, body, token) {
    this._changing = this._post(path, body, token).then((answer) => this._store(answer));
    try {
      return await this._changing;
    } finally {
      this._changing = null;
    }
  }

  async logout() {
    const refresh = this.session?.refresh_token;
    if (refresh) {
      try {
        await this._post("/auth/logout", { refresh_token: refresh });
      } catch {
        // Already revoked or offline: forgetting it locally is what matters.
      }
    }
    this._forget();
    if (!this.guests) return null;
    // A new device id: the old one still resolves to the account it belonged to.
    localStorage.setItem(DEVICE_KEY, newDeviceId());
    return this.guest();
  }

  /** The access token, refreshed first when it expires within 30 s. */
  async freshAccessToken() {
    const token = this.accessToken;
    const exp = token ? jwtExpiry(token) : null;
    if (token && (exp === null || exp - Date.now() / 1000 > 30)) return token;
    return (await this.refresh()).access_token;
  }

  /** Rotate the refresh token (single-flight); on failure fall back to this device's guest. */
  refresh() {
    if (!this._refreshing) {
      const spent = this.session?.refresh_token;
      const run = async () => {
        if (this._changing) await this._changing.catch(() => {});
        return this._refresh(spent);
      };
      const locked = navigator.locks?.request ? navigator.locks.request("llamawool-refresh", run) : run();
      this._refreshing = locked.finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }

  async _refresh(spent) {
    const stored = this._load();
    if (stored?.refresh_token && stored.refresh_token !== spent) {
      // Another tab rotated it while we waited for the lock.
      this.session = stored;
      return stored;
    }
    if (spent) {
      try {
        return this._store(await this._post("/auth/refresh", { refresh_token: spent }));
      } catch (err) {
        if (err.status !== 401 && err.status !== 422) throw err;
      }
    }
    // The refresh token is spent, expired or revoked: start again from this device.
    this._forget();
    if (!this.guests) throw new ApiError(401, { code: "SIGNED_OUT", detail: "the session has ended: sign in again" });
    return this.guest();
  }

  _forget() {
    const had = this.player;
    localStorage.removeItem(this.storeKey);
    this.session = null;
    // the game's guest fallback announces the guest instead (its listeners expect a player)
    if (had && !this.guests) this._emit();
  }
}

/** REST calls: bearer auth, one refresh-and-retry on 401, 429 as a typed error. */
export class Api {
  constructor(auth) {
    this.auth = auth;
  }

  async request(method, path, { body, auth = true, idempotencyKey } = {}) {
    for (let attempt = 0; ; attempt++) {
      const headers = { Accept: "application/json" };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (auth) headers.Authorization = `Bearer ${await this.auth.freshAccessToken()}`;
      if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
      let resp;
      try {
        resp = await fetch(API + path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (err) {
        // A retry with the same Idempotency-Key is safe: it is applied at most once.
        if (idempotencyKey && attempt < 2) {
          await sleep(400 * (attempt + 1));
          continue;
        }
        throw new ApiError(0, { detail: `network error: ${err.message}` });
      }
      if (resp.status === 401 && auth && attempt === 0) {
        await this.auth.refresh();
        continue;
      }
      if (!resp.ok) {
        const problem = await readProblem(resp);
        if (resp.status === 429 || resp.status === 503) problem.retry_after ??= resp.headers.get("Retry-After");
        throw new ApiError(resp.status, problem);
      }
      return resp.status === 204 ? null : resp.json();
    }
  }

  get(path, opts) {
    return this.request("GET", path, opts);
  }

  /** An action over REST (used when the socket is down), with an Idempotency-Key
   * (the key a lost socket action carried, when this retries it). */
  action(action, key = newIdempotencyKey()) {
    const opts = { idempotencyKey: key };
    switch (action.action) {
      case "shear":
        return this.request("POST", "/farm/shear", { ...opts, body: { count: action.count } });
      case "buy_building":
        return this.request("POST", `/farm/buildings/${encodeURIComponent(action.key)}/purchase`, {
          ...opts,
          body: { quantity: action.quantity },
        });
      case "buy_upgrade":
        return this.request("POST", `/farm/upgrades/${encodeURIComponent(action.key)}/purchase`, { ...opts, body: {} });
      case "prestige":
        return this.request("POST", "/farm/prestige", {
          ...opts,
          body: { confirm: action.confirm, expected_gain: action.expected_gain },
        });
      case "claim_daily_reward":
        return this.request("POST", "/farm/daily-reward/claim", { ...opts, body: {} });
      default:
        return Promise.reject(new ApiError(422, { code: "VALIDATION_ERROR", detail: "unknown action" }));
    }
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export const CLOSE_RESTART = 1012;
export const CLOSE_AUTH = 4401;
export const CLOSE_VIOLATIONS = 4408;

/**
 * The live connection. States: "connecting", "online", "reconnecting",
 * "offline" (stopped). Events go to the callbacks given to the constructor.
 */
export class Connection {
  constructor(auth, { onWelcome, onMessage, onState }) {
    this.auth = auth;
    this.onWelcome = onWelcome;
    this.onMessage = onMessage;
    this.onState = onState;
    this.ws = null;
    this.state = "offline";
    this.attempt = 0;
    this.authFailures = 0;
    this.nextId = 1;
    this.pending = new Map();
    this.timer = null;
    this.stopped = true;
    this.lastMessageAt = 0;
    this.tickInterval = 1;
    this.welcomed = false;
    this._watchdog = setInterval(() => this._checkAlive(), 2000);
  }

  get url() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}${API}/ws`;
  }

  get isOpen() {
    return this.welcomed && this.ws?.readyState === WebSocket.OPEN;
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this._connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this._drop(1000, "client leaving");
    this._setState("offline");
  }

  /** Forget the current socket (closing it) and fail the requests waiting on it. */
  _drop(code, reason) {
    const ws = this.ws;
    this.ws = null;
    this.welcomed = false;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(code, reason);
    }
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new ApiError(0, { code: "CONNECTION_LOST", detail: "the connection closed before the reply" }));
    }
    this.pending.clear();
  }

  restart() {
    this.stop();
    this.start();
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.onState?.(state, detail);
  }

  async _connect() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    this._setState(this.attempt === 0 ? "connecting" : "reconnecting", { attempt: this.attempt });
    let token;
    try {
      token = await this.auth.freshAccessToken();
    } catch (err) {
      this._scheduleReconnect(err.rateLimited ? (err.retryAfter ?? 5) * 1000 : null);
      return;
    }
    if (this.stopped) return;
    this._drop(1000, "replaced");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.welcomed = false;
    ws.onopen = () => {
      this.lastMessageAt = performance.now();
      // Authenticate with the first message: the token stays out of URLs and logs.
      ws.send(JSON.stringify({ type: "auth", data: { token } }));
    };
    ws.onmessage = (e) => this._receive(ws, e.data);
    ws.onclose = (e) => this._closed(ws, e.code, e.reason);
    ws.onerror = () => {
      // onclose follows with the code; nothing to do here.
    };
  }

  _receive(ws, raw) {
    if (ws !== this.ws) return;
    this.lastMessageAt = performance.now();
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (msg.type === "welcome") {
      this.welcomed = true;
      this.attempt = 0;
      this.authFailures = 0;
      this.tickInterval = msg.data?.tick_interval_s || 1;
      this._setState("online");
      this.onWelcome?.(msg.data);
      return;
    }
    if ((msg.type === "result" || msg.type === "error") && msg.id != null && this.pending.has(msg.id)) {
      const { resolve, reject, timer } = this.pending.get(msg.id);
      clearTimeout(timer);
      this.pending.delete(msg.id);
      if (msg.type === "result") resolve(msg.data);
      else reject(new ApiError(0, msg.data || {}));
      return;
    }
    this.onMessage?.(msg);
  }

  _closed(ws, code, reason) {
    if (ws !== this.ws) return;
    this._drop(code, reason);
    if (this.stopped) return;
    if (code === CLOSE_AUTH) {
      // The access token was refused: refresh (or start again as this device's guest), then retry.
      this.authFailures += 1;
      if (this.authFailures <= 3) {
        this.auth.refresh().then(
          () => this._scheduleReconnect(100),
          () => this._scheduleReconnect(),
        );
        this._setState("reconnecting", { code, reason: "signing in again" });
        return;
      }
    }
    if (code === CLOSE_RESTART) {
      // The server is draining for a restart, or moving sockets to a replica with room
      // (reason "rebalancing: ..."): come back soon, spread out, never with a long backoff.
      const moving = typeof reason === "string" && reason.startsWith("rebalancing");
      this._scheduleReconnect(250 + Math.random() * 1000, {
        code,
        reason: moving ? "moving to a less busy server" : "server restarting",
      });
      return;
    }
    if (code === CLOSE_VIOLATIONS) {
      this._scheduleReconnect(30000 + Math.random() * 15000, { code, reason: "too many refused actions" });
      return;
    }
    this._scheduleReconnect(null, { code });
  }

  /** Capped exponential backoff with jitter (half fixed, half random). */
  _scheduleReconnect(delayMs = null, detail = {}) {
    clearTimeout(this.timer);
    if (this.stopped) return;
    if (delayMs === null) {
      const ceiling = Math.min(30000, 500 * 2 ** Math.min(this.attempt, 6));
      delayMs = ceiling / 2 + Math.random() * (ceiling / 2);
    }
    this.attempt += 1;
    const at = Date.now() + delayMs;
    this._setState("reconnecting", { ...detail, attempt: this.attempt, at });
    this.timer = setTimeout(() => this._connect(), delayMs);
  }

  /** Reconnect now (the user pressed "retry", or the page came back online). */
  retryNow() {
    if (this.stopped || this.isOpen) return;
    if (this.ws) return;
    this._connect();
  }

  _checkAlive() {
    if (!this.isOpen) return;
    // Ticks arrive every tick interval: a long silence means a dead link.
    const silence = performance.now() - this.lastMessageAt;
    if (silence > Math.max(15000, this.tickInterval * 5000)) this._closed(this.ws, 4000, "no ticks");
  }

  send(obj) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  /** Send an action with an id; resolves with the `result` data, rejects with the `error`. */
  request(type, data, timeoutMs = 10000) {
    if (!this.isOpen) {
      return Promise.reject(new ApiError(0, { code: "NOT_CONNECTED", detail: "not connected" }));
    }
    const id = `c${this.nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ApiError(0, { code: "TIMEOUT", detail: "no reply from the server" }));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ type, id, data }));
    });
  }
}
