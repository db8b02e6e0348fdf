"""Environment suites as batched TorchRL envs: Atari, ProcGen (envpool), DMLab, popgym, native memory tasks.

Start with ``make_env(suite, task, num_envs, **options)``; see docs/envs.md.
"""

from rtrl_modules.envs.factory import (
    EVAL_PROTOCOLS,
    SUITES,
    EvalSet,
    evaluate,
    evaluate_procgen,
    evaluation_plan,
    make_base_env,
    make_env,
    make_eval_env,
)
from rtrl_modules.envs.memory import MEMORY_TASKS, DelayedCueEnv

__all__ = [
    "EVAL_PROTOCOLS",
    "MEMORY_TASKS",
    "SUITES",
    "DelayedCueEnv",
    "EvalSet",
    "evaluate",
    "evaluation_plan",
    "evaluate_procgen",
    "make_base_env",
    "make_env",
    "make_eval_env",
]
