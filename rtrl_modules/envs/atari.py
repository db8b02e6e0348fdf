"""Atari 2600 (ALE) through envpool, with the paper's (IMPALA/torchbeast, DeepMind) preprocessing.

Per agent step: the action is repeated ``frame_skip`` = 4 frames and the observation is the max over
the last two raw frames; frames are converted to grey and resized to 84x84 (area interpolation), and
the last ``frame_stack`` = 4 are stacked: ``"pixels"`` uint8 ``[B, 4, 84, 84]``; ``"lives"`` int64 ``[B]``.
Episodes start with 1..``noop_max`` (30) no-ops and FIRE where the game needs it. ``episodic_life``
(training only) ends an episode at every lost life while the game goes on. Rewards are raw (clip in
the loss).
"""

from __future__ import annotations

import os

from rtrl_modules.envs._common import check_choice
from rtrl_modules.envs._envpool import EnvPoolEnv, import_envpool

__all__ = ["atari_games", "make_atari"]


def atari_games() -> dict[str, str]:
    """Map of accepted game names (lower case, no ``_``) to envpool task ids, e.g. ``"mspacman"``."""
    import_envpool()
    from envpool.atari.registration import atari_rom_path

    games = sorted(f[:-4] for f in os.listdir(atari_rom_path) if f.endswith(".bin"))
    return {g.replace("_", ""): "".join(w.capitalize() for w in g.split("_")) + "-v5" for g in games}


def _normalize(game: str) -> str:
    name = game
    for suffix in ("NoFrameskip-v4", "NoFrameskip-v0", "-v5", "-v4", "-v0"):
        name = name.removesuffix(suffix)
    return name.removeprefix("ALE/").replace("_", "").replace("-", "").lower()


def make_atari(
    game: str,
    num_envs: int = 1,
    *,
    seed: int = 0,
    frame_skip: int = 4,
    frame_stack: int = 4,
    noop_max: int = 30,
    episodic_life: bool = True,
    sticky_actions: float = 0.0,
    full_action_space: bool = False,
    max_episode_steps: int = 27000,
    image_size: int = 84,
    grayscale: bool = True,
    fire_reset: bool = True,
) -> EnvPoolEnv:
    """Batched Atari env (no TorchRL transforms; use ``make_env("atari", ...)`` for those).

    Args:
        game: e.g. ``"Pong"``, ``"MsPacman"``, ``"ms_pacman"``, ``"BreakoutNoFrameskip-v4"``.
        num_envs: batch size B.
        seed: engine seed.
        frame_skip: action repeat (max-pool over the last two frames).
        frame_stack: number of stacked frames C.
        noop_max: up to this many no-ops at episode start (0 disables).
        episodic_life: lost life = terminated (training); ``False`` for evaluation.
        sticky_actions: probability of repeating the previous action (0 = paper; 0.25 = Machado et al.).
        full_action_space: 18 actions instead of the game's minimal set.
        max_episode_steps: agent steps before truncation (27000 = 108k frames).
        image_size: square side of the resized frame.
        grayscale: grey (1 channel per frame) or RGB (3 channels per frame).
        fire_reset: press FIRE after reset in games that need it.

    Returns:
        ``EnvPoolEnv`` with ``"pixels"`` uint8 ``[B, C, image_size, image_size]``.
    """
    games = atari_games()
    key = _normalize(game)
    if key not in games:
        check_choice("Atari game", game, sorted(games))
    if not 0.0 <= sticky_actions <= 1.0:
        raise ValueError(f"sticky_actions must be a probability, got {sticky_actions}")
    return EnvPoolEnv(
        games[key],
        num_envs,
        seed=seed,
        info_keys=("lives",),
        episodic_life=episodic_life,  # done in EnvPoolEnv: envpool's own would restart the game on reset
        frame_skip=frame_skip,
        stack_num=frame_stack,
        noop_max=noop_max,
        repeat_action_probability=sticky_actions,
        full_action_space=full_action_space,
        max_episode_steps=max_episode_steps,
        img_height=image_size,
        img_width=image_size,
        gray_scale=grayscale,
        use_fire_reset=fire_reset,
        reward_clip=False,
    )
