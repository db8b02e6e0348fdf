"""make_env / make_eval_env / evaluate: choices, options, greedy evaluation."""

import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import RandomPolicy
from torchrl.modules import ProbabilisticActor

from rtrl_modules.envs import SUITES, evaluate, evaluate_procgen, make_env, make_eval_env


def test_unknown_suite_and_option():
    with pytest.raises(ValueError, match="valid choices: 'atari', 'dmlab', 'memory', 'popgym', 'procgen'"):
        make_env("mujoco", "Ant")
    with pytest.raises(ValueError, match="valid options:.*delay"):
        make_env("memory", "delayed_cue", 2, dealy=10)
    with pytest.raises(ValueError, match="valid options:.*distribution_mode"):
        make_env("procgen", "maze", 1, mode="easy")
    assert SUITES == ("atari", "procgen", "dmlab", "popgym", "memory")


def test_evaluate_greedy_actor_on_memory_task():
    env = make_eval_env("memory", "delayed_cue", num_envs=4, delay=2)

    class CueLogits(torch.nn.Module):
        """Logits that favour the cue channel on every step (right at the cue step only)."""

        def forward(self, obs):
            return 5 * obs[..., :2]

    actor = ProbabilisticActor(
        TensorDictModule(CueLogits(), in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        spec=env.action_spec,
    )
    returns = evaluate(env, actor, num_episodes=10)
    assert returns.shape == (10,)
    # greedy on a blank decision step picks argmax of zeros = action 0: right only when the cue was 0
    assert set(returns.tolist()) <= {-1.0, 1.0}
    random_returns = evaluate(env, RandomPolicy(env.action_spec), num_episodes=8, greedy=False)
    assert random_returns.shape == (8,)


def test_evaluate_needs_factory_env():
    from rtrl_modules.envs import DelayedCueEnv

    env = DelayedCueEnv(2)
    with pytest.raises(ValueError, match="episode_reward"):
        evaluate(env, RandomPolicy(env.action_spec), 2)


def test_evaluate_procgen_level_sets():
    def policy(td):
        return td.set("action", torch.randint(15, td.batch_size))

    results = evaluate_procgen(policy, "leaper", num_envs=2, num_episodes=2, distribution_mode="easy")
    assert set(results) == {"train", "test_1000", "test_1200", "test_1400", "test_mean"}


def test_eval_env_atari_full_games():
    env = make_eval_env("atari", "Pong", 1)
    assert env.base_env.episodic_life is False
    assert make_env("atari", "Pong", 1).base_env.episodic_life is True


def test_evaluation_protocol_episode_counts():
    from rtrl_modules.envs import evaluation_plan
    from rtrl_modules.envs.procgen import PROCGEN_LEVEL_SETS

    official = evaluation_plan("procgen", "official")  # full_test: 200 levels from 0, 1000, 1200, 1400
    assert [(p.name, p.episodes) for p in official] == [
        ("train_200", 200), ("test_1000", 200), ("test_1200", 200), ("test_1400", 200)
    ]  # fmt: skip
    assert [PROCGEN_LEVEL_SETS[p.options["level_set"]] for p in official] == [
        (0, 200), (1000, 200), (1200, 200), (1400, 200)
    ]  # fmt: skip
    assert [(p.episodes, p.options) for p in evaluation_plan("dmlab", "official")] == [
        (100, {"run": 0}), (100, {"run": 1}), (100, {"run": 2})
    ]  # fmt: skip
    assert sum(p.episodes for p in evaluation_plan("atari", "official")) == 5 * 30
    assert evaluation_plan("procgen", "default", 16)[0].options == {"level_set": "train"}  # 500 levels
    assert [(p.name, p.episodes) for p in evaluation_plan("memory", "official", 7)] == [("", 7)]
    with pytest.raises(ValueError, match="needs num_episodes"):
        evaluation_plan("dmlab")
    with pytest.raises(ValueError, match="valid choices: 'default', 'official'"):
        evaluation_plan("dmlab", "paper", 3)
