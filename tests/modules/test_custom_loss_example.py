"""docs/examples/custom_loss.py runs: a user-written loss trains an RTRL module through the plain loop."""

import importlib.util
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "custom_loss.py"


def test_custom_loss_example_runs_and_gives_finite_losses():
    spec = importlib.util.spec_from_file_location("custom_loss_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    history = module.main(updates=20)
    assert len(history) == 20
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert any("episode_return" in h for h in history)
