// The live-event banner: "Double wool weekend · ×2 all wool · ends in 1 h 20 min".
// The server lists running and upcoming events in /config and announces every
// change on the socket ({type: "event", data: {kind: "live_event", phase, event}});
// times are the server's, so the countdown runs on the server clock (the offset
// from the last tick), not on this device's.

import { formatDuration } from "./format.js";

export class EventBanner {
  constructor(root, config) {
    this.root = root;
    this.config = config;
    this.events = new Map(); // id -> EventView
    this.offset = 0; // server time - local time, seconds
  }

  /** The list from /config (replaces what we had: it is the server's whole current view). */
  load(list) {
    this.events = new Map((list ?? []).map((e) => [e.id, e]));
    this.render();
  }

  setServerTime(serverTime) {
    if (Number.isFinite(serverTime)) this.offset = serverTime - Date.now() / 1000;
  }

  serverNow() {
    return Date.now() / 1000 + this.offset;
  }

  /** A socket message: scheduled/started add or update, ended/cancelled remove. */
  onLiveEvent(data) {
    const ev = data?.event;
    if (!ev?.id) return;
    if (data.phase === "ended" || data.phase === "cancelled") this.events.delete(ev.id);
    else this.events.set(ev.id, ev);
    this.render();
  }

  describe(ev) {
    const what = ev.tiers ? ev.tiers.map((t) => this.config.tierName(t)).join(", ") : "all wool";
    return `×${ev.multiplier} ${what}`;
  }

  /** Called a few times a second: the countdowns move, finished events drop out. */
  render() {
    const now = this.serverNow();
    const shown = [...this.events.values()]
      .filter((e) => e.ends_at > now)
      .sort((a, b) => a.starts_at - b.starts_at);
    const lines = shown.map((e) => {
      const running = e.starts_at <= now;
      const left = running ? `ends in ${formatDuration(e.ends_at - now)}` : `starts in ${formatDuration(e.starts_at - now)}`;
      return { id: e.id, running, text: `${e.name} · ${this.describe(e)} · ${left}` };
    });
    const key = lines.map((l) => `${l.id}:${l.running}:${l.text}`).join("|");
    if (key === this.lastKey) return;
    this.lastKey = key;
    this.root.replaceChildren(
      ...lines.map((l) => {
        const p = document.createElement("p");
        p.className = l.running ? "event-line running" : "event-line upcoming";
        p.dataset.eventId = l.id;
        p.textContent = l.text;
        return p;
      }),
    );
    this.root.hidden = lines.length === 0;
  }
}
