"""Learning-curve plots shared by the R2AC recipe (one run's ``learning_curve.png``) and
``python -m recipes.compare`` (several runs, one line per label).

A run's ``learning_curve.csv`` has one row per update in which episodes ended: ``frames`` (environment
frames so far, all ranks) and ``episode_return`` (mean return of those episodes).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CURVE_FILE = "learning_curve.csv"
CURVE_COLUMNS = ("frames", "episode_return")


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over ``min(window, len(values))`` points, one output per input: the first
    points average what is there so far, so short runs keep a full smoothed line."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return values
    window = max(1, min(int(window), values.size))
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(0, ends - window)
    return (cumsum[ends] - cumsum[starts]) / (ends - starts)


def read_curve(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(frames, episode_return) of a run folder's ``learning_curve.csv``, sorted by frames.

    Raises ``FileNotFoundError`` / ``ValueError`` with a one-line message naming the folder.
    """
    folder = Path(folder)
    path = folder / CURVE_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {CURVE_FILE} (is it a run folder, e.g. .../rtrl/version_0?)"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CURVE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}")
        rows = [(float(r["frames"]), float(r["episode_return"])) for r in reader if r["episode_return"]]
    if not rows:
        raise ValueError(f"{path} has no episodes")
    data = np.array(sorted(rows))
    return data[:, 0], data[:, 1]


def new_figure():
    """A figure and axes (non-interactive Agg backend) sized for a learning curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 3.5))


def plot_run(ax, frames: Sequence[float], returns: Sequence[float], smoothing: int, label: str, color=None):
    """One run: the raw per-update returns (faint) and their moving average (``smooth``)."""
    (raw,) = ax.plot(frames, list(returns), alpha=0.25, lw=0.8, color=color)
    (line,) = ax.plot(frames, smooth(returns, smoothing).tolist(), lw=2, color=raw.get_color(), label=label)
    return line


def label_axes(ax, title: str) -> None:
    ax.set(xlabel="environment frames", ylabel="episode return", title=title)
    ax.legend()


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)
