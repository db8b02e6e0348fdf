"""docs/examples/torchrl_ppo.py (the "Drop RTRL into your TorchRL pipeline" example) runs."""

import importlib.util
import math
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "torchrl_ppo.py"


def test_torchrl_ppo_example_runs_a_few_iterations():
    spec = importlib.util.spec_from_file_location("torchrl_ppo_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    returns = example.train(core="rtrl", iterations=2, num_envs=2, segment=16, epochs=2)
    assert len(returns) == 2
    assert any(math.isfinite(r) and r > 0 for r in returns)
