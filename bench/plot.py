"""Figure of the fan-out benchmark: latency p50 and p99 against the number of clients.

    .venv/bin/python bench/plot.py                  # bench/results/fanout.json -> bench/fanout.png
    .venv/bin/python bench/plot.py --input bench/results/fanout-quick.json --output /tmp/q.png

Reads the raw results bench/fanout.py writes (`rows`: medians per N and server; `runs`: every
repetition) and draws two panels side by side, p50 and p99 in ms against N (both axes log), one
line per server measured (ours, floor, peer1 = websockets, peer2 = Node ws) through the medians,
with a bar from the lowest to the highest repetition. matplotlib with the Agg backend: no display
needed. bench/fanout.py runs this at the end of a full run (or with --plot).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

BENCH = Path(__file__).resolve().parent
SERVERS = ("ours", "floor", "peer1", "peer2")
STYLE: dict[str, dict[str, Any]] = {
    "ours": {"label": "ours (service /ws)", "color": "#1f5fbf", "marker": "o", "lw": 2.6},
    "floor": {
        "label": "floor (minimal aiohttp)",
        "color": "#222222",
        "marker": "s",
        "lw": 1.8,
        "ls": "--",
    },
    "peer1": {"label": "peer1 (websockets broadcast())", "color": "#e07b00", "marker": "^"},
    "peer2": {"label": "peer2 (Node ws)", "color": "#2a9d3c", "marker": "D"},
}


def finite(values: list[float]) -> list[float]:
    return [v for v in values if isinstance(v, int | float) and math.isfinite(v)]


def series(
    raw: dict[str, Any], kind: str, key: str
) -> tuple[list[int], list[float], list[float], list[float]]:
    """(N, median, median - lowest rep, highest rep - median) where the median is finite."""
    ns, mids, lows, highs = [], [], [], []
    for row in raw["rows"]:
        mid = row.get(f"{kind}_{key}")
        if mid is None or not math.isfinite(mid):
            continue
        reps = finite([r[key] for r in raw["runs"] if r["kind"] == kind and r["n"] == row["n"]])
        ns.append(int(row["n"]))
        mids.append(mid)
        lows.append(max(0.0, mid - min(reps, default=mid)))
        highs.append(max(0.0, max(reps, default=mid) - mid))
    return ns, mids, lows, highs


def y_ticks(low: float, high: float) -> list[float]:
    """Round ms values in [low, high]: 1-2-5, or finer if that gives fewer than 4."""
    for subs in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0**e for e in range(-3, 6) for m in subs]
        inside = [t for t in ticks if low <= t <= high]
        if len(inside) >= 4:
            return inside
    if len(inside) >= 2:
        return inside
    # A very narrow range (one N, close servers): plain evenly spaced values.
    return [t for t in MaxNLocator(5).tick_values(low, high) if low <= t <= high]


def ms_label(value: float, _pos: float) -> str:
    if value >= 10:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:g}"
    return f"{value:.2g}"


def draw(raw: dict[str, Any], output: Path) -> None:
    meta = raw.get("meta", {})
    kinds = [k for k in SERVERS if any(f"{k}_p99_ms" in row for row in raw["rows"])]
    ns = sorted({int(row["n"]) for row in raw["rows"]})
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), constrained_layout=True)
    for ax, key, title in zip(
        axes, ("p50_ms", "p99_ms"), ("median latency (p50)", "tail latency (p99)"), strict=True
    ):
        for kind in kinds:
            x, y, lo, hi = series(raw, kind, key)
            if not x:
                continue
            style = dict(STYLE.get(kind, {"label": kind}))
            ax.errorbar(
                x,
                y,
                yerr=[lo, hi],
                label=style.pop("label"),
                markersize=7,
                capsize=4,
                elinewidth=1,
                **style,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(min(ns) / 1.6, max(ns) * 1.6)  # also right for a run of one N
        ax.set_xticks(ns)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(FixedLocator(y_ticks(*ax.get_ylim())))
        ax.yaxis.set_major_formatter(FuncFormatter(ms_label))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", axis="y", alpha=0.12)
        ax.set_title(title)
        ax.set_xlabel("idle WebSocket clients (N)")
        ax.set_ylabel("vote sent → frame received, ms")
    axes[0].legend(loc="upper left", fontsize=9, framealpha=0.9)
    reps = max((int(r["rep"]) for r in raw["runs"]), default=1)
    subtitle = (
        f"{meta.get('mode', '?')} run, {meta.get('date', '')}; medians of {reps} "
        f"repetition(s), bars = lowest to highest; server pinned to 1 core "
        f"({meta.get('cpu', 'unknown CPU')})"
    )
    fig.suptitle(f"Fan-out latency against the number of clients\n{subtitle}", fontsize=11)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=BENCH / "results" / "fanout.json")
    parser.add_argument("--output", type=Path, default=BENCH / "fanout.png")
    args = parser.parse_args(argv)
    raw = json.loads(args.input.read_text())
    if not raw.get("rows"):
        print(f"plot: no rows in {args.input}", file=sys.stderr)
        return 1
    draw(raw, args.output)
    print(f"plot: written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
