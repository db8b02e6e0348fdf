"""DMLab adapter against a fake ``deepmind_lab`` module (the real engine cannot be installed here)."""

import sys

import numpy as np
import pytest
import torch
from torchrl.collectors import Collector
from torchrl.envs.utils import RandomPolicy, check_env_specs

from rtrl_modules.envs import make_env
from rtrl_modules.envs.dmlab import IMPALA_ACTION_SET


def test_specs_actions_and_episodes(fake_lab):
    env = make_env("dmlab", "rooms_watermaze", num_envs=2, seed=0)
    check_env_specs(env)
    td = env.reset()
    assert td["pixels"].shape == (2, 3, 72, 96) and td["pixels"].dtype == torch.uint8
    assert env.action_spec.space.n == 9
    lab = fake_lab.instances[0]  # env 0
    lab.actions.clear()
    td = env.rollout(25, RandomPolicy(env.action_spec), break_when_any_done=False)
    taken = td["action"][0].tolist()
    assert [a for a, _ in lab.actions] == [IMPALA_ACTION_SET[i] for i in taken]
    assert all(n == 4 for _, n in lab.actions)  # action repeat 4
    assert (td["next", "reward"] == 4).all()
    done = td["next", "done"].squeeze(-1)
    assert done[:, 9].all() and done[:, 19].all() and done.sum() == 4  # 40 frames / 4 = 10 steps
    assert torch.equal(td["is_init"].squeeze(-1), td["step_count"].squeeze(-1) == 0)
    assert (td["pixels"][:, 10] == 0).all() and (td["pixels"][:, 11] == 4).all()
    assert len(set(lab.seeds)) == len(lab.seeds) >= 3


def test_collector(fake_lab):
    env = make_env("dmlab", "contributed/dmlab30/rooms_select_nonmatching_object", num_envs=2)
    collector = Collector(env, RandomPolicy(env.action_spec), frames_per_batch=30, total_frames=60)
    for batch in collector:
        assert batch["pixels"].shape == (2, 15, 3, 72, 96)
    collector.shutdown()


def test_bad_level_lists_choices(fake_lab):
    with pytest.raises(ValueError, match="valid choices.*'rooms_keys_doors_puzzle'"):
        make_env("dmlab", "rooms_watermaze_typo")


def test_missing_module_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepmind_lab", None)
    with pytest.raises(ImportError, match="bazel build"):
        make_env("dmlab", "rooms_watermaze")


@pytest.mark.parametrize("frame_pool", ["last", "max"])
def test_frame_pool_max_of_the_last_two_repeated_frames(fake_lab, monkeypatch, frame_pool):
    """Official setting: the max over the last two of the 4 repeated frames. The fake shows a bright
    frame (200) at every third frame of a repeat, so only pooling sees it."""

    def observations(lab):
        value = 200 if lab.frame % 4 == 3 else lab.frame
        return {"RGB_INTERLEAVED": np.full((lab.height, lab.width, 3), value, dtype=np.uint8)}

    monkeypatch.setattr(fake_lab, "observations", observations)
    env = make_env("dmlab", "rooms_watermaze", num_envs=1, frame_pool=frame_pool)
    td = env.rollout(12, RandomPolicy(env.action_spec), break_when_any_done=False)
    pixels = td["next", "pixels"][0, :, 0, 0, 0]  # one value per step
    assert pixels[:3].tolist() == ([200] * 3 if frame_pool == "max" else [4, 8, 12])
    assert (td["next", "reward"] == 4).all()  # the 4 frames' rewards, either way
    steps = [n for _, n in fake_lab.instances[0].actions]
    assert steps[:2] == ([3, 1] if frame_pool == "max" else [4, 4])
    assert td["next", "done"].squeeze(-1)[0, 9]  # still 10 steps per 40-frame episode
    with pytest.raises(ValueError, match="valid choices: 'last', 'max'"):
        make_env("dmlab", "rooms_watermaze", frame_pool="mean")
