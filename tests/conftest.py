"""Shared test settings and fakes.

One torch thread per test process (the suite runs on 2 processes, 2 cores). ``fake_lab`` stands in
for DeepMind Lab's engine, which cannot be built here; it is the only engine the tests fake.
"""

import sys
import types

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


class FakeLab:
    """Mimics the ``deepmind_lab.Lab`` surface the adapter uses; checks the arguments it receives."""

    instances: list["FakeLab"] = []
    episode_frames = 40

    def __init__(self, level, observations, config=None, renderer="software", level_cache=None):
        assert level.startswith("contributed/dmlab30/")
        assert observations == ["RGB_INTERLEAVED"]
        assert all(isinstance(v, str) for v in config.values())
        self.height, self.width = int(config["height"]), int(config["width"])
        self.running, self.frame, self.seeds, self.actions = False, 0, [], []
        FakeLab.instances.append(self)

    def reset(self, seed=None):
        assert isinstance(seed, int)
        self.seeds.append(seed)
        self.running, self.frame = True, 0

    def observations(self):
        assert self.running, "observations() after the episode ended"
        value = self.frame % 256
        return {"RGB_INTERLEAVED": np.full((self.height, self.width, 3), value, dtype=np.uint8)}

    def step(self, action, num_steps=1):
        assert self.running and action.dtype == np.intc and action.shape == (7,)
        self.actions.append((tuple(action.tolist()), num_steps))
        self.frame += num_steps
        if self.frame >= self.episode_frames:
            self.running = False
        return float(num_steps)  # one point per frame

    def is_running(self):
        return self.running

    def close(self):
        self.running = False


@pytest.fixture
def fake_lab(monkeypatch):
    FakeLab.instances = []
    monkeypatch.setitem(sys.modules, "deepmind_lab", types.SimpleNamespace(Lab=FakeLab))
    return FakeLab


CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")],
)


@pytest.fixture(params=["cpu", CUDA])
def device(request) -> torch.device:
    """Every test that takes ``device`` runs on the CPU and, where one is present, on CUDA
    (``pytest -m cuda`` selects the CUDA runs; scripts/gpu_check.sh runs them)."""
    return torch.device(request.param)
