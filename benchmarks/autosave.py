"""How long an autosave holds the SQLite writer as the snapshot history fills up.

`python -m benchmarks.autosave [--quick] [--farms N] [--rounds R]`

Every round snapshots every farm once (one autosave at full change), into the
real `SQLiteStore` with the default retention (the newest 50 per farm, plus the
first of each day): once as one `add_snapshots` of all farms (how the autosave
wrote before the soak, RELIABILITY.md fix 12), and once in chunks of
`engine.AUTOSAVE_CHUNK` (how it writes now), into two stores side by side.
Actions that commit during an autosave wait for the write in progress, so the
figure that matters is the longest single write: the whole batch before, one
chunk now. Printed for the first round, and then every tenth.

Goal (issue 8's soak): the longest write of a chunked autosave at full
history stays within 1/5 of the one-batch write it replaced.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

from llamawool.engine.ticker import AUTOSAVE_CHUNK
from llamawool.settings import load_rules
from llamawool.store import Snapshot, SQLiteStore

from .common import Workdir, finish, print_table, round_floats

T0 = 1_800_000_000.0
AUTOSAVE_S = 30.0


async def run(farms: int, rounds: int) -> list[dict[str, float]]:
    ids = [uuid.uuid4().hex for _ in range(farms)]
    doc = load_rules().new_farm(ids[0], T0).to_doc()  # a real farm document
    rows = []
    with Workdir("autosave") as work:
        batch, chunked = SQLiteStore(work / "batch.sqlite3"), SQLiteStore(work / "chunked.sqlite3")
        await batch.open()
        await chunked.open()
        try:
            for r in range(1, rounds + 1):
                snaps = [Snapshot(p, r, T0 + r * AUTOSAVE_S, 1.0, doc) for p in ids]
                t0 = time.perf_counter()
                await batch.add_snapshots(snaps)
                one_write = time.perf_counter() - t0
                longest = 0.0
                t0 = time.perf_counter()
                for start in range(0, farms, AUTOSAVE_CHUNK):
                    t1 = time.perf_counter()
                    await chunked.add_snapshots(snaps[start : start + AUTOSAVE_CHUNK])
                    longest = max(longest, time.perf_counter() - t1)
                whole = time.perf_counter() - t0
                if r == 1 or r % 10 == 0:
                    rows.append(
                        {
                            "round": r,
                            "history": min(r, batch.snapshot_history),
                            "one_write_ms": 1000 * one_write,
                            "chunked_total_ms": 1000 * whole,
                            "chunked_longest_write_ms": 1000 * longest,
                        }
                    )
        finally:
            await batch.close()
            await chunked.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 farms, 12 rounds")
    ap.add_argument("--farms", type=int)
    ap.add_argument("--rounds", type=int)
    args = ap.parse_args(argv)
    farms = args.farms or (200 if args.quick else 2000)
    rounds = args.rounds or (12 if args.quick else 60)
    rows = asyncio.run(run(farms, rounds))
    print_table(
        f"autosave: {farms} farms changed every round, one snapshot each (chunks of {AUTOSAVE_CHUNK})",
        list(rows[0].keys()),
        [list(round_floats(row).values()) for row in rows],
    )
    last = rows[-1]
    ratio = last["chunked_longest_write_ms"] / last["one_write_ms"]
    print(f"\nat round {last['round']}: the longest write is {ratio:.2f}x the one-batch write")
    goals = {"longest_write_le_one_fifth_of_one_batch": ratio <= 0.2}
    figures = {"farms": farms, "rounds": rounds, "chunk": AUTOSAVE_CHUNK, "last_round": last, "ratio": ratio}
    return finish("autosave", args.quick, round_floats(figures), goals)


if __name__ == "__main__":
    sys.exit(main())
