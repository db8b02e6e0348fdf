"""docs/examples/custom_loss.py runs: a user-written loss trains an RTRL module through the plain loop."""

import importlib.util
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "custom_loss.py"


def test_custom_loss_example_runs_and_gives_finite_losses():
    spec = importlib.util.spec_from_file_location("custom_loss_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    history = module.main(updates=20, log_every=0)  # the defaults (1000 updates) take ~30 s
    assert len(history) == 20
    assert [h["frames"] for h in history] == [16 * 4 * (i + 1) for i in range(20)]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    returns = [h["episode_return"] for h in history if "episode_return" in h]
    assert returns and all(-1.0 <= r <= 1.0 for r in returns)  # ±1 per delayed-cue episode
