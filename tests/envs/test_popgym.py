"""popgym through one vectorised TorchRL wrapper."""

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.envs.utils import RandomPolicy, check_env_specs

from rtrl_modules.envs import make_env


@pytest.mark.parametrize("task", ["RepeatFirst", "RepeatPrevious", "CountRecall", "Autoencode"])
@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_tasks_build(task, difficulty):
    env = make_env("popgym", task, num_envs=2, difficulty=difficulty)
    td = env.reset()
    assert td["observation"].dtype == torch.float32 and td["observation"].shape[0] == 2
    assert env.action_spec.shape == (2,) and env.action_spec.dtype == torch.int64
    assert td["is_init"].all()


def test_specs_and_episode_boundaries():
    env = make_env("popgym", "repeat_previous_easy", num_envs=2, antialias=True, seed=0)
    check_env_specs(env)
    td = env.rollout(120, RandomPolicy(env.action_spec), break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    assert done[:, 50].all() and done[:, 101].all() and done.sum() == 4  # 51-step episodes
    first_flag = td["observation"][..., -1] == 1  # popgym's "first step" flag
    assert torch.equal(first_flag, td["is_init"].squeeze(-1))
    assert (td["next", "observation"][..., -1] == 0).all()  # final observations kept in "next"
    assert torch.equal(td["is_init"].squeeze(-1), td["step_count"].squeeze(-1) == 0)


def test_collector_random_policy():
    env = make_env("popgym", "CountRecall", num_envs=2, difficulty="easy")
    collector = Collector(env, RandomPolicy(env.action_spec), frames_per_batch=120, total_frames=240)
    for batch in collector:
        assert batch.batch_size == (2, 60)
        assert torch.equal(batch["is_init"].squeeze(-1), batch["step_count"].squeeze(-1) == 0)
    collector.shutdown()


def test_bad_input():
    with pytest.raises(ValueError, match="valid choices.*'RepeatFirst'"):
        make_env("popgym", "RepeatLast")
    with pytest.raises(ValueError, match="valid choices.*'medium'"):
        make_env("popgym", "RepeatFirst", difficulty="insane")
