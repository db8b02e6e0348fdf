"""Atari and ProcGen on the real engines (envpool): specs, episode boundaries, no reset transitions."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs.utils import RandomPolicy, check_env_specs

from rtrl_modules.envs import make_env, make_eval_env
from rtrl_modules.envs.procgen import PROCGEN_GAMES

# ----------------------------------------------------------------------------------------- Atari


def test_atari_specs_and_preprocessing():
    env = make_env("atari", "Pong", num_envs=2)
    check_env_specs(env)
    td = env.reset()
    assert td["pixels"].shape == (2, 4, 84, 84) and td["pixels"].dtype == torch.uint8
    assert env.action_spec.space.n == 6 and env.action_spec.dtype == torch.int64  # minimal action set
    assert make_env("atari", "PongNoFrameskip-v4", 1, full_action_space=True).action_spec.space.n == 18
    rgb = make_env("atari", "ms_pacman", 1, grayscale=False, frame_stack=2, sticky_actions=0.25)
    assert rgb.reset()["pixels"].shape == (1, 6, 84, 84)


def fire(td: TensorDict) -> TensorDict:
    """Always FIRE in Breakout: relaunches the ball and loses a life every ~24 steps."""
    return td.set("action", torch.ones(td.batch_size, dtype=torch.long))


def test_atari_episodic_life_and_game_over_resets():
    env = make_env("atari", "Breakout", num_envs=2, episodic_life=True, seed=1)
    td = env.rollout(150, fire, break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    lives, next_lives = td["lives"], td["next", "lives"]
    # a lost life ends the (training) episode but the game goes on: lives never go up inside a transition
    assert done.sum() >= 5
    assert (next_lives <= lives).all()
    assert (lives[:, 1:][done[:, :-1]] < 5).any()  # reset after a life loss keeps playing the same game
    assert torch.equal(td["is_init"].squeeze(-1), td["step_count"].squeeze(-1) == 0)
    # a game over restarts the game: 5 lives again after the reset
    game_over = done & (next_lives == 0)
    assert game_over.any()
    assert (lives[:, 1:][game_over[:, :-1]] == 5).all()


def test_atari_eval_env_plays_full_games():
    env = make_eval_env("atari", "Breakout", num_envs=1, seed=2)
    td = env.rollout(150, fire, break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    assert done.any() and (td["next", "lives"][done] == 0).all()  # episodes end only at game over
    assert td["next", "step_count"][done].min() > 100


def test_atari_step_after_done_without_reset_is_refused():
    base = make_env("atari", "Breakout", num_envs=1, seed=0).base_env
    base.reset()
    action = TensorDict({"action": torch.tensor([3])}, batch_size=[1])
    while not base.step(action)["next", "done"].all():  # a life is lost within ~30 steps
        pass
    with pytest.raises(RuntimeError, match="reset"):  # would be envpool's auto-reset transition
        base.step(action)


def test_atari_bad_game():
    with pytest.raises(ValueError, match="valid choices.*'pong'"):
        make_env("atari", "Pongg")


# ---------------------------------------------------------------------------------------- ProcGen


def test_procgen_specs():
    env = make_env("procgen", "chaser", num_envs=2, distribution_mode="hard")
    check_env_specs(env)
    td = env.reset()
    assert td["pixels"].shape == (2, 3, 64, 64) and td["pixels"].dtype == torch.uint8
    assert env.action_spec.space.n == 15
    assert td["level_seed"].dtype == torch.int64


def test_procgen_all_games_and_modes_build():
    for game, modes in PROCGEN_GAMES.items():
        env = make_env("procgen", game, 1, distribution_mode=modes[-1])
        assert env.reset()["pixels"].shape == (1, 3, 64, 64)
        env.close()
    assert len(PROCGEN_GAMES) == 16
    with pytest.raises(ValueError, match="valid choices: 'easy', 'extreme', 'hard'"):
        make_env("procgen", "chaser", distribution_mode="memory")
    with pytest.raises(ValueError, match="valid choices.*'starpilot'"):
        make_env("procgen", "pacman")
    with pytest.raises(ValueError, match="level set"):
        make_env("procgen", "maze", level_set="test_9999")


@pytest.mark.parametrize(
    "options, low, high",
    [
        ({"level_set": "train"}, 0, 500),
        ({"level_set": "test_1200"}, 1200, 1400),
        ({"start_level": 1400, "num_levels": 1}, 1400, 1401),
    ],
)
def test_procgen_level_sets_and_no_reset_transitions(options, low, high):
    env = make_env("procgen", "leaper", num_envs=2, distribution_mode="easy", seed=0, **options)
    up = 5  # always jumping up ends Leaper episodes within ~10-40 steps
    td = env.rollout(
        150, lambda td: td.set("action", torch.full(td.batch_size, up)), break_when_any_done=False
    )
    seeds = td["level_seed"]
    assert (seeds >= low).all() and (seeds < high).all()
    done = td["next", "done"].squeeze(-1)
    assert done.any()
    # no envpool auto-reset transition: a level never changes inside a transition ...
    assert torch.equal(td["level_seed"], td["next", "level_seed"])
    # ... only across TorchRL resets, which start a new episode (is_init)
    changed = td["level_seed"][:, 1:] != td["level_seed"][:, :-1]
    assert (done[:, :-1] | ~changed).all()
    assert torch.equal(td["is_init"].squeeze(-1), td["step_count"].squeeze(-1) == 0)
    if high - low > 1:
        assert len(seeds.unique()) > 2  # resets serve new levels


def test_procgen_collector_random_policy():
    env = make_env("procgen", "leaper", num_envs=2, distribution_mode="easy")
    collector = Collector(env, RandomPolicy(env.action_spec), frames_per_batch=64, total_frames=128)
    for batch in collector:
        assert batch["pixels"].shape == (2, 32, 3, 64, 64)
        assert torch.equal(batch["level_seed"], batch["next", "level_seed"])
        assert torch.equal(batch["is_init"].squeeze(-1), batch["step_count"].squeeze(-1) == 0)
    collector.shutdown()


def test_procgen_missing_qt_gives_clear_error(monkeypatch):
    import envpool.procgen

    monkeypatch.setattr(
        envpool.procgen, "_PROCGEN_IMPORT_ERROR", ImportError("libQt5Gui.so.5: cannot open"), raising=False
    )
    with pytest.raises(ImportError, match="apt-get install -y libqt5gui5"):
        make_env("procgen", "maze", 1)


def test_procgen_multi_task_games_side_by_side():
    """Official --multi_env: one agent trained on several games at once (here 3 of the 6 memory games)."""
    from rtrl_modules.envs.procgen import PROCGEN_MEMORY_GAMES

    games = "+".join(PROCGEN_MEMORY_GAMES[:3])
    env = make_env("procgen", games, num_envs=6, distribution_mode="memory", level_set="train")
    check_env_specs(env)
    td = env.rollout(60, RandomPolicy(env.action_spec), break_when_any_done=False)
    assert td["pixels"].shape == (6, 60, 3, 64, 64) and env.action_spec.space.n == 15
    assert td["game"][:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert ((td["level_seed"] >= 0) & (td["level_seed"] < 500)).all()
    # each block shows its own game: the blocks' first frames differ from each other
    first = td["pixels"][:, 0].float()
    assert not torch.equal(first[0], first[2]) and not torch.equal(first[2], first[4])
    env.close()
    with pytest.raises(ValueError, match="not a multiple of 3"):
        make_env("procgen", games, num_envs=4, distribution_mode="memory")
