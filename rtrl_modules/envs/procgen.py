"""ProcGen through envpool (the ``procgen`` package has no Python 3.11 wheel).

``"pixels"`` uint8 ``[B, 3, 64, 64]`` RGB, 15 actions, no frame skip or stacking (as in the paper and
IMPALA/torchbeast ProcGen setups). ``"level_seed"`` int64 ``[B]`` is the level being played.
Levels: ``num_levels`` levels from ``start_level`` (``num_levels=0``: unlimited).
"""

from __future__ import annotations

from rtrl_modules.envs._common import check_choice
from rtrl_modules.envs._envpool import EnvPoolEnv, import_envpool

__all__ = ["PROCGEN_GAMES", "PROCGEN_LEVEL_SETS", "check_qt", "make_procgen"]

#: game -> distribution modes it has
PROCGEN_GAMES: dict[str, tuple[str, ...]] = {
    "bigfish": ("easy", "hard"),
    "bossfight": ("easy", "hard"),
    "caveflyer": ("easy", "hard", "memory", "exploration"),
    "chaser": ("easy", "hard", "extreme"),
    "climber": ("easy", "hard", "exploration"),
    "coinrun": ("easy", "hard", "exploration"),
    "dodgeball": ("easy", "hard", "extreme", "memory"),
    "fruitbot": ("easy", "hard"),
    "heist": ("easy", "hard", "memory", "exploration"),
    "jumper": ("easy", "hard", "memory", "exploration"),
    "leaper": ("easy", "hard", "extreme", "exploration"),
    "maze": ("easy", "hard", "memory", "exploration"),
    "miner": ("easy", "hard", "memory"),
    "ninja": ("easy", "hard", "exploration"),
    "plunder": ("easy", "hard"),
    "starpilot": ("easy", "hard", "extreme"),
}

#: the paper's split: level set name -> (start_level, num_levels)
PROCGEN_LEVEL_SETS: dict[str, tuple[int, int]] = {
    "train": (0, 500),
    "test_1000": (1000, 200),
    "test_1200": (1200, 200),
    "test_1400": (1400, 200),
}

QT_HINT = (
    "ProcGen (envpool) needs Debian's Qt 5 runtime, which is missing. Install it with: "
    "sudo apt-get install -y libqt5gui5   (scripts/env.sh does this when run as root)"
)


def check_qt() -> None:
    """Raise a clear ``ImportError`` if envpool's ProcGen cannot load (Qt 5 missing)."""
    import_envpool()
    try:
        import envpool.procgen as procgen
    except ImportError as exc:  # pragma: no cover - depends on the system
        raise ImportError(f"{QT_HINT} (loader said: {exc})") from None
    if getattr(procgen, "_PROCGEN_IMPORT_ERROR", None) is not None:
        raise ImportError(f"{QT_HINT} (loader said: {procgen._PROCGEN_IMPORT_ERROR})") from None


def make_procgen(
    game: str,
    num_envs: int = 1,
    *,
    seed: int = 0,
    distribution_mode: str = "hard",
    num_levels: int = 0,
    start_level: int = 0,
    level_set: str | None = None,
    use_sequential_levels: bool = False,
    use_backgrounds: bool = True,
    restrict_themes: bool = False,
    use_monochrome_assets: bool = False,
    center_agent: bool = True,
    paint_vel_info: bool = False,
) -> EnvPoolEnv:
    """Batched ProcGen env (no TorchRL transforms; use ``make_env("procgen", ...)`` for those).

    Args:
        game: one of ``PROCGEN_GAMES`` (case-insensitive).
        num_envs: batch size B.
        seed: engine seed (which levels are drawn from the level set).
        distribution_mode: easy, hard, extreme, memory or exploration, where the game has it.
        num_levels, start_level: the level set (``num_levels=0``: unlimited).
        level_set: a named set from ``PROCGEN_LEVEL_SETS`` (overrides num_levels/start_level).
        other options: ProcGen's own flags.

    Returns:
        ``EnvPoolEnv`` with ``"pixels"`` uint8 ``[B, 3, 64, 64]`` and ``"level_seed"`` int64 ``[B]``.
    """
    name = game.lower()
    check_choice("ProcGen game", name, PROCGEN_GAMES)
    mode = distribution_mode.lower()
    check_choice(f"distribution mode for {name}", mode, PROCGEN_GAMES[name])
    if level_set is not None:
        check_choice("ProcGen level set", level_set, PROCGEN_LEVEL_SETS)
        start_level, num_levels = PROCGEN_LEVEL_SETS[level_set]
    if num_levels < 0 or start_level < 0:
        raise ValueError(f"num_levels and start_level must be >= 0, got {num_levels}, {start_level}")
    check_qt()
    return EnvPoolEnv(
        f"{name.capitalize()}{mode.capitalize()}-v0",
        num_envs,
        seed=seed,
        info_keys=("level_seed",),
        num_levels=num_levels,
        start_level=start_level,
        use_sequential_levels=use_sequential_levels,
        use_backgrounds=use_backgrounds,
        restrict_themes=restrict_themes,
        use_monochrome_assets=use_monochrome_assets,
        center_agent=center_agent,
        paint_vel_info=paint_vel_info,
    )
