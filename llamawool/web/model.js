// The client's copy of a farm. The server is the authority: this only
// extrapolates between its messages. Balances follow the closed form
// balance(t) = anchor + rate x (t - anchor_time), so between ticks the client
// computes the same line locally (from the local receipt time of the last
// anchor) and every tick re-anchors it. Within one revision the display never
// runs backwards: a tick that lands a hair behind the extrapolation holds the
// number until the line catches up; a new revision (a purchase) snaps.

export class GameConfig {
  constructor(raw) {
    this.raw = raw;
    this.tiers = raw.tiers;
    this.tierKeys = raw.tiers.map((t) => t.key);
    this.tier = Object.fromEntries(raw.tiers.map((t) => [t.key, t]));
    this.buildings = raw.buildings;
    this.building = Object.fromEntries(raw.buildings.map((b) => [b.key, b]));
    this.upgrades = raw.upgrades;
    this.upgrade = Object.fromEntries(raw.upgrades.map((u) => [u.key, u]));
    this.achievements = raw.achievements;
    this.maxLevel = raw.max_building_level;
    this.maxBulk = raw.max_bulk_quantity;
    this.shear = raw.shear;
    this.prestige = raw.prestige;
    this.achievementBonus = raw.achievement_bonus;
  }

  tierName(key) {
    return this.tier[key]?.name ?? key;
  }

  /** Cost of levels level..level+q-1: the geometric sum, as the server computes it. */
  bulkCost(b, level, q) {
    if (q <= 0) return 0;
    const g = b.growth;
    return (b.base_cost * g ** level * (g ** q - 1)) / (g - 1);
  }

  /** The largest q whose bulk cost fits the budget (closed form, then settle the last unit). */
  maxAffordable(b, level, budget) {
    const room = this.maxLevel - level;
    if (room <= 0 || budget <= 0) return 0;
    const g = b.growth;
    const first = b.base_cost * g ** level;
    let q = Math.floor(Math.log1p((budget * (g - 1)) / first) / Math.log(g));
    q = Math.max(0, Math.min(q, room));
    if (q > 0 && this.bulkCost(b, level, q) > budget) q -= 1;
    if (q < room && this.bulkCost(b, level, q + 1) <= budget) q += 1;
    return q;
  }

  prestigeGain(runValue) {
    const ratio = runValue / this.prestige.divisor;
    if (!(ratio >= 10)) return 0;
    return Math.max(0, Math.floor(Math.log10(ratio)));
  }
}

export class FarmModel {
  constructor(config) {
    this.config = config;
    this.farm = null;
    this.revision = -1;
    this.balances = {};
    this.rates = {};
    this.anchorLocal = 0; // seconds, performance clock, when `balances` were true
    this.shown = {}; // last displayed values, for the no-backwards rule
    this.optimistic = () => 0; // basic wool shorn but not yet confirmed
  }

  get loaded() {
    return this.farm !== null;
  }

  static now() {
    return performance.now() / 1000;
  }

  /** A whole farm view (welcome, an action's result, GET /farm). */
  loadFarm(farm, at = FarmModel.now()) {
    this.farm = farm;
    this.revision = farm.revision;
    this.balances = { ...farm.balances };
    this.rates = { ...farm.rates };
    this.anchorLocal = at;
    this.farmLocal = at;
    this.shown = {};
  }

  /** A tick: balances at the server's instant; rates only when they changed. */
  applyTick(tick, at = FarmModel.now()) {
    if (!this.farm || tick.revision < this.revision) return false; // older than the farm we hold
    const sameRevision = tick.revision === this.revision;
    this.balances = { ...tick.balances };
    if (tick.rates) this.rates = { ...tick.rates };
    this.anchorLocal = at;
    if (!sameRevision) this.shown = {};
    // True when the farm changed in ways a tick does not carry (another device bought something).
    return tick.revision > this.revision;
  }

  balance(key, at = FarmModel.now()) {
    const base = this.balances[key] ?? 0;
    const rate = this.farm?.online === false ? 0 : (this.rates[key] ?? 0);
    let v = base + rate * Math.max(0, at - this.anchorLocal);
    const prev = this.shown[key];
    if (prev !== undefined && v < prev && prev - v <= rate * 2 + 1e-9) v = prev;
    this.shown[key] = v;
    if (key === this.config.tierKeys[0]) v += this.optimistic();
    return v;
  }

  allBalances(at = FarmModel.now()) {
    const out = {};
    for (const k of this.config.tierKeys) out[k] = this.balance(k, at);
    return out;
  }

  value(amounts) {
    let total = 0;
    for (const t of this.config.tiers) total += (amounts[t.key] ?? 0) * t.value;
    return total;
  }

  valuePerSecond() {
    return this.value(this.rates);
  }

  /** Run value now: the last farm view's, grown at the current value rate. */
  runValue(at = FarmModel.now()) {
    if (!this.farm) return 0;
    return this.farm.run_value + this.valuePerSecond() * Math.max(0, at - this.farmLocal) + this.optimistic();
  }

  level(key) {
    return this.farm?.buildings?.[key] ?? 0;
  }

  owns(upgradeKey) {
    return this.farm?.upgrades?.includes(upgradeKey) ?? false;
  }

  discovered() {
    const d = new Set(this.farm?.discovered_tiers ?? []);
    // Tiers with a balance or a rate are shown even before the event arrives.
    for (const k of this.config.tierKeys) if ((this.balances[k] ?? 0) > 0 || (this.rates[k] ?? 0) > 0) d.add(k);
    return this.config.tierKeys.filter((k) => d.has(k));
  }

  discover(tier) {
    if (this.farm && !this.farm.discovered_tiers.includes(tier)) this.farm.discovered_tiers.push(tier);
  }

  unlockAchievement(key, at) {
    if (this.farm && !(key in this.farm.achievements)) this.farm.achievements[key] = at;
  }

  buildingUnlocked(b) {
    return Object.entries(b.requires || {}).every(([k, n]) => this.level(k) >= n);
  }

  missingForBuilding(b) {
    return Object.entries(b.requires || {})
      .filter(([k, n]) => this.level(k) < n)
      .map(([k, n]) => ({ key: k, need: n, have: this.level(k) }));
  }

  missingForUpgrade(u) {
    const req = u.requires || {};
    const out = [];
    for (const k of req.upgrades || []) {
      if (!this.owns(k)) out.push(`${this.config.upgrade[k]?.name ?? k}`);
    }
    for (const [k, n] of Object.entries(req.buildings || {})) {
      if (this.level(k) < n) out.push(`${this.config.building[k]?.name ?? k} ${this.level(k)}/${n}`);
    }
    if ((req.prestiges || 0) > (this.farm?.prestige_count ?? 0)) {
      out.push(`${req.prestiges} prestiges (${this.farm?.prestige_count ?? 0} done)`);
    }
    return out;
  }
}
