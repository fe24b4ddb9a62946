// Number and time formatting for an idle game: 0.12, 45.6, 999, 1.23K, 4.56M,
// 7.89B, then scientific from a trillion on (4.56e12). Pure functions, no DOM.

const UNITS = [
  [1e3, "K"],
  [1e6, "M"],
  [1e9, "B"],
];

/**
 * Format an amount for display.
 * @param {number} n
 * @param {{trim?: boolean}} [opts] trim: drop trailing zeros below 1000 ("10" not "10.0")
 */
export function formatNumber(n, opts = {}) {
  if (typeof n !== "number" || Number.isNaN(n)) return "—";
  if (!Number.isFinite(n)) return n > 0 ? "∞" : "-∞";
  const sign = n < 0 ? "-" : "";
  const a = Math.abs(n);
  if (a < 1000) {
    const digits = a < 10 ? 2 : a < 100 ? 1 : 0;
    let s = a.toFixed(digits);
    if (Number(s) < 1000) {
      if (opts.trim && s.includes(".")) s = s.replace(/\.?0+$/, "");
      return sign + s;
    }
  }
  for (const [unit, suffix] of UNITS) {
    // The first unit where the rounded mantissa lands in [1, 1000): 999.999 is "1.00K".
    const s = (a / unit).toFixed(2);
    if (Number(s) >= 1 && Number(s) < 1000) return sign + s + suffix;
  }
  const [mantissa, exponent] = a.toExponential(2).split("e");
  return `${sign}${mantissa}e${Number(exponent)}`;
}

/** "+1.23K/s" style rate. */
export function formatRate(perSecond) {
  return `${formatNumber(perSecond)}/s`;
}

/** A duration in words: "45 s", "3 min 20 s", "2 h 5 min", "1 d 3 h". */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "—";
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d > 0) return h ? `${d} d ${h} h` : `${d} d`;
  if (h > 0) return m ? `${h} h ${m} min` : `${h} h`;
  if (m > 0) return sec ? `${m} min ${sec} s` : `${m} min`;
  return `${sec} s`;
}

/** 0.155 -> "15.5%" (at most one decimal). */
export function formatPercent(fraction) {
  const p = Math.round(fraction * 1000) / 10;
  return `${p}%`;
}

/** Unix seconds as "2026-12-06 14:03:09 UTC" (server times, the same for every reader). */
export function formatTimestamp(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "—";
  return `${new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " ")} UTC`;
}
