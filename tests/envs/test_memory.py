"""Native torch memory tasks: timeline, rewards, partial resets, collector rollouts, bad input."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs.utils import RandomPolicy, check_env_specs

from rtrl_modules.envs import DelayedCueEnv, make_env


def oracle(td: TensorDict) -> TensorDict:
    """Remembers the cue seen at t = 0 (in a plain attribute) and always answers it."""
    obs = td["observation"]
    k = (obs.shape[-1] - 1) // 2
    shown = obs[..., :k].sum(-1) > 0
    oracle.cue = torch.where(shown, obs[..., :k].argmax(-1), oracle.cue)
    td["action"] = oracle.cue.clone()
    return td


def test_specs_shapes_dtypes():
    env = make_env("memory", "delayed_cue", num_envs=3, delay=5, num_cues=3)
    check_env_specs(env)
    td = env.reset()
    assert td["observation"].shape == (3, 7) and td["observation"].dtype == torch.float32
    assert env.action_spec.shape == (3,) and env.action_spec.space.n == 3
    assert td["is_init"].all() and td["is_init"].shape == (3, 1)


@pytest.mark.parametrize("delay", [0, 3, 20])
def test_timeline_and_rewards(delay):
    env = make_env("memory", "delayed_cue", num_envs=4, delay=delay)
    oracle.cue = torch.zeros(4, dtype=torch.long)
    td = env.rollout(3 * (delay + 2), oracle, break_when_any_done=False)
    obs, done = td["observation"], td["next", "done"].squeeze(-1)
    length = delay + 2
    # cue only at t = 0, decision flag only at t = delay + 1, done after the decision step
    assert (obs[:, ::length, :2].sum(-1) == 1).all()
    assert obs[:, :, :2].sum() == obs.shape[0] * 3
    assert (obs[:, delay + 1 :: length, -1] == 1).all() and obs[..., -1].sum() == obs.shape[0] * 3
    assert done[:, length - 1 :: length].all() and done.sum() == obs.shape[0] * 3
    assert (td["next", "reward"].squeeze(-1)[done] == 1).all()
    assert td["next", "reward"].squeeze(-1)[~done].abs().sum() == 0
    assert (td["next", "episode_reward"].squeeze(-1)[done] == 1).all()
    # is_init exactly at episode starts, step_count restarts there
    assert torch.equal(td["is_init"].squeeze(-1), td["step_count"].squeeze(-1) == 0)
    assert (td["is_init"].squeeze(-1)[:, ::length]).all()


def test_wrong_answer_and_variable_delay():
    env = make_env("memory", "delayed_cue", num_envs=8, delay=(2, 9), wrong_reward=0.0, seed=3)

    def anti(td):
        oracle(td)
        td["action"] = 1 - td["action"]
        return td

    oracle.cue = torch.zeros(8, dtype=torch.long)
    td = env.rollout(60, anti, break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    assert (td["next", "reward"].squeeze(-1)[done] == 0).all()
    lengths = td["next", "step_count"].squeeze(-1)[done]
    assert lengths.min() >= 4 and lengths.max() <= 11 and len(lengths.unique()) > 2


def test_repeat_first_variant():
    env = make_env("memory", "repeat_first", num_envs=2, delay=4)
    oracle.cue = torch.zeros(2, dtype=torch.long)
    td = env.rollout(10, oracle, break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    assert done[:, 4::5].all() and done.sum() == 4
    assert torch.allclose(td["next", "episode_reward"].squeeze(-1)[done], torch.ones(4))


def test_noise_and_distractors():
    env = DelayedCueEnv(64, delay=10, noise=0.1, distractor_prob=0.5)
    td = env.rollout(5, break_when_any_done=False)
    blank = td["observation"][:, 1:]
    assert blank.std() > 0.05  # noisy
    distractors = (blank[..., 2:4] > 0.5).float().sum(-1)
    assert 0.3 < distractors.mean() < 0.7


def test_collector_random_policy():
    env = make_env("memory", "delayed_cue", num_envs=4, delay=3)
    collector = Collector(env, RandomPolicy(env.action_spec), frames_per_batch=40, total_frames=80)
    for batch in collector:
        assert batch.batch_size == (4, 10)
        is_init, steps = batch["is_init"].squeeze(-1), batch["step_count"].squeeze(-1)
        assert torch.equal(is_init, steps == 0)
        done = batch["next", "done"].squeeze(-1)
        assert done.any() and set(batch["next", "reward"][done].flatten().tolist()) <= {-1.0, 1.0}
    collector.shutdown()


def test_bad_input():
    with pytest.raises(ValueError, match="valid choices.*delayed_cue"):
        make_env("memory", "tmaze_typo")
    with pytest.raises(ValueError, match="delay"):
        DelayedCueEnv(2, delay=(5, 2))
    with pytest.raises(ValueError, match="num_cues"):
        DelayedCueEnv(2, num_cues=1)
    env = DelayedCueEnv(2, delay=0)
    td = env.reset()
    td["action"] = torch.zeros(2, dtype=torch.long)
    env.step(td)
    td = env.step(td)  # t = 1: decision step, done
    with pytest.raises(RuntimeError, match="reset"):
        env.step(td)
    with pytest.raises(ValueError, match="one-hot"):
        env.reset()
        env.step(TensorDict({"action": torch.zeros(2, 2, dtype=torch.long)}, batch_size=[2]))
