"""Compare runs in one plot: episode return against frames, one line per label.

    python -m recipes.compare runs/memory/delayed_cue/*/version_* --out compare.png [--smoothing 50]

Each RUN_DIR holds the ``learning_curve.csv`` the R2AC recipe writes. Runs are grouped by label: the
run folder's parent name by default (the core: ``rtrl``, ``tbptt``, ...), or the folder ``--label-by N``
levels above the run folder (2: the task). Each run's curve is smoothed (moving average over
``--smoothing`` updates), the runs of a label (seeds) are put on a common frame grid (where all of them
have data), and the plot shows their mean with a min–max band.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recipes.plots import label_axes, new_figure, read_curve, save_figure, smooth

USAGE = "python -m recipes.compare RUN_DIR [RUN_DIR ...] --out compare.png [--smoothing K] [--label-by N]"
GRID_POINTS = 200


def run_label(folder: Path, levels_up: int) -> str:
    """The name of the folder ``levels_up`` levels above ``folder`` (0: the run folder itself)."""
    parts = folder.resolve().parts
    if levels_up >= len(parts):
        raise ValueError(f"--label-by {levels_up} goes above the root for {folder}")
    return parts[len(parts) - 1 - levels_up]


def aggregate(curves: Sequence[tuple[np.ndarray, np.ndarray]], smoothing: int) -> tuple[np.ndarray, ...]:
    """(grid, mean, low, high) of the smoothed curves on a common frame grid: the frames where every
    curve has data (from the latest first point to the earliest last point)."""
    start = max(frames[0] for frames, _ in curves)
    stop = min(frames[-1] for frames, _ in curves)
    grid = np.linspace(start, stop, GRID_POINTS) if stop > start else np.array([stop])
    values = np.stack([np.interp(grid, frames, smooth(returns, smoothing)) for frames, returns in curves])
    return grid, values.mean(0), values.min(0), values.max(0)


def compare(
    run_dirs: Sequence[str | Path], out: str | Path, smoothing: int = 50, label_by: int = 1, title: str = ""
) -> dict[str, list[Path]]:
    """Plot ``run_dirs`` into ``out``; returns the runs of each label (in order of appearance)."""
    groups: dict[str, list[Path]] = {}
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for run_dir in map(Path, run_dirs):
        frames, returns = read_curve(run_dir)
        label = run_label(run_dir, label_by)
        groups.setdefault(label, []).append(run_dir)
        curves.setdefault(label, []).append((frames, returns))
    fig, ax = new_figure()
    for label, runs in curves.items():
        grid, mean, low, high = aggregate(runs, smoothing)
        n = len(runs)
        (line,) = ax.plot(
            grid, mean, lw=2, marker="o" if grid.size == 1 else None, label=f"{label} ({n} runs)"
        )
        if n > 1:
            ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, lw=0)
    label_axes(ax, title or f"mean and min–max over runs, moving average {smoothing}")
    save_figure(fig, out)
    return groups


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m recipes.compare", usage=USAGE, description=__doc__)
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="folders with learning_curve.csv")
    parser.add_argument("--out", default="compare.png", help="the PNG to write (default: compare.png)")
    parser.add_argument("--smoothing", type=int, default=50, help="moving-average window in updates")
    parser.add_argument("--label-by", type=int, default=1, help="label = the folder N levels above the run")
    parser.add_argument("--title", default="", help="plot title")
    args = parser.parse_args(argv)
    if not args.run_dirs:
        raise SystemExit(f"error: no run folders given; usage: {USAGE}")
    if args.smoothing < 1 or args.label_by < 0:
        raise SystemExit("error: --smoothing must be >= 1 and --label-by >= 0")
    try:
        groups = compare(args.run_dirs, args.out, args.smoothing, args.label_by, args.title)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    summary = ", ".join(f"{label}: {len(runs)}" for label, runs in groups.items())
    print(f"wrote {args.out} (runs per label: {summary})", file=sys.stdout, flush=True)
    return Path(args.out)


if __name__ == "__main__":
    main()
