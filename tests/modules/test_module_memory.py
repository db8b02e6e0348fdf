"""Rollouts hold no per-step sensitivities; the learner's carried store is O(B·N·D)."""

import torch
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torchrl.collectors import Collector
from torchrl.envs import InitTracker, TransformedEnv
from torchrl.modules import set_recurrent_mode

from rtrl_modules.envs import DelayedCueEnv
from rtrl_modules.modules import make_recurrent_module

B, T, N = 32, 100, 16


def rollout_bytes(kind):
    torch.manual_seed(0)
    env = TransformedEnv(DelayedCueEnv(B, delay=5), InitTracker())
    obs = env.observation_spec["observation"].shape[-1]
    rec = make_recurrent_module(kind, obs, N, in_key="observation", out_key="features")
    policy = Seq(rec, Mod(lambda f: f[..., :2].argmax(-1), ["features"], ["action"]))
    env.append_transform(rec.make_tensordict_primer())
    collector = Collector(env, policy, frames_per_batch=B * T, total_frames=B * T)
    data = next(iter(collector))
    collector.shutdown()
    assert data.batch_size == (B, T)
    leaves = data.items(include_nested=True, leaves_only=True)
    keys = [str(k) for k, _ in leaves]
    assert not any("sensitivity" in k for k in keys), keys
    return sum(v.numel() * v.element_size() for _, v in data.items(True, True)), data, rec


def test_rollout_with_rtrl_takes_the_bytes_of_the_tbptt_rollout():
    rtrl_bytes, data, rec = rollout_bytes("rtrl")
    tbptt_bytes, _, _ = rollout_bytes("tbptt")
    assert abs(rtrl_bytes - tbptt_bytes) <= 0.05 * tbptt_bytes, (rtrl_bytes, tbptt_bytes)
    # What one per-step copy of the sensitivities would have cost: far more than the whole rollout.
    per_step_sens = B * T * sum(s.numel() for s in rec.core.sensitivity_shapes().values()) * 4
    assert per_step_sens > 2 * rtrl_bytes

    # The learner's store after training on the batch: O(B·N·D), independent of T.
    with set_recurrent_mode(True):
        out = rec(data.exclude("features").clone())["features"]
    out.sum().backward()
    d = rec.input_size
    sens_elems = 2 * N * d + 4 * N  # Z, F [2N, D]; w_z, w_f, b_z, b_f [2, N] x 2
    # start + end banks, start_c + end_c, five bool flags and the int64 last-use counter per slot
    expected = 2 * B * sens_elems * 4 + 2 * B * N * 4 + 5 * B + 8 * B
    assert rec.carried.nbytes() == expected
