"""Helpers for ``test_pipelines.py``: float64 CartPole agents around an RTRL module, and a reference
recurrent module that computes the same recurrent-mode outputs by plain autograd (no RTRL code).

The reference (:class:`ReferenceModule`) shares the RTRL module's core (the same parameters) and has
its keys, so a TorchRL loss built on a copy of the agent with the reference in place of the RTRL
module runs the same calls on the same data. Each of its segment starts is either

* an ``is_init`` step: the state restarts from the stored state as a constant (zeros at a real reset:
  exact; a non-zero state, e.g. a replay slice start: the stored-state truncated gradient), or
* a row's t = 0 without ``is_init``: if the stored state is the actor's state at the end (or the
  start) of a segment the reference already ran with gradients, the state is that segment's
  *differentiable* reference state, so the gradient flows back to the episode start (full BPTT);
  otherwise the stored state as a constant (truncated).

The tests predict independently, from the data, which starts the RTRL module must report as exact
and which as truncated; the reference then gives the gradient each of those must have.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictModuleBase
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torchrl.data import Unbounded
from torchrl.envs import GymEnv, InitTracker, SerialEnv, TensorDictPrimer, TransformedEnv
from torchrl.modules import ProbabilisticActor, QValueModule
from torchrl.modules.tensordict_module.rnn import recurrent_mode

from rtrl_modules.core import bptt_reference
from rtrl_modules.modules import ELSTMModule, TruncatedGradientWarning
from rtrl_modules.modules.carry import TRUNCATION_CAUSES

OBS, EMBED, HIDDEN, ACTIONS = 4, 8, 6, 2
STATE = "recurrent_state"


class ToDouble(nn.Module):
    """CartPole's float32 observation as float64 (a picklable stem layer for worker processes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def primer() -> TensorDictPrimer:
    """The float64 state primer (what ``rec.make_tensordict_primer()`` of a float64 module gives)."""
    return TensorDictPrimer({STATE: Unbounded(shape=(HIDDEN,), dtype=torch.float64)}, expand_specs=True)


def make_env(num_envs: int | None = None, categorical: bool = True):
    """CartPole-v1 (a SerialEnv of ``num_envs`` if given) + InitTracker + the float64 primer."""

    def base():
        return GymEnv("CartPole-v1", categorical_action_encoding=categorical)

    env = base() if num_envs is None else SerialEnv(num_envs, base)
    env = TransformedEnv(env, InitTracker())
    env.append_transform(primer())
    return env


def make_serial_env_2():
    """Picklable env factory for worker processes: two CartPoles in a SerialEnv."""
    return make_env(2)


def make_single_env():
    """Picklable env factory for worker processes: one CartPole."""
    return make_env()


class Agent:
    """Stem (obs -> embed), ELSTMModule (embed -> features) and heads, float64, seeded.

    ``policy``/``critic``/``qnet`` use the RTRL module; ``reference()`` returns the same networks with
    a :class:`ReferenceModule` sharing the core (and the stem and heads) in its place.
    """

    def __init__(self, seed: int = 0, **module_kwargs) -> None:
        torch.manual_seed(seed)
        self.stem = Mod(
            nn.Sequential(ToDouble(), nn.Linear(OBS, EMBED), nn.Tanh()), ["observation"], ["embed"]
        )
        self.rec = ELSTMModule(EMBED, HIDDEN, in_key="embed", out_key="features", **module_kwargs)
        self.policy_head = Mod(nn.Linear(HIDDEN, ACTIONS), ["features"], ["logits"])
        self.value_head = Mod(nn.Linear(HIDDEN, 1), ["features"], ["state_value"])
        self.q_head = Mod(nn.Linear(HIDDEN, ACTIONS), ["features"], ["action_value"])
        for m in (self.stem, self.rec, self.policy_head, self.value_head, self.q_head):
            m.double()
        self.calls = 0  # recurrent-mode calls of the RTRL module (any grad mode)
        self.rec.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        if module.recurrent_mode:
            self.calls += 1

    def policy(self, rec=None):
        return ProbabilisticActor(
            Seq(self.stem, rec or self.rec, self.policy_head),
            in_keys=["logits"],
            distribution_class=torch.distributions.Categorical,
            return_log_prob=True,
        )

    def critic(self, rec=None):
        return Seq(self.stem, rec or self.rec, self.value_head)

    def qnet(self, action_spec, rec=None):
        return Seq(self.stem, rec or self.rec, self.q_head, QValueModule(spec=action_spec))

    def reference(self, carry: bool = True) -> ReferenceModule:
        return ReferenceModule(self.rec, carry)

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        return self.stem.module(obs)


def _key(state: torch.Tensor) -> tuple[float, ...]:
    return tuple(state.tolist())  # float64 -> Python floats: a bit-exact key


class ReferenceModule(TensorDictModuleBase):
    """Recurrent-mode stand-in for an RTRL module, by plain autograd (``bptt_reference``).

    Shares ``rec.core`` and its keys; its ``("next", state)`` output is the RTRL module's (computed
    without autograd, which touches nothing). ``chain`` maps the actor's state (bit-exact) at the
    start and end of every segment this module ran with gradients to its differentiable reference
    state there; ``lookups`` counts the t = 0 starts that used it (full BPTT across segments).
    With ``carry=False`` it never does (every t = 0 start is a constant: the test's control).
    """

    def __init__(self, rec, carry: bool = True) -> None:
        super().__init__()
        self.carry = carry  # False: every t = 0 start is a constant (a truncated reference)
        self.core = rec.core
        self._rec = [rec]  # not a submodule: its parameters are the core's
        self.in_keys = list(rec.in_keys[:3])
        self.out_keys = list(rec.out_keys)
        self.value_key, self.state_key, self.is_init_key = self.in_keys
        self.chain: dict[tuple[float, ...], torch.Tensor] = {}
        self.lookups = 0

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if not recurrent_mode():
            raise RuntimeError("ReferenceModule only runs in recurrent mode (inside a TorchRL loss)")
        shape = tensordict.shape
        td = tensordict.unsqueeze(0) if tensordict.ndim == 1 else tensordict.reshape(-1, shape[-1])
        x = td.get(self.value_key)
        is_init = td.get(self.is_init_key).reshape(*td.shape)
        stored = td.get(self.state_key, None)
        if stored is None:
            stored = x.new_zeros(*td.shape, self.core.hidden_size)
        stored = stored.detach()
        grads = torch.is_grad_enabled() and any(p.requires_grad for p in self.core.parameters())

        starts, exact_start = [], []
        for b in range(td.shape[0]):
            key = _key(stored[b, 0])
            if grads and self.carry and not bool(is_init[b, 0]) and key in self.chain:
                starts.append(self.chain[key])
                exact_start.append(True)
                self.lookups += 1
            else:  # a constant (replaced by the restart value where is_init)
                starts.append(stored[b, 0])
                exact_start.append(bool(is_init[b, 0]) and not bool(stored[b, 0].any()))
        c0 = torch.stack(starts)
        out, c_end = bptt_reference(self.core, x, is_init, c0=c0, restart=stored)

        nxt = td.get(self.out_keys[1], None)
        if grads:
            for b in range(td.shape[0]):
                later = is_init[b, 1:].nonzero().flatten()
                if later.numel():
                    exact_tail = not bool(stored[b, int(later[-1]) + 1].any())
                else:
                    exact_tail = exact_start[b]
                if exact_start[b] and not bool(is_init[b, 0]):
                    self.chain[_key(stored[b, 0])] = c0[b]
                if exact_tail and nxt is not None and bool(nxt[b, -1].any()):  # not a padded end
                    self.chain[_key(nxt[b, -1].detach())] = c_end[b]
        td.set(self.out_keys[0], out)
        # ("next", state) is no gradient path: write what the RTRL module writes (its calls without
        # autograd touch nothing), so later views of the data (step_mdp) are the same in both passes.
        with torch.no_grad():
            mirror = self._rec[0](td.select(*self.in_keys, *self.out_keys[1:], strict=False).clone())
        td.set(self.out_keys[1], mirror.get(self.out_keys[1]))
        if td is not tensordict:
            tensordict.update(td.reshape(shape))
        return tensordict


def loss_total(losses: TensorDictBase) -> torch.Tensor:
    return sum(v for k, v in losses.items() if k.startswith("loss_"))


def grads_of(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in modules.items():
        for pname, p in module.named_parameters():
            assert p.grad is not None, f"{name}.{pname} got no gradient"
            out[f"{name}.{pname}"] = p.grad.clone()
    return out


def zero_grads(*modules: nn.Module) -> None:
    for m in modules:
        for p in m.parameters():
            p.grad = None


def assert_grads_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], tol: float = 1e-9):
    assert got.keys() == want.keys()
    for name, g in want.items():
        assert g.abs().sum() > 0, f"{name}: zero reference gradient (the test would have no teeth)"
        err = float((got[name] - g).norm() / g.norm())
        assert err <= tol, (name, err)


def predicted_starts(td: TensorDictBase, continuing: torch.Tensor | None = None) -> dict[str, int]:
    """Segment starts a gradient-enabled recurrent-mode call on ``td`` [..., B, T] must report.

    Every ``is_init`` step is a start: exact on a zero stored state (an episode start), truncated
    ("restart") on a non-zero one. Each row's t = 0 without ``is_init`` is exact where ``continuing``
    [B] says the row continues (or repeats) a segment trained before, else truncated ("unknown").
    """
    flat = td.reshape(-1, td.shape[-1])
    is_init = flat["is_init"].reshape(*flat.shape)
    nonzero = flat[STATE].ne(0).any(-1)
    middle = ~is_init[:, 0]
    if continuing is None:
        continuing = torch.zeros_like(middle)
    continuing = continuing.reshape(-1)
    exact = int((is_init & ~nonzero).sum()) + int((middle & continuing).sum())
    unknown = int((middle & ~continuing).sum())
    restart = int((is_init & nonzero).sum())
    return {"exact": exact, "truncated": unknown + restart, "restart": restart, "unknown": unknown}


def reported(rec) -> dict[str, int]:
    """The same numbers as the module reports them (``ambiguous`` must stay 0)."""
    assert rec.truncation_causes["ambiguous"] == 0, rec.truncation_causes
    return {**rec.segment_starts, "restart": rec.truncation_causes["restart"],
            "unknown": rec.truncation_causes["unknown"]}  # fmt: skip


def check_warnings(caught: list, before: dict[str, int], after: dict[str, int]) -> None:
    """The TruncatedGradientWarnings ``caught`` between two ``reported`` snapshots: one for each
    cause first seen in between (the module warns once per cause), none for anything else."""
    messages = [str(w.message) for w in caught if issubclass(w.category, TruncatedGradientWarning)]
    for cause in ("restart", "unknown"):
        new = before[cause] == 0 and after[cause] > 0
        warned = [m for m in messages if TRUNCATION_CAUSES[cause] in m]
        assert len(warned) == int(new), (cause, before, after, messages)
    assert len(messages) == sum(before[c] == 0 < after[c] for c in ("restart", "unknown")), messages


def add(a: dict[str, int], b: dict[str, int], times: int = 1) -> dict[str, int]:
    return {k: a.get(k, 0) + times * b.get(k, 0) for k in set(a) | set(b)}


def continuing_rows(batches: list[TensorDictBase]) -> list[torch.Tensor]:
    """For consecutive on-policy batches trained in order: [B] per batch, the rows whose t = 0 (not
    ``is_init``) continues, bit for bit, the actor's end state of an exact row of the previous batch.

    A row is exact if it starts an episode or continues; its end is usable only if it is a real
    step (split_trajs pads short rows: their last ``("next", state)`` is padding).
    """
    out, ends = [], set()
    for batch in batches:
        rows = batch.reshape(-1, batch.shape[-1])
        is_init = rows["is_init"].reshape(*rows.shape)
        starts = rows[STATE][:, 0]
        cont = torch.tensor([_key(c) in ends for c in starts], dtype=torch.bool) & ~is_init[:, 0]
        out.append(cont)
        mask = rows.get(("collector", "mask"), None)
        real_end = torch.ones_like(cont) if mask is None else mask.reshape(*rows.shape)[:, -1]
        # On-policy resets inside a row are episode starts (zero state): the row's end is exact too.
        exact = (is_init[:, 0] & ~starts.ne(0).any(-1)) | cont | is_init[:, 1:].any(-1)
        ends = {_key(c) for c, e, r in zip(rows["next", STATE][:, -1], exact, real_end) if e and r}
    return out


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """Largest relative error over the parameters."""
    return max(float((got[n] - w).norm() / w.norm()) for n, w in want.items())
