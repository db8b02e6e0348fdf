"""ProcGen through envpool (the ``procgen`` package has no Python 3.11 wheel).

``"pixels"`` uint8 ``[B, 3, 64, 64]`` RGB, 15 actions, no frame skip or stacking (as in the paper and
IMPALA/torchbeast ProcGen setups). ``"level_seed"`` int64 ``[B]`` is the level being played.
Levels: ``num_levels`` levels from ``start_level`` (``num_levels=0``: unlimited).

Multi-task training (the official ``--multi_env``): a game list joined by ``+``, e.g.
``"+".join(PROCGEN_MEMORY_GAMES)``, gives a :class:`MultiGameEnv`: the B envs split into equal
blocks, one game each (``"game"`` int64 ``[B]`` says which, by position in the list).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase

from rtrl_modules.envs._common import check_choice, reset_mask
from rtrl_modules.envs._envpool import EnvPoolEnv, import_envpool

__all__ = [
    "PROCGEN_GAMES",
    "PROCGEN_LEVEL_SETS",
    "PROCGEN_EVAL_SETS",
    "PROCGEN_MEMORY_GAMES",
    "MultiGameEnv",
    "check_qt",
    "make_procgen",
]

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

#: the paper's split: level set name -> (start_level, num_levels). Training uses "train" (500
#: levels from 0), validation "valid" (500 from 500); the official final evaluation plays 200
#: episodes on 200 levels from each of 0 ("train_200", the "train" it reports), 1000, 1200, 1400.
PROCGEN_LEVEL_SETS: dict[str, tuple[int, int]] = {
    "train": (0, 500),
    "train_200": (0, 200),
    "valid": (500, 500),
    "test_1000": (1000, 200),
    "test_1200": (1200, 200),
    "test_1400": (1400, 200),
}

#: level sets of the final evaluation, by protocol (see ``rtrl_modules.envs.evaluation_plan``)
PROCGEN_EVAL_SETS: dict[str, tuple[str, ...]] = {
    "default": ("train", "test_1000", "test_1200", "test_1400"),
    "official": ("train_200", "test_1000", "test_1200", "test_1400"),
}

#: the six memory-mode games the official code trains jointly (``--multi_env 6``, memory mode)
PROCGEN_MEMORY_GAMES: tuple[str, ...] = ("dodgeball", "heist", "maze", "miner", "caveflyer", "jumper")

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


class MultiGameEnv(EnvBase):
    """Several same-spec batched envs side by side as one: env rows are the games' rows in order.

    Keys: the games' keys plus ``"game"`` int64 ``[B]`` (index of the row's game).
    """

    def __init__(self, envs: list[EnvBase]) -> None:
        sizes = [env.batch_size[0] for env in envs]
        super().__init__(batch_size=torch.Size([sum(sizes)]), device="cpu")
        self.envs, self._sizes = envs, sizes
        first, bs = envs[0], self.batch_size
        self._game = torch.repeat_interleave(torch.arange(len(envs)), torch.tensor(sizes))
        observation = {k: spec[0].expand(*bs, *spec.shape[1:]) for k, spec in first.observation_spec.items()}
        observation["game"] = Unbounded(shape=bs, dtype=torch.int64)
        self.observation_spec = Composite(observation, shape=bs)
        self.action_spec = first.action_spec[0].expand(*bs)
        self.reward_spec = first.reward_spec[0].expand(*bs, *first.reward_spec.shape[1:])
        self.done_spec = Composite(
            {key: spec[0].expand(*bs, *spec.shape[1:]) for key, spec in first.done_spec.items()}, shape=bs
        )

    def _merge(self, parts: list[TensorDictBase]) -> TensorDictBase:
        out = torch.cat([part.select(*parts[0].keys()) for part in parts], dim=0)
        out.set("game", self._game.clone())
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        full = tensordict is None or tensordict.get("_reset", None) is None
        masks = reset_mask(tensordict, self.batch_size).split(self._sizes)
        parts = [
            env._reset(None if full else TensorDict(_reset=mask.unsqueeze(-1), batch_size=env.batch_size))
            for env, mask in zip(self.envs, masks)
        ]
        return self._merge(parts)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict.get("action").split(self._sizes)
        parts = [
            env._step(TensorDict(action=action, batch_size=env.batch_size))
            for env, action in zip(self.envs, actions)
        ]
        return self._merge(parts)

    def _set_seed(self, seed: int | None) -> None:
        offset = 0
        for env, size in zip(self.envs, self._sizes):
            env._set_seed(None if seed is None else seed + offset)
            offset += size

    def close(self, *, raise_if_closed: bool = True) -> None:
        for env in getattr(self, "envs", []):
            env.close(raise_if_closed=raise_if_closed)
        super().close(raise_if_closed=raise_if_closed)


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
        game: one of ``PROCGEN_GAMES`` (case-insensitive), or several joined by ``+`` (multi-task:
            a :class:`MultiGameEnv`, ``num_envs`` a multiple of the number of games).
        num_envs: batch size B.
        seed: engine seed (which levels are drawn from the level set).
        distribution_mode: easy, hard, extreme, memory or exploration, where the game has it.
        num_levels, start_level: the level set (``num_levels=0``: unlimited).
        level_set: a named set from ``PROCGEN_LEVEL_SETS`` (overrides num_levels/start_level).
        other options: ProcGen's own flags.

    Returns:
        ``EnvPoolEnv`` (or ``MultiGameEnv``) with ``"pixels"`` uint8 ``[B, 3, 64, 64]`` and
        ``"level_seed"`` int64 ``[B]``.
    """
    engine_options = dict(
        use_sequential_levels=use_sequential_levels,
        use_backgrounds=use_backgrounds,
        restrict_themes=restrict_themes,
        use_monochrome_assets=use_monochrome_assets,
        center_agent=center_agent,
        paint_vel_info=paint_vel_info,
    )
    if "+" in game:
        games = game.split("+")
        if num_envs % len(games):
            raise ValueError(f"multi-task ProcGen: num_envs={num_envs} is not a multiple of {len(games)}")
        per_game = num_envs // len(games)
        levels = dict(distribution_mode=distribution_mode, level_set=level_set)
        levels.update(num_levels=num_levels, start_level=start_level)
        return MultiGameEnv(
            [
                make_procgen(g, per_game, seed=seed + k * per_game, **levels, **engine_options)
                for k, g in enumerate(games)
            ]
        )
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
        **engine_options,
    )
