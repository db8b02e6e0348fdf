"""docs/examples/torchrl_ppo.py and torchrl_recurrent_dqn.py (the "Drop RTRL into your TorchRL
pipeline" examples) run."""

import importlib.util
import math
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_torchrl_ppo_example_runs_a_few_iterations():
    """Small settings (the defaults train for over a minute): one history entry per iteration, with the
    frames so far, increasing wall times and, once an episode has ended, a finite positive return."""
    example = load("torchrl_ppo")
    history = example.train(core="rtrl", iterations=4, num_envs=2, segment=16, epochs=2, log_every=0)
    assert len(history) == 4
    assert [h["frames"] for h in history] == [32, 64, 96, 128]
    assert all(math.isfinite(h["seconds"]) for h in history)
    assert [h["seconds"] for h in history] == sorted(h["seconds"] for h in history)
    returns = [h["episode_return"] for h in history]
    assert math.isfinite(returns[-1]) and returns[-1] >= 8  # CartPole episodes last at least 8 steps
    assert all(math.isnan(r) or 8 <= r <= 500 for r in returns)


def test_recurrent_dqn_tutorial_pipeline_trains_with_exact_rtrl_on_whole_episode_slices():
    """TorchRL's recurrent-DQN tutorial pipeline: CartPole episodes under a random-ish policy are
    shorter than the 50-step slices, so every slice is a whole episode and every start is exact."""
    losses, counts = load("torchrl_recurrent_dqn").train(frames=700, updates=2)
    assert losses and all(math.isfinite(v) for v in losses)
    assert counts["exact"] > 0 and counts["truncated"] == 0
