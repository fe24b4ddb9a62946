// Llama Wool Farm, the reference web client. See docs/client.md for the
// protocol walk-through; net.js speaks it, model.js extrapolates, this file
// draws. The server decides every number: the client sends intentions.

import { EventBanner } from "./events.js";
import { formatDuration, formatNumber, formatPercent, formatRate } from "./format.js";
import { FarmModel, GameConfig } from "./model.js";
import { Api, ApiError, Auth, Connection, newIdempotencyKey, sleep } from "./net.js";

const $ = (sel, root = document) => root.querySelector(sel);

/** Create an element: el("li", {class: "x", dataset: {k: "v"}}, child, "text"). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** Set text only when it changed (the frame loop calls this a lot). */
function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

function setAttr(node, name, value) {
  if (node && node.getAttribute(name) !== value) node.setAttribute(name, value);
}

const SHEAR_FLUSH_MS = 250; // at most four shear messages a second
const BOARD_REFRESH_MS = 30000;
const BOARDS = ["lifetime", "prestige", "rate", "weekly"];

const EFFECTS = {
  click_mult: (e) => `Shearing ×${e.value}`,
  building_mult: (e, c) => `${c.building[e.target]?.name ?? e.target} ×${e.value}`,
  tier_mult: (e, c) => `${c.tierName(e.target)} ×${e.value}`,
  all_mult: (e) => `All production ×${e.value}`,
  offline_efficiency: (e) => `Offline efficiency +${formatPercent(e.value)}`,
  offline_cap_hours: (e) => `Offline cap +${e.value} h`,
  auto_shears: (e) => `+${e.value} automatic shear${e.value === 1 ? "" : "s"}/s`,
};

const ACHIEVEMENT_TEXT = {
  lifetime_value: (t) => `Earn ${formatNumber(t, { trim: true })} lifetime value`,
  building_levels: (t) => `Own ${formatNumber(t, { trim: true })} building levels`,
  all_buildings: () => "Own at least one of every building",
  prestiges: (t) => `Prestige ${formatNumber(t, { trim: true })} time${t === 1 ? "" : "s"}`,
  soul_shears: (t) => `Hold ${formatNumber(t, { trim: true })} soul shears`,
  play_hours: (t) => `Play ${formatNumber(t, { trim: true })} hour${t === 1 ? "" : "s"} online`,
};

/** Shears are batched: clicks pile up locally and leave in one `shear` message per flush. */
class Shearer {
  constructor(app) {
    this.app = app;
    this.unsent = 0;
    this.inflight = new Map();
    this.nextBatch = 1;
    this.timer = null;
    this.tokens = 0;
    this.tokensAt = performance.now();
  }

  get rules() {
    return this.app.config.shear;
  }

  get clickPower() {
    return this.app.model.farm?.click_power ?? this.rules.base_click_power;
  }

  /** Mirror the server's token bucket so the client never sends shears it would drop. */
  sync(farm) {
    this.tokens = Math.min(this.rules.bucket_capacity, farm.shear_tokens ?? this.rules.bucket_capacity);
    this.tokensAt = performance.now();
  }

  _refill() {
    const now = performance.now();
    this.tokens = Math.min(
      this.rules.bucket_capacity,
      this.tokens + ((now - this.tokensAt) / 1000) * this.rules.bucket_refill_per_s,
    );
    this.tokensAt = now;
  }

  click() {
    this._refill();
    if (this.tokens < 1) {
      this.app.slowNote();
      return false;
    }
    this.tokens -= 1;
    this.unsent += 1;
    if (!this.timer) this.timer = setTimeout(() => this.flush(), SHEAR_FLUSH_MS);
    return true;
  }

  flush() {
    this.timer = null;
    if (this.unsent === 0) return;
    if (this.app.slowUntil > Date.now()) {
      this.timer = setTimeout(() => this.flush(), this.app.slowUntil - Date.now());
      return;
    }
    const count = Math.min(this.unsent, this.rules.max_per_request);
    this.unsent -= count;
    const batch = this.nextBatch++;
    this.inflight.set(batch, count * this.clickPower);
    this.app
      .act({ action: "shear", count })
      .then((data) => {
        this.inflight.delete(batch);
        this.app.applyResult(data);
        if (data.result?.dropped > 0) this.app.slowNote();
      })
      .catch((err) => {
        this.inflight.delete(batch);
        if (!["CONNECTION_LOST", "NOT_CONNECTED", "TIMEOUT", "NETWORK"].includes(err.code)) this.app.showError(err);
      });
    if (this.unsent > 0) this.timer = setTimeout(() => this.flush(), SHEAR_FLUSH_MS);
  }

  get busy() {
    return this.unsent > 0 || this.inflight.size > 0;
  }

  /** Basic wool shorn but not yet confirmed: shown at once, reconciled by the reply. */
  optimisticWool() {
    let total = this.unsent * this.clickPower;
    for (const v of this.inflight.values()) total += v;
    return total;
  }
}

class App {
  constructor() {
    this.auth = new Auth();
    this.api = new Api(this.auth);
    this.slowUntil = 0;
    this.pendingActions = 0;
    this.board = "lifetime";
    this.boardsAvailable = true;
    this.welcomed = false;
    this.reconnectAt = null;
    this.tierRows = new Map();
    this.buildingCards = new Map();
    this.upgradeCards = new Map();
    this.badges = new Map();
  }

  async start() {
    this.config = new GameConfig(await this._retrying(() => this.api.get("/config", { auth: false })));
    this.banner = new EventBanner($("#event-banner"), this.config);
    this.banner.load(this.config.raw.events);
    this.model = new FarmModel(this.config);
    this.shearer = new Shearer(this);
    this.model.optimistic = () => this.shearer.optimisticWool();
    this._buildTiers();
    this._buildBuildings();
    this._buildUpgrades();
    this._buildAchievements();
    this._wireControls();
    await this._retrying(() => this.auth.ensure());
    this._renderAccount();
    let shown = this.auth.player;
    this.auth.onChange((player) => {
      const before = shown;
      shown = player;
      if (before && !before.is_guest && player?.is_guest && !this.loggingOut) {
        // Not our logout: the session was ended elsewhere (a logout everywhere, a password change).
        this.toast("Your session ended (signed out elsewhere, or the password changed). Log in again.", "error", null, 10000);
      }
      this._renderAccount();
      this.conn?.restart();
    });
    this.conn = new Connection(this.auth, {
      onWelcome: (data) => this.onWelcome(data),
      onMessage: (msg) => this.onMessage(msg),
      onState: (state, detail) => this.onConnState(state, detail),
    });
    this.conn.start();
    window.addEventListener("online", () => this.conn.retryNow());
    requestAnimationFrame(() => this.frame());
    setInterval(() => this.refresh(), 200);
    setInterval(() => {
      if (document.visibilityState === "visible" && this.boardsAvailable) this.loadBoard();
    }, BOARD_REFRESH_MS);
  }

  /** Retry a startup call with backoff until the server answers (it may be restarting). */
  async _retrying(fn) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (err.status >= 400 && err.status < 500 && !err.rateLimited) throw err;
        const wait = Math.min(15000, 500 * 2 ** attempt);
        this.onConnState("reconnecting", { at: Date.now() + wait });
        await sleep(wait / 2 + Math.random() * (wait / 2));
      }
    }
  }

  // ---- messages ------------------------------------------------------------------

  onWelcome(data) {
    this.welcomes = (this.welcomes ?? 0) + 1;
    this.banner.setServerTime(data.server_time);
    if (this.welcomes > 1) this.reloadEvents(); // what changed while the socket was away
    this.player = data.player;
    this.model.loadFarm(data.farm);
    this.shearer.sync(data.farm);
    this.renderFarm();
    this._renderAccount();
    if (!this.welcomed) {
      this.welcomed = true;
      $("#main").removeAttribute("aria-busy");
      $("#shear-btn").disabled = false;
    }
    if (data.offline_report) this.showOfflineReport(data.offline_report);
    this.loadDaily();
    // After every (re)connect: a restarted server may have gained leaderboards.
    this.loadBoard();
    this.subscribeBoard(this.board);
  }

  onMessage(msg) {
    switch (msg.type) {
      case "tick":
        this.banner.setServerTime(msg.data?.server_time);
        if (this.model.applyTick(msg.data)) this.scheduleResync();
        break;
      case "event":
        this.onEvent(msg.data);
        break;
      case "error":
        // An error without a pending request (a malformed message, a limit).
        this.showError(new ApiError(0, msg.data || {}));
        break;
      default:
        break;
    }
  }

  async reloadEvents() {
    try {
      this.banner.load((await this.api.get("/config", { auth: false })).events);
    } catch {
      // the socket's messages keep the banner current; the next reconnect reads again
    }
  }

  onEvent(ev) {
    if (!ev) return;
    if (ev.kind === "live_event") {
      this.banner.onLiveEvent(ev);
      if (ev.phase === "started") this.toast(`${ev.event.name} has started: ${this.banner.describe(ev.event)}!`, "info");
      return;
    }
    switch (ev.type) {
      case "tier_discovered":
        this.model.discover(ev.tier);
        this.toast(`New wool discovered: ${this.config.tierName(ev.tier)}!`, "discovery", ev.tier);
        this.renderFarm();
        break;
      case "achievement_unlocked":
        this.model.unlockAchievement(ev.key, ev.at);
        this.toast(`Achievement unlocked: ${ev.name ?? ev.key} (+${formatPercent(this.config.achievementBonus)} production)`, "achievement");
        this.renderFarm();
        break;
      case "daily_reward":
        this.toast(`Daily reward: day ${ev.streak} of your streak, +${formatNumber(ev.reward?.basic ?? 0)} wool.`, "achievement");
        this.loadDaily();
        break;
      case "prestige":
        this.toast(`Prestige! +${ev.gain} soul shear${ev.gain === 1 ? "" : "s"}, ${ev.soul_shears} in all.`, "achievement");
        break;
      case "offline_report":
        if (ev.report) this.showOfflineReport(ev.report);
        break;
      case "rank_changed":
        if (ev.board === this.board && ev.rank != null) this.renderMyRank(ev.board, ev.rank, ev.score);
        if (ev.rank != null && ev.previous_rank != null && ev.rank < ev.previous_rank && ev.rank <= 100) {
          this.toast(`You climbed to #${ev.rank} on the ${ev.board} board!`, "info");
        }
        break;
      case "leaderboard":
        // The live top of the board this client subscribed to.
        if (ev.board === this.board && Array.isArray(ev.entries)) this.renderBoard(ev.board, ev.entries);
        break;
      case "broadcast":
        this.toast(ev.message ?? ev.text ?? "Message from the farm office", "info", null, 10000);
        break;
      default:
        break;
    }
  }

  onConnState(state, detail = {}) {
    const box = $("#conn");
    box.dataset.state = state;
    this.reconnectAt = state === "reconnecting" ? (detail.at ?? null) : null;
    this.reconnectReason = detail.reason ?? null;
    $("#conn-retry").hidden = state !== "reconnecting";
    this._renderConnText();
  }

  _renderConnText() {
    const state = $("#conn").dataset.state;
    let text = "Offline";
    if (state === "online") text = "Online";
    else if (state === "connecting") text = "Connecting…";
    else if (state === "reconnecting") {
      const why = this.reconnectReason ? `${this.reconnectReason[0].toUpperCase()}${this.reconnectReason.slice(1)}: ` : "";
      const secs = this.reconnectAt ? Math.ceil((this.reconnectAt - Date.now()) / 1000) : 0;
      text = secs > 0 ? `${why}reconnecting in ${secs} s` : `${why}reconnecting…`;
      text = text[0].toUpperCase() + text.slice(1);
    }
    setText($("#conn-text"), text);
  }

  scheduleResync() {
    if (this.resyncTimer) return; // one at a time; ticks keep coming meanwhile
    this.resyncTimer = setTimeout(async () => {
      this.resyncTimer = null;
      if (this.shearer.busy || this.pendingActions > 0) return this.scheduleResync();
      try {
        const farm = await this.api.get("/farm");
        if (farm.revision >= this.model.revision) {
          this.model.loadFarm(farm);
          this.renderFarm();
        }
      } catch {
        // The next tick tries again.
      }
    }, 1200);
  }

  // ---- actions ---------------------------------------------------------------------

  /** Send an action: over the socket with an id, or over REST when it is down. Either
   * way it carries one idempotency key: when the socket drops before the reply, the
   * REST retry with the same key replays what the server did, or does it once. */
  async act(action) {
    if (this.slowUntil > Date.now()) {
      throw new ApiError(429, { code: "RATE_LIMITED", retry_after: (this.slowUntil - Date.now()) / 1000 });
    }
    this.pendingActions += 1;
    const key = newIdempotencyKey();
    try {
      if (this.conn.isOpen) {
        try {
          return await this.conn.request("action", { ...action, idempotency_key: key });
        } catch (err) {
          const unavailable = err.code === "UNAVAILABLE";
          if (err.code !== "CONNECTION_LOST" && err.code !== "TIMEOUT" && !unavailable) throw err;
          // Unknown unless it says not_applied (a draining server): either way the REST
          // retry carries the same key, so it answers what was done or does it once.
          if (unavailable && err.problem?.outcome !== "not_applied") {
            await sleep(1000 * Math.min(5, err.retryAfter ?? 1));
          }
        }
      }
      const data = await this.api.action(action, key);
      for (const ev of data.events ?? []) this.onEvent(ev); // the socket is not there to push them
      return data;
    } catch (err) {
      if (err.rateLimited) this.slowDown(err.retryAfter ?? 2);
      throw err;
    } finally {
      this.pendingActions -= 1;
    }
  }

  applyResult(data) {
    if (data?.farm && data.farm.revision >= this.model.revision) {
      this.model.loadFarm(data.farm);
      this.renderFarm();
    }
  }

  async buyBuilding(key, quantity) {
    const b = this.config.building[key];
    const have = this.model.balance(b.cost_tier);
    const level = this.model.level(key);
    const q = quantity === "max" ? this.config.maxAffordable(b, level, have) : quantity;
    if (!this.model.buildingUnlocked(b)) {
      const need = this.model.missingForBuilding(b).map((m) => `${this.config.building[m.key].name} ${m.have}/${m.need}`);
      return this.toast(`${b.name} needs ${need.join(", ")}`, "error");
    }
    if (q < 1 || this.config.bulkCost(b, level, q) > have) {
      return this.toast(`Not enough ${this.config.tierName(b.cost_tier)} for ${b.name}`, "error");
    }
    try {
      this.applyResult(await this.act({ action: "buy_building", key, quantity }));
    } catch (err) {
      this.showError(err);
    }
  }

  async buyUpgrade(key) {
    const u = this.config.upgrade[key];
    const missing = this.model.missingForUpgrade(u);
    if (missing.length) return this.toast(`${u.name} needs ${missing.join(", ")}`, "error");
    if (this.model.balance(u.cost.tier) < u.cost.amount) {
      return this.toast(`Not enough ${this.config.tierName(u.cost.tier)} for ${u.name}`, "error");
    }
    try {
      this.applyResult(await this.act({ action: "buy_upgrade", key }));
    } catch (err) {
      this.showError(err);
    }
  }

  shear(fromKeyboard = false) {
    if (!this.model.loaded) return;
    if (!this.shearer.click()) return;
    const btn = $("#shear-btn");
    btn.classList.remove("bump");
    void btn.offsetWidth; // restart the animation
    btn.classList.add("bump");
    const pop = el("span", { class: "shear-pop", "aria-hidden": "true", text: `+${formatNumber(this.shearer.clickPower, { trim: true })}` });
    pop.style.setProperty("--dx", `${Math.round((Math.random() - 0.5) * 80)}px`);
    if (fromKeyboard) pop.classList.add("from-key");
    $(".shear-area").append(pop);
    pop.addEventListener("animationend", () => pop.remove());
  }

  slowDown(seconds) {
    this.slowUntil = Math.max(this.slowUntil, Date.now() + seconds * 1000);
    this.toast(`Slow down! The llamas need a breather: try again in ${Math.ceil(seconds)} s.`, "slow");
  }

  slowNote() {
    const note = $("#shear-slow");
    setText(note, "Slow down — 20 shears a second is the most a llama allows.");
    clearTimeout(this.slowNoteTimer);
    this.slowNoteTimer = setTimeout(() => setText(note, ""), 2000);
  }

  showError(err) {
    if (err.rateLimited) return; // act() already said "slow down"
    const tier = err.problem?.tier;
    let text = err.message;
    switch (err.code) {
      case "INSUFFICIENT_RESOURCES":
        text = tier ? `Not enough ${this.config.tierName(tier)}.` : err.message;
        break;
      case "CONNECTION_LOST":
      case "NOT_CONNECTED":
      case "TIMEOUT":
      case "NETWORK":
        text = "Connection trouble: that may not have gone through. Reconnecting…";
        break;
      case "UNAVAILABLE":
        text = "The farm office is busy: that may not have gone through. Try again in a moment.";
        break;
      default:
        break;
    }
    this.toast(text, "error");
  }

  // ---- building the page once -----------------------------------------------------------

  _buildTiers() {
    const list = $("#tiers");
    for (const t of this.config.tiers) {
      const amount = el("span", { class: "tier-amount", dataset: { value: "0" }, text: "0" });
      const rate = el("span", { class: "tier-rate", text: "+0/s" });
      const li = el(
        "li",
        { class: "tier", dataset: { tier: t.key }, hidden: true },
        el("span", { class: "swatch", "aria-hidden": "true" }),
        el("span", { class: "tier-name", text: t.name }),
        amount,
        rate,
      );
      list.append(li);
      this.tierRows.set(t.key, { li, amount, rate });
    }
  }

  _buildBuildings() {
    const list = $("#buildings");
    for (const b of this.config.buildings) {
      const produces = Object.entries(b.produces)
        .map(([k, v]) => `${formatNumber(v, { trim: true })} ${this.config.tierName(k)}`)
        .join(", ");
      const buttons = [1, 10, "max"].map((q) =>
        el(
          "button",
          {
            type: "button",
            class: "btn btn-buy",
            dataset: { q: String(q) },
            "aria-disabled": "true",
            onclick: () => this.buyBuilding(b.key, q),
          },
          el("span", { class: "buy-label", text: q === "max" ? "Max" : `Buy ${q}` }),
          el("span", { class: "buy-cost" }),
        ),
      );
      const card = el(
        "li",
        { class: "card building", dataset: { building: b.key }, hidden: true },
        el(
          "div",
          { class: "card-head" },
          el("h3", { text: b.name }),
          el("span", { class: "level" }, "Lv ", el("b", { class: "level-n", text: "0" })),
        ),
        el("p", { class: "produces", text: `Each level: +${produces} a second` }),
        el("p", { class: "cost" }, "Next ", el("b", { class: "next-cost" }), ` ${this.config.tierName(b.cost_tier)}`),
        el("p", { class: "requires", hidden: true }),
        el("div", { class: "buy", role: "group", "aria-label": `Buy ${b.name}` }, ...buttons),
      );
      list.append(card);
      this.buildingCards.set(b.key, {
        card,
        level: $(".level-n", card),
        cost: $(".cost", card),
        nextCost: $(".next-cost", card),
        requires: $(".requires", card),
        buttons,
      });
    }
  }

  _buildUpgrades() {
    const list = $("#upgrades");
    for (const u of this.config.upgrades) {
      const effects = u.effects.map((e) => (EFFECTS[e.kind] ?? (() => e.kind))(e, this.config)).join(", ");
      const cost = `${formatNumber(u.cost.amount, { trim: true })} ${this.config.tierName(u.cost.tier)}`;
      const btn = el(
        "button",
        {
          type: "button",
          class: "btn btn-buy",
          "aria-disabled": "true",
          "aria-label": `Buy ${u.name} for ${cost}`,
          onclick: () => this.buyUpgrade(u.key),
        },
        el("span", { class: "buy-label", text: "Buy" }),
        el("span", { class: "buy-cost", text: cost }),
      );
      const card = el(
        "li",
        { class: "card upgrade", dataset: { upgrade: u.key }, hidden: true },
        el("div", { class: "upgrade-text" }, el("h3", { text: u.name }), el("p", { class: "effect", text: effects }), el("p", { class: "requires", hidden: true })),
        btn,
      );
      list.append(card);
      this.upgradeCards.set(u.key, { card, btn, requires: $(".requires", card) });
    }
  }

  _buildAchievements() {
    const list = $("#achievements");
    for (const a of this.config.achievements) {
      const describe = (ACHIEVEMENT_TEXT[a.metric] ?? (() => a.metric))(a.threshold);
      const status = el("span", { class: "visually-hidden", text: "locked" });
      const li = el(
        "li",
        { class: "badge", dataset: { achievement: a.key }, title: `${a.name}: ${describe}` },
        el("span", { class: "badge-icon", "aria-hidden": "true" }),
        el("span", { class: "badge-name", text: a.name }),
        el("span", { class: "visually-hidden", text: `: ${describe}, ` }),
        status,
      );
      list.append(li);
      this.badges.set(a.key, { li, status });
    }
  }

  _wireControls() {
    $("#shear-btn").addEventListener("click", (e) => this.shear(e.detail === 0));
    document.addEventListener("keydown", (e) => {
      if (e.key !== "s" && e.key !== "S") return;
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const t = e.target;
      if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement) return;
      if (document.querySelector("dialog[open]")) return;
      e.preventDefault();
      this.shear(true);
    });
    $("#conn-retry").addEventListener("click", () => this.conn.retryNow());
    $("#account-btn").addEventListener("click", () => this.openAccount());
    $("#prestige-btn").addEventListener("click", () => this.openPrestige());
    $("#daily-btn").addEventListener("click", () => this.claimDaily());
    $("#prestige-confirm").addEventListener("click", () => this.confirmPrestige());
    $("#register-form").addEventListener("submit", (e) => this.submitRegister(e));
    $("#login-form").addEventListener("submit", (e) => this.submitLogin(e));
    $("#logout-btn").addEventListener("click", () => this.logout());
    $("#password-form").addEventListener("submit", (e) => this.submitPassword(e));
    const tabs = [...document.querySelectorAll("#board-tabs [role=tab]")];
    for (const tab of tabs) {
      tab.addEventListener("click", () => this.selectBoard(tab.dataset.board, false));
      tab.addEventListener("keydown", (e) => {
        const i = tabs.indexOf(tab);
        let next = null;
        if (e.key === "ArrowRight") next = tabs[(i + 1) % tabs.length];
        else if (e.key === "ArrowLeft") next = tabs[(i - 1 + tabs.length) % tabs.length];
        else if (e.key === "Home") next = tabs[0];
        else if (e.key === "End") next = tabs[tabs.length - 1];
        if (next) {
          e.preventDefault();
          this.selectBoard(next.dataset.board, true);
        }
      });
    }
  }

  // ---- drawing ----------------------------------------------------------------------

  /** Each animation frame: the balances, extrapolated from the last tick. */
  frame() {
    if (this.model.loaded) {
      const balances = this.model.allBalances();
      for (const [key, row] of this.tierRows) {
        if (row.li.hidden) continue;
        const v = balances[key];
        setText(row.amount, formatNumber(v));
        row.amount.dataset.value = String(v);
      }
      const value = this.model.value(balances);
      const farmValue = $("#farm-value");
      setText(farmValue, formatNumber(value));
      farmValue.dataset.value = String(value);
    }
    requestAnimationFrame(() => this.frame());
  }

  /** A few times a second: rates, costs, affordability, countdowns. */
  refresh() {
    if (this.reconnectAt) this._renderConnText();
    this.banner?.render();
    if (!this.model.loaded) return;
    const m = this.model;
    const c = this.config;
    const discovered = new Set(m.discovered());
    let hiddenTiers = 0;
    for (const [key, row] of this.tierRows) {
      const show = discovered.has(key);
      if (row.li.hidden === show) row.li.hidden = !show;
      if (!show) hiddenTiers += 1;
      setText(row.rate, `+${formatRate(m.rates[key] ?? 0)}`);
    }
    setText($("#tiers-more"), hiddenTiers ? `${hiddenTiers} more kinds of wool to discover.` : "Every kind of wool discovered!");
    const vps = m.valuePerSecond();
    setText($("#value-rate"), formatRate(vps));
    $("#value-rate").dataset.value = String(vps);

    let hiddenBuildings = 0;
    for (const b of c.buildings) {
      const card = this.buildingCards.get(b.key);
      const level = m.level(b.key);
      const unlocked = m.buildingUnlocked(b);
      // Show what is unlocked, and the next step of each chain (its prerequisites are unlocked).
      const show = unlocked || level > 0 || Object.keys(b.requires).every((k) => m.buildingUnlocked(c.building[k]) && m.level(k) > 0);
      if (card.card.hidden === show) card.card.hidden = !show;
      if (!show) {
        hiddenBuildings += 1;
        continue;
      }
      card.card.classList.toggle("locked", !unlocked);
      setText(card.level, String(level));
      const have = m.balance(b.cost_tier);
      const tierName = c.tierName(b.cost_tier);
      const atMax = level >= c.maxLevel;
      setText(card.nextCost, atMax ? "—" : formatNumber(c.bulkCost(b, level, 1)));
      card.requires.hidden = unlocked;
      if (!unlocked) {
        const need = m.missingForBuilding(b).map((x) => `${c.building[x.key].name} ${x.have}/${x.need}`);
        setText(card.requires, `Requires ${need.join(", ")}`);
      }
      const maxQ = c.maxAffordable(b, level, have);
      for (const btn of card.buttons) {
        const q = btn.dataset.q === "max" ? Math.max(1, maxQ) : Math.min(Number(btn.dataset.q), c.maxLevel - level);
        const cost = c.bulkCost(b, level, q);
        const ok = unlocked && !atMax && (btn.dataset.q === "max" ? maxQ >= 1 : cost <= have);
        setAttr(btn, "aria-disabled", ok ? "false" : "true");
        const costText = btn.dataset.q === "max" ? (maxQ >= 1 ? `×${maxQ}` : "") : formatNumber(cost);
        setText(btn.querySelector(".buy-cost"), costText);
        const label =
          btn.dataset.q === "max"
            ? maxQ >= 1
              ? `Buy ${maxQ} ${b.name} (the most you can afford) for ${formatNumber(c.bulkCost(b, level, maxQ))} ${tierName}`
              : `Buy as many ${b.name} as you can afford (none yet)`
            : `Buy ${q} ${b.name} for ${formatNumber(cost)} ${tierName}`;
        setAttr(btn, "aria-label", label);
      }
    }
    setText($("#buildings-more"), hiddenBuildings ? `${hiddenBuildings} more buildings to unlock.` : "");

    let hiddenUpgrades = 0;
    const owned = [];
    for (const u of c.upgrades) {
      const card = this.upgradeCards.get(u.key);
      const isOwned = m.owns(u.key);
      if (isOwned) owned.push(u.name);
      const show = !isOwned && discovered.has(u.cost.tier);
      if (card.card.hidden === show) card.card.hidden = !show;
      if (!show) {
        if (!isOwned) hiddenUpgrades += 1;
        continue;
      }
      const missing = m.missingForUpgrade(u);
      card.requires.hidden = missing.length === 0;
      if (missing.length) setText(card.requires, `Requires ${missing.join(", ")}`);
      card.card.classList.toggle("locked", missing.length > 0);
      const ok = missing.length === 0 && m.balance(u.cost.tier) >= u.cost.amount;
      setAttr(card.btn, "aria-disabled", ok ? "false" : "true");
    }
    setText($("#upgrades-owned"), owned.length ? `Owned: ${owned.join(", ")}` : "");
    setText($("#upgrades-more"), hiddenUpgrades ? `${hiddenUpgrades} more upgrades appear as you discover new wool.` : "");

    // Prestige preview (the dialog asks the server before confirming).
    const rv = m.runValue();
    const gain = c.prestigeGain(rv);
    const nextAt = c.prestige.divisor * 10 ** (gain + 1);
    setText($("#run-value"), formatNumber(rv));
    setText($("#next-gain-at"), formatNumber(nextAt));
    const prevAt = gain >= 1 ? c.prestige.divisor * 10 ** gain : 0;
    const pct = Math.max(0, Math.min(100, ((rv - prevAt) / (nextAt - prevAt)) * 100));
    const bar = $("#prestige-progress");
    setAttr(bar, "aria-valuenow", String(Math.floor(pct)));
    bar.firstElementChild.style.width = `${pct}%`;
    const pbtn = $("#prestige-btn");
    setAttr(pbtn, "aria-disabled", gain >= 1 ? "false" : "true");
    setText(pbtn, gain >= 1 ? `Prestige for +${gain} soul shear${gain === 1 ? "" : "s"}` : "Prestige (needs a run value of 10M)");
  }

  /** After a new farm view: the things that change only at events. */
  renderFarm() {
    const f = this.model.farm;
    if (!f) return;
    setText($("#click-power"), formatNumber(f.click_power, { trim: true }));
    setText($("#soul-shears"), String(f.soul_shears));
    setText($("#soul-shears-stat"), String(f.soul_shears));
    setText($("#prestige-count"), String(f.prestige_count));
    setText($("#prestige-bonus"), `(+${formatPercent(this.config.prestige.production_bonus_per_soul_shear * f.soul_shears)} production)`);
    let unlocked = 0;
    for (const [key, badge] of this.badges) {
      const on = key in f.achievements;
      if (on) unlocked += 1;
      badge.li.classList.toggle("unlocked", on);
      setText(badge.status, on ? "unlocked" : "locked");
    }
    setText(
      $("#achievements-count"),
      `${unlocked}/${this.badges.size} · +${formatPercent(unlocked * this.config.achievementBonus)}`,
    );
    this.refresh();
  }

  _renderAccount() {
    const p = this.player ?? this.auth.player;
    if (!p) return;
    setText($("#account-name"), p.is_guest ? "Guest" : p.username);
    setText($("#account-hint"), p.is_guest ? "Save your farm" : "Account");
    $("#account-guest").hidden = !p.is_guest;
    $("#account-user").hidden = p.is_guest;
    setText($("#account-username"), p.username);
    setText($("#account-email"), p.email ? `(${p.email})` : "");
  }

  toast(text, kind = "info", tier = null, ms = 5000) {
    const box = $("#toasts");
    const t = el("div", { class: `toast toast-${kind}`, dataset: tier ? { tier } : {} }, el("span", { text }));
    box.append(t);
    while (box.children.length > 4) box.firstElementChild.remove();
    setTimeout(() => {
      t.classList.add("leaving");
      setTimeout(() => t.remove(), 300);
    }, ms);
  }

  // ---- dialogs ---------------------------------------------------------------------

  showOfflineReport(report) {
    const dlg = $("#offline-dialog");
    const capped = report.capped ? ` (capped at ${formatDuration(report.cap_s)})` : "";
    setText(
      $("#offline-summary"),
      `You were away for ${formatDuration(report.elapsed_s)}. Your llamas kept working for ${formatDuration(report.credited_s)}${capped} at ${formatPercent(report.efficiency)} efficiency.`,
    );
    const list = $("#offline-gains");
    list.replaceChildren();
    for (const key of this.config.tierKeys) {
      const g = report.gains?.[key] ?? 0;
      if (g > 0) {
        list.append(
          el("li", { dataset: { tier: key } }, el("span", { class: "swatch", "aria-hidden": "true" }), `+${formatNumber(g)} ${this.config.tierName(key)}`),
        );
      }
    }
    if (!list.children.length) list.append(el("li", { text: "Nothing this time: build a barn first!" }));
    setText($("#offline-value"), `Worth ${formatNumber(report.value_gained)} in all.`);
    if (!dlg.open) dlg.showModal();
  }

  /** The daily return reward: what a claim gives now, or when the next one opens (the server decides). */
  async loadDaily() {
    try {
      this.renderDaily(await this.api.get("/farm/daily-reward"));
    } catch (err) {
      setText($("#daily-line"), "The daily reward could not be checked; it will be again on reconnect.");
    }
  }

  renderDaily(d) {
    this.daily = d;
    const btn = $("#daily-btn");
    const open = d.enabled && !d.claimed_today;
    setAttr(btn, "aria-disabled", open ? "false" : "true");
    if (!d.enabled) {
      setText($("#daily-line"), "No daily reward is running.");
    } else if (d.claimed_today) {
      const at = new Date(d.next_claim_at * 1000);
      setText($("#daily-line"), `Claimed: streak ${d.streak} day${d.streak === 1 ? "" : "s"}. Next claim from ${at.toUTCString().slice(17, 22)} UTC.`);
    } else {
      setText($("#daily-line"), `Day ${d.streak} of your streak: ${formatNumber(d.reward_seconds / 60, { trim: true })} minutes of production.`);
    }
    setText(btn, open ? `Claim day ${d.streak}` : "Claimed today");
  }

  async claimDaily() {
    if (!this.daily || this.daily.claimed_today || !this.daily.enabled) return;
    setText($("#daily-error"), "");
    try {
      this.applyResult(await this.act({ action: "claim_daily_reward" }));
    } catch (err) {
      if (err.code !== "CONFLICT") {
        setText($("#daily-error"), err.rateLimited ? "Slow down! Try again in a moment." : err.message);
      }
    }
    await this.loadDaily();
  }

  async openPrestige() {
    const dlg = $("#prestige-dialog");
    const confirm = $("#prestige-confirm");
    confirm.disabled = true;
    setText($("#prestige-error"), "");
    setText($("#prestige-preview"), "Checking with the server…");
    dlg.showModal();
    try {
      const p = await this.api.get("/farm/prestige");
      this.prestigePreview = p;
      if (p.allowed) {
        setText(
          $("#prestige-preview"),
          `You will gain ${p.gain} soul shear${p.gain === 1 ? "" : "s"} (${p.soul_shears} → ${p.soul_shears_after}) from a run worth ${formatNumber(p.run_value)}.`,
        );
        confirm.disabled = false;
        setText(confirm, `Prestige for +${p.gain}`);
      } else {
        setText(
          $("#prestige-preview"),
          `Not yet: this run is worth ${formatNumber(p.run_value)}; the first soul shear comes at ${formatNumber(this.config.prestige.divisor * 10)}.`,
        );
      }
    } catch (err) {
      setText($("#prestige-error"), err.rateLimited ? "Slow down! Try again in a moment." : err.message);
    }
  }

  async confirmPrestige() {
    const p = this.prestigePreview;
    if (!p?.allowed) return;
    const confirm = $("#prestige-confirm");
    confirm.disabled = true;
    try {
      // expected_gain: a stale preview is refused (409) instead of prestiging by surprise.
      this.applyResult(await this.act({ action: "prestige", confirm: true, expected_gain: p.gain }));
      $("#prestige-dialog").close();
    } catch (err) {
      if (err.code === "CONFLICT" && typeof err.problem?.gain === "number") {
        p.gain = err.problem.gain;
        p.soul_shears_after = p.soul_shears + p.gain;
        setText($("#prestige-error"), `The gain is now ${p.gain}: confirm again if you still want to.`);
        setText(confirm, `Prestige for +${p.gain}`);
        confirm.disabled = false;
      } else {
        setText($("#prestige-error"), err.rateLimited ? "Slow down! Try again in a moment." : err.message);
        confirm.disabled = false;
      }
    }
  }

  openAccount() {
    this._renderAccount();
    $("#account-dialog").showModal();
  }

  _formError(id, err, wrongCredentials = "Wrong login or password.") {
    let text = err.message;
    if (err.rateLimited) text = `Slow down! Try again in ${Math.ceil(err.retryAfter ?? 5)} s.`;
    else if (err.code === "INVALID_CREDENTIALS") text = wrongCredentials;
    else if (err.code === "NETWORK") text = "Cannot reach the server. Try again in a moment.";
    setText($(id), text);
  }

  /** An account form: validate, run `send` with its fields, then reset it, close the dialog
   * and toast what `send` returns; a refusal is shown under the form. */
  async _submitAccountForm(e, errorId, send, wrongCredentials) {
    e.preventDefault();
    const form = e.currentTarget;
    if (!form.reportValidity()) return;
    setText($(errorId), "");
    try {
      const [text, kind] = await send(new FormData(form));
      form.reset();
      $("#account-dialog").close();
      this.toast(text, kind);
    } catch (err) {
      this._formError(errorId, err, wrongCredentials);
    }
  }

  submitRegister(e) {
    return this._submitAccountForm(e, "#register-error", async (data) => {
      const s = await this.auth.register(data.get("email"), data.get("password"), data.get("username"));
      this.player = s.player;
      return [`Welcome, ${s.player.username}! Your farm is saved to your account.`, "achievement"];
    });
  }

  submitLogin(e) {
    return this._submitAccountForm(e, "#login-error", async (data) => {
      const s = await this.auth.login(data.get("login"), data.get("password"));
      this.player = s.player;
      return [`Welcome back, ${s.player.username}!`, "info"];
    });
  }

  submitPassword(e) {
    return this._submitAccountForm(
      e,
      "#password-error",
      async (data) => {
        await this.auth.changePassword(data.get("current_password"), data.get("new_password"));
        return ["Password changed. Your other devices are signed out.", "info"];
      },
      "The current password is wrong.",
    );
  }

  async logout() {
    this.loggingOut = true;
    try {
      const s = await this.auth.logout();
      this.player = s.player;
      $("#account-dialog").close();
      this.toast("Logged out. A fresh guest farm is ready.", "info");
    } catch (err) {
      this.toast(err.message, "error");
    } finally {
      this.loggingOut = false;
    }
  }

  // ---- leaderboards ----------------------------------------------------------------------

  /** Live updates of a board's top over the socket (a server without them answers an error: fine). */
  subscribeBoard(board, previous = null) {
    if (!this.conn?.isOpen || !this.boardsAvailable) return;
    if (previous && previous !== board) this.conn.request("unsubscribe", { board: previous }).catch(() => {});
    this.conn.request("subscribe", { board }).catch(() => {});
  }

  selectBoard(board, focus) {
    const previous = this.board;
    this.board = board;
    this.subscribeBoard(board, previous);
    for (const tab of document.querySelectorAll("#board-tabs [role=tab]")) {
      const on = tab.dataset.board === board;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      if (on) {
        $("#board-panel").setAttribute("aria-labelledby", tab.id);
        if (focus) tab.focus();
      }
    }
    this.loadBoard();
  }

  _formatScore(board, score) {
    if (board === "prestige") return `${formatNumber(score, { trim: true })} soul shears`;
    if (board === "rate") return formatRate(score);
    return formatNumber(score);
  }

  renderBoard(board, entries) {
    const myId = this.player?.id ?? this.auth.player?.id;
    const mine = this.myRanks?.[board];
    this.boardEntries = { board, entries };
    $("#board-list").replaceChildren(
      ...entries.map((e) => {
        // Pages are frozen views a few seconds old; your own row shows your newest score.
        const score = e.player_id === myId && mine?.rank === e.rank && mine.score != null ? mine.score : e.score;
        return el(
          "li",
          { class: e.player_id === myId ? "me" : null },
          el("span", { class: "rank", text: `#${e.rank}` }),
          el("span", { class: "who", text: e.username ?? e.player_id }),
          el("span", { class: "score", text: this._formatScore(board, score) }),
        );
      }),
    );
    setText($("#board-status"), entries.length ? "" : "Nobody on this board yet.");
  }

  renderMyRank(board, rank, score) {
    this.myRanks = { ...this.myRanks, [board]: { rank, score } };
    if (this.boardEntries?.board === board) {
      const { entries } = this.boardEntries;
      const myId = this.player?.id ?? this.auth.player?.id;
      if (entries.some((e) => e.player_id === myId && e.rank === rank)) this.renderBoard(board, entries);
    }
    setText($("#board-me"), rank != null ? `Your rank: #${rank} · ${this._formatScore(board, score ?? 0)}` : "You are not on this board yet.");
  }

  async loadBoard() {
    const board = this.board;
    let mine = null;
    try {
      // Your own rank first: asking for it puts your newest score on the board.
      mine = await this.api.get(`/leaderboards/${board}/me`);
    } catch (err) {
      if (err.status !== 404) mine = { failed: true };
    }
    let top;
    try {
      top = await this.api.get(`/leaderboards/${board}?limit=10`, { auth: false });
    } catch (err) {
      if (board !== this.board) return;
      $("#board-list").replaceChildren();
      setText($("#board-me"), "");
      if (err.status === 404) {
        this.boardsAvailable = false;
        setText($("#board-status"), "Leaderboards are not available on this server yet.");
      } else if (err.rateLimited) {
        setText($("#board-status"), "Slow down: the leaderboards will refresh shortly.");
      } else {
        setText($("#board-status"), "Leaderboards could not be loaded right now.");
      }
      return;
    }
    if (board !== this.board) return;
    const wasAvailable = this.boardsAvailable;
    this.boardsAvailable = true;
    if (!wasAvailable) this.subscribeBoard(board);
    if (mine?.failed) setText($("#board-me"), "");
    else this.renderMyRank(board, mine?.rank ?? null, mine?.score);
    this.renderBoard(board, top.entries ?? top.items ?? (Array.isArray(top) ? top : []));
  }
}

const app = new App();
window.llamawool = app; // handy in the console: llamawool.model, llamawool.conn
app.start().catch((err) => {
  console.warn("llamawool: could not start", err);
  setText($("#conn-text"), `Could not start: ${err.message}`);
});
