"""``python -m recipes.compare``: several runs in one plot, and the shared plotting of ``recipes.plots``."""

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import recipes.compare
import recipes.plots
from recipes.compare import aggregate, main
from recipes.plots import read_curve, smooth
from recipes.r2ac import _plot

ROOT = Path(__file__).resolve().parents[2]


def capture_figures(monkeypatch, target) -> list:
    """Record the figures ``target`` (a module using ``save_figure``) saves."""
    figures, save = [], recipes.plots.save_figure
    monkeypatch.setattr(target, "save_figure", lambda fig, path: (figures.append(fig), save(fig, path)))
    return figures


def write_run(folder: Path, frames, returns) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "learning_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["frames", "episode_return"])
        writer.writeheader()
        writer.writerows({"frames": float(x), "episode_return": float(y)} for x, y in zip(frames, returns))
    return folder


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    """2 labels (rtrl, tbptt) × 2 seeds, laid out as the recipe does; the seeds differ in length."""
    rng = np.random.default_rng(0)
    folders = []
    for core, level in (("rtrl", 1.0), ("tbptt", 0.0)):
        for seed, updates in ((0, 120), (1, 100)):
            frames = 96 * np.arange(1, updates + 1)
            returns = level * np.linspace(0, 1, updates) + rng.normal(0, 0.3, updates)
            folder = tmp_path / "memory/delayed_cue" / core / f"version_{seed}"
            folders.append(write_run(folder, frames, returns))
    return folders


def test_compare_writes_one_line_per_label_with_a_band(runs, tmp_path, monkeypatch, capsys):
    figures = capture_figures(monkeypatch, recipes.compare)
    out = tmp_path / "compare.png"
    assert main([*map(str, runs), "--out", str(out), "--smoothing", "10"]) == out
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    assert "runs per label: rtrl: 2, tbptt: 2" in capsys.readouterr().out
    (ax,) = figures[0].axes
    assert [line.get_label() for line in ax.lines] == ["rtrl (2 runs)", "tbptt (2 runs)"]
    assert len(ax.collections) == 2  # one min–max band per label
    # the common grid stops where the shorter seed stops
    assert ax.lines[0].get_xdata()[-1] == pytest.approx(96 * 100)
    # --label-by 2 groups by the task: one line over all four runs
    figures.clear()
    main([*map(str, runs), "--out", str(out), "--label-by", "2"])
    assert [line.get_label() for line in figures[0].axes[0].lines] == ["delayed_cue (4 runs)"]


def test_aggregate_is_mean_min_max_on_a_common_grid():
    a = (np.array([0.0, 10.0]), np.array([0.0, 10.0]))
    b = (np.array([0.0, 5.0, 20.0]), np.array([2.0, 2.0, 2.0]))
    grid, mean, low, high = aggregate([a, b], smoothing=1)
    assert grid[0] == 0 and grid[-1] == 10
    np.testing.assert_allclose(low, np.minimum(grid, 2.0))
    np.testing.assert_allclose(high, np.maximum(grid, 2.0))
    np.testing.assert_allclose(mean, (grid + 2.0) / 2)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: [root / "memory/delayed_cue/rtrl"], "has no learning_curve.csv"),
        (lambda root: [root / "nowhere"], "is not a folder"),
    ],
)
def test_bad_run_folders_fail_with_one_line_naming_the_folder(runs, tmp_path, make, message):
    folders = make(tmp_path)
    with pytest.raises(SystemExit) as error:
        main([str(runs[0]), *map(str, folders), "--out", str(tmp_path / "x.png")])
    text = str(error.value.code)
    assert message in text and str(folders[0]) in text and "\n" not in text
    assert not (tmp_path / "x.png").exists()


def test_no_arguments_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit) as error:
        main([])
    assert str(error.value.code).startswith("error: no run folders given; usage: python -m recipes.compare")
    # the same from the command line: exit status 1, one line on stderr
    result = subprocess.run(
        [sys.executable, "-m", "recipes.compare"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: no run folders given") and result.stderr.count("\n") == 1


def test_read_curve_sorts_and_rejects_empty_curves(tmp_path):
    frames, returns = read_curve(write_run(tmp_path / "a", [20, 10], [1.0, 0.0]))
    assert frames.tolist() == [10, 20] and returns.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="has no episodes"):
        read_curve(write_run(tmp_path / "b", [], []))


def test_smooth_keeps_one_point_per_input():
    np.testing.assert_allclose(smooth([1, 2, 3, 4], 50), [1, 1.5, 2, 2.5])  # window min(50, n)
    np.testing.assert_allclose(smooth([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(smooth([5.0], 1), [5.0])
    assert smooth([], 3).size == 0


def test_recipe_plot_draws_a_smoothed_line_with_fewer_episodes_than_the_window(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch, recipes.plots)  # _plot imports it when called
    returns = [float(i % 2) for i in range(10)]
    module = SimpleNamespace(
        history=[{"frames": 96.0 * (i + 1), "episode_return": r} for i, r in enumerate(returns)],
        hparams=SimpleNamespace(core="rtrl", segment_length=3, suite="memory", task="delayed_cue"),
    )
    _plot(module, tmp_path / "learning_curve.png", smoothing=50)
    assert (tmp_path / "learning_curve.png").is_file()
    raw, smoothed = figures[0].axes[0].lines
    assert smoothed.get_label() == "rtrl, M=3"
    assert len(smoothed.get_xdata()) == 10
    np.testing.assert_allclose(smoothed.get_ydata(), smooth(returns, 10))
    assert not np.allclose(smoothed.get_ydata(), raw.get_ydata())
