"""docs/examples/r2ac_single_file.py: R2AC on the delayed-cue task in one file, runs and learns."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "r2ac_single_file.py"
TINY = ["--total-frames", "960", "--num-envs", "4", "--eval-episodes", "8", "--log-every", "40"]


@pytest.fixture
def script():
    spec = importlib.util.spec_from_file_location("r2ac_single_file", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # the script sets its own


@pytest.mark.parametrize("core", ["rtrl", "tbptt"])
def test_tiny_run_trains_the_configured_frames_with_finite_losses(script, core, capsys):
    result = script.main([*TINY, "--core", core])
    assert result["frames"] == 960
    assert len(result["losses"]) == 960 // (4 * 3)  # one update per [num_envs, M] segment
    assert all(math.isfinite(loss) for loss in result["losses"])
    assert result["episode_returns"] and -1.0 <= result["greedy_return"] <= 1.0
    out = capsys.readouterr().out
    assert "update     80/80 | frames      960" in out
    assert f"{core}: 960 frames" in out and "greedy return" in out


def test_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--total-frames", "240"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rtrl: 240 frames" in result.stdout


def test_learns_the_delayed_cue_with_the_default_settings(script):
    """Default settings (32 envs, delay 12 > 4 M, M = 3, 96k frames): about 12 s on one core per seed.
    200 greedy ±1 episodes: a cue-blind policy has mean 0 and standard error ≈ 0.07. 4 of 5 seeds
    solve it (seed 0 among them); a second seed runs only if the first fails (RL runs can diverge)."""
    for seed in ("0", "1"):
        result = script.main(["--seed", seed, "--log-every", "1000"])
        assert result["frames"] == 96_000
        assert all(math.isfinite(loss) for loss in result["losses"])
        if result["greedy_return"] >= 0.6:
            break
    assert result["greedy_return"] >= 0.6
