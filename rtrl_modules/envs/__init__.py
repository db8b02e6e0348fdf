"""Environment suites as batched TorchRL envs: Atari, ProcGen (envpool), DMLab, popgym, native memory tasks.

Start with ``make_env(suite, task, num_envs, **options)``; see docs/envs.md.
"""

from rtrl_modules.envs.factory import (
    SUITES,
    evaluate,
    evaluate_procgen,
    make_base_env,
    make_env,
    make_eval_env,
)
from rtrl_modules.envs.memory import MEMORY_TASKS, DelayedCueEnv

__all__ = [
    "MEMORY_TASKS",
    "SUITES",
    "DelayedCueEnv",
    "evaluate",
    "evaluate_procgen",
    "make_base_env",
    "make_env",
    "make_eval_env",
]
