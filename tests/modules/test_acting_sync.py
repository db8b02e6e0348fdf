"""The acting path (one policy step per env step, no autograd) makes no host synchronisation.

On a GPU every tensor → Python conversion (``bool(t)``, ``t.item()``, ``int(t)``, ...) waits for the
device; in the acting loop that would stall every env step. On the CPU the guard below fails on any
such conversion inside the policy call, so the check runs here too; on CUDA,
``torch.cuda.set_sync_debug_mode("error")`` also catches the syncs that are not Python conversions
(``nonzero``, boolean-mask indexing).
"""

from contextlib import contextmanager

import pytest
import torch
from tensordict import TensorDict

from rtrl_modules.modules import ELSTMModule, IndRNNModule, LRUModule, SRUModule, make_agent

CONVERSIONS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy")


@contextmanager
def no_host_sync(monkeypatch, device: torch.device):
    """Fail on any tensor → Python conversion (and, on CUDA, on any synchronising op)."""

    def refuse(name):
        def conversion(self, *args, **kwargs):
            raise AssertionError(f"host synchronisation in the acting path: Tensor.{name}")

        return conversion

    with monkeypatch.context() as patch:
        for name in CONVERSIONS:
            patch.setattr(torch.Tensor, name, refuse(name))
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")


def test_the_guard_catches_a_conversion(monkeypatch):
    with pytest.raises(AssertionError, match="Tensor.__bool__"):
        with no_host_sync(monkeypatch, torch.device("cpu")):
            bool(torch.ones(1).all())


@pytest.mark.parametrize("cls", [ELSTMModule, IndRNNModule, LRUModule, SRUModule])
def test_recurrent_module_steps_without_host_sync(cls, device, monkeypatch):
    module = cls(3, 5, in_key="x", out_key="y").to(device)
    state = torch.zeros(4, 5, device=device)
    for t in range(3):
        td = TensorDict(
            x=torch.randn(4, 3, device=device),
            is_init=torch.tensor([[t == 0]] * 4, device=device),
            recurrent_state=state,
            batch_size=[4],
            device=device,
        )
        with torch.no_grad(), no_host_sync(monkeypatch, device):
            module(td)
        state = td["next", "recurrent_state"]
    assert state.abs().sum() > 0


@pytest.mark.parametrize("observation_shape", [(7,), (3, 16, 16)], ids=["vector", "pixels"])
def test_agent_policy_acts_without_host_sync(observation_shape, device, monkeypatch):
    """The whole actor: stem, previous reward, eLSTM step, heads, Categorical sampling."""
    agent = make_agent(observation_shape, num_actions=4, hidden_size=8, embed_size=12, channels=(4, 4, 4))
    actor = agent.actor.to(device)
    pixels = len(observation_shape) == 3
    observation = torch.randint(0, 255, (5, *observation_shape), device=device)
    keys = {
        "pixels" if pixels else "observation": observation.to(torch.uint8 if pixels else torch.float32),
        "prev_reward": torch.zeros(5, 1, device=device),
        "is_init": torch.ones(5, 1, dtype=torch.bool, device=device),
    }
    state_key = agent.core.in_keys[1]
    td = TensorDict(keys, batch_size=[5], device=device).set(state_key, torch.zeros(5, 8, device=device))
    with torch.no_grad(), no_host_sync(monkeypatch, device):
        actor(td)
    assert td["action"].shape == (5,)
