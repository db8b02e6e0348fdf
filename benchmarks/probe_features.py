"""Does a trained agent still see its observations? Activation statistics of a checkpoint's network
along play with actions sampled from its policy (the actor's default), beside a freshly initialised
network of the same configuration.

For each activation (``embed_obs``: the stem's ReLU output; ``embed``: the core's input; ``features``:
the core's output; ``logits``) it prints the standard deviation over time (mean over units and envs:
how much it follows the observations), the mean absolute value, and for the stem the fraction of
units silent at every step. A policy whose logits no longer vary over time can only learn action
preferences that ignore the screen (docs/results.md, "Atari and ProcGen on 2 cores"). Not a test.

    .venv/bin/python benchmarks/probe_features.py runs/atari/pong_cpu/rtrl/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse

import torch

from recipes.r2ac import R2ACModule
from rtrl_modules.envs.factory import make_eval_env
from rtrl_modules.training import inactive_fraction

KEYS = ("embed_obs", "embed", "features", "logits")


def activations(module: R2ACModule, steps: int, num_envs: int, seed: int) -> dict[str, torch.Tensor]:
    """``KEYS`` along ``steps`` steps of sampled play, each ``[T, B, ...]``."""
    hp = module.hparams
    options = {**(hp.env_options or {}), "seed": seed}
    env = module._add_agent_transforms(make_eval_env(hp.suite, hp.task, num_envs, **options))
    record: dict[str, list[torch.Tensor]] = {key: [] for key in KEYS}
    with torch.no_grad():
        td = env.reset()
        for _ in range(steps):
            td = module.actor(td)
            for key in KEYS:
                record[key].append(td.get(key).clone())
            _, td = env.step_and_maybe_reset(td)
    env.close()
    return {key: torch.stack(values) for key, values in record.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5, help="evaluation env seed")
    args = parser.parse_args()
    trained = R2ACModule.load_from_checkpoint(args.checkpoint, map_location="cpu")
    torch.manual_seed(0)
    fresh = R2ACModule(**dict(trained.hparams))
    print("| network | activation | std over time | mean abs | silent units |")
    print("|---|---|---:|---:|---:|")
    for name, module in (("fresh", fresh), ("trained", trained)):
        module.eval()
        for key, value in activations(module, args.steps, args.num_envs, args.seed).items():
            silent = f"{inactive_fraction(value):.3f}" if key == "embed_obs" else ""
            spread, size = value.std(0).mean().item(), value.abs().mean().item()
            print(f"| {name} | {key} | {spread:.2e} | {size:.2e} | {silent} |", flush=True)


if __name__ == "__main__":
    main()
