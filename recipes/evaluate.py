"""Greedy evaluation of a trained R2AC checkpoint, any suite; optionally a video of the agent's play.

    python -m recipes.evaluate runs/.../checkpoints/last.ckpt [--episodes N] [--output results.csv|.json]
        [--video play.mp4|play.gif] [--config configs/<suite>/<task>.yaml] [--level-set test_1000 ...]

The module is rebuilt from the checkpoint (``R2ACModule.load_from_checkpoint``: the hyper-parameters
saved at training time; ``--config`` overrides them with a config's ``model.init_args``, except the
network's and the task, which the weights fix: e.g. other ``env_options``, ``seed``). Episodes
are played greedily (argmax) on fresh evaluation envs with the envs, seeds and batch size of the
final evaluation of ``fit`` (its ``eval_protocol``: Atari full games; ProcGen the protocol's level
sets unless ``--level-set``; the official protocol's repeated runs), so the numbers match
``evaluation.csv`` and ``recipes test``. One line per level set (or run) is printed:

    memory/delayed_cue: greedy return mean=0.9400 std=0.3412 episodes=200

``--policy sampled`` draws the actions from the agent's policy, as in training (the metric of the
ProcGen literature, whose PPO baselines report the stochastic policy); ``--policy random`` plays
uniformly random actions on the same envs and seeds instead (the random-agent baseline that a
learning result is read against; the agent still runs, so its recurrent state stays in place, and
its actions are replaced).

``--video`` (pixel suites: Atari, ProcGen, DMLab) records env 0's first evaluation episode from the
observations the agent sees (Atari: the last grey 84×84 frame of the stack; ProcGen: the 64×64 RGB
image), upscaled ``--scale`` times. ``.gif`` is written with Pillow (always installed, through
matplotlib); ``.mp4``/``.avi`` with OpenCV (``opencv-python-headless``, part of the ``atari`` extra).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from rtrl_modules.envs import EvalSet, evaluation_plan
from rtrl_modules.envs.procgen import PROCGEN_LEVEL_SETS

DEFAULT_EPISODES = 10  # when the checkpoint's eval_episodes is 0
VIDEO_SUFFIXES = (".gif", ".mp4", ".avi")
PIXEL_SUITES = ("atari", "procgen", "dmlab")
#: hyper-parameters that shape the network: a --config never overrides the checkpoint's
NETWORK_KEYS = (
    "suite",
    "task",
    "core",
    "hidden_size",
    "embed_size",
    "forget_bias",
    "init",
    "conv_scale",
    "feedforward_layer",
    "stem_checkpoint",
    "stem_parts",
    "freeze_stem",
)
RESULT_COLUMNS = (
    "checkpoint", "suite", "task", "level_set", "policy", "episodes", "mean", "std", "min", "max"
)  # fmt: skip
POLICIES = ("greedy", "sampled", "random")


# ------------------------------------------------------------------------------------------ loading
def config_overrides(path: str | Path) -> dict[str, Any]:
    """The ``model.init_args`` of a recipe config (OmegaConf interpolation resolved)."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    model = (config or {}).get("model") or {}
    if "init_args" in model:
        model = model["init_args"] or {}
    return {k: v for k, v in model.items() if k != "class_path"}


def load_module(checkpoint: str | Path, config: str | Path | None = None):
    """The checkpoint's module; ``config`` overrides its hyper-parameters except the network's
    (``NETWORK_KEYS`` must match the saved weights, so they always come from the checkpoint)."""
    from recipes.r2ac import R2ACModule

    overrides = config_overrides(config) if config else {}
    if overrides:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False).get("hyper_parameters", {})
        kept = [k for k in NETWORK_KEYS if k in overrides and k in saved and overrides[k] != saved[k]]
        if kept:
            print(
                f"--config: keeping the checkpoint's {', '.join(kept)} (its weights need them)",
                file=sys.stderr,
            )
        overrides = {k: v for k, v in overrides.items() if k not in NETWORK_KEYS or k not in saved}
    module = R2ACModule.load_from_checkpoint(str(checkpoint), map_location="cpu", **overrides)
    return module.eval()


# ------------------------------------------------------------------------------------------ video
def frame_to_image(pixels: torch.Tensor, rgb: bool, scale: int) -> np.ndarray:
    """uint8 HWC RGB image of one observation ``[C, H, W]``: its last RGB (or grey) frame, upscaled."""
    frame = pixels[-3:] if rgb else pixels[-1:].expand(3, *pixels.shape[1:])
    if frame.dtype != torch.uint8:  # float pixels in [0, 1]
        frame = (frame.float().clamp(0, 1) * 255).round().to(torch.uint8)
    image = frame.permute(1, 2, 0).cpu().numpy()
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest neighbour: crisp pixels
    return np.ascontiguousarray(image)


class RandomActions:
    """Wraps the actor: replaces its action ``[B]`` by one drawn uniformly from its ``"logits"``'
    ``[B, A]`` actions (seeded). The actor still runs, so the recurrent state it carries stays valid."""

    def __init__(self, actor: Callable, seed: int = 0) -> None:
        self.actor = actor
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        td = self.actor(td)
        logits, action = td.get("logits"), td.get("action")
        drawn = torch.randint(logits.shape[-1], logits.shape[:-1], generator=self.generator)
        td.set("action", drawn.to(device=action.device, dtype=action.dtype))
        return td


class FrameRecorder:
    """Wraps the policy: keeps the images env 0 shows the agent until its first episode ends."""

    def __init__(
        self, policy: Callable, rgb: bool, scale: int = 4, max_frames: int = 10_000, key: str = "pixels"
    ) -> None:
        self.policy, self.rgb, self.scale, self.max_frames, self.key = policy, rgb, scale, max_frames, key
        self.frames: list[np.ndarray] = []
        self.recording = True

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        if self.recording:
            if self.frames and bool(td["is_init"][0].any()):  # env 0 started its second episode
                self.recording = False
            else:
                self.frames.append(frame_to_image(td[self.key][0], self.rgb, self.scale))
                self.recording = len(self.frames) < self.max_frames
        return self.policy(td)


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: float = 15.0) -> Path:
    """Write RGB uint8 frames as ``.gif`` (Pillow) or ``.mp4``/``.avi`` (OpenCV)."""
    path = Path(path)
    if not frames:
        raise ValueError("no frames to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        duration = max(20, round(1000 / fps))  # ms per frame (GIF viewers clamp below 20 ms)
        images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)
    elif suffix in (".mp4", ".avi"):
        try:
            import cv2
        except ImportError:
            raise SystemExit(
                f"writing {suffix} needs OpenCV: pip install opencv-python-headless "
                "(or rtrl-modules[atari]); a .gif needs nothing more"
            ) from None
        height, width = frames[0].shape[:2]
        fourcc = cv2.VideoWriter_fourcc(*("mp4v" if suffix == ".mp4" else "MJPG"))
        writer = cv2.VideoWriter(str(path), fourcc, float(fps), (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {path}")
        try:
            for frame in frames:
                writer.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR
        finally:
            writer.release()
    else:
        raise ValueError(f"unknown video format {suffix!r}; use one of {', '.join(VIDEO_SUFFIXES)}")
    return path


def shows_rgb(module) -> bool:
    """Whether the observation's last 3 channels are one RGB frame (else its last channel is grey)."""
    hp = module.hparams
    return not (hp.suite == "atari" and (hp.env_options or {}).get("grayscale", True))


# ------------------------------------------------------------------------------------------ evaluation
def summarize(returns: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation (over episodes, ddof 0), min, max and count of episode returns."""
    if returns.numel() == 0:
        nan = math.nan
        return {"episodes": 0, "mean": nan, "std": nan, "min": nan, "max": nan}
    r = returns.double()
    return {
        "episodes": int(r.numel()),
        "mean": float(r.mean()),
        "std": float(r.std(correction=0)),
        "min": float(r.min()),
        "max": float(r.max()),
    }


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    episodes: int | None = None,
    config: str | Path | None = None,
    level_sets: Sequence[str] | None = None,
    max_steps: int | None = None,
    video: str | Path | None = None,
    fps: float = 15.0,
    scale: int = 4,
    max_video_frames: int = 10_000,
    policy: str = "greedy",
) -> list[dict[str, Any]]:
    """Returns of a checkpoint's greedy policy (``policy="sampled"``: actions drawn from the policy;
    ``"random"``: uniformly random actions): one row (``RESULT_COLUMNS``) per level set or run of its
    evaluation protocol (one row for a single set)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    module = load_module(checkpoint, config)
    hp = module.hparams
    official = hp.eval_protocol == "official"
    episodes = episodes if official else episodes or hp.eval_episodes or DEFAULT_EPISODES
    if video is not None:
        if hp.suite not in PIXEL_SUITES:
            raise ValueError(f"--video needs a pixel suite ({', '.join(PIXEL_SUITES)}), not {hp.suite!r}")
        if Path(video).suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"--video: use a {', '.join(VIDEO_SUFFIXES)} file, not {video}")
    if level_sets and hp.suite != "procgen":
        raise ValueError(f"--level-set is for ProcGen only (suite {hp.suite!r})")
    plan = evaluation_plan(hp.suite, hp.eval_protocol, episodes)
    if level_sets:
        plan = [EvalSet(name, plan[0].episodes, {"level_set": name}) for name in level_sets]
    actor = RandomActions(module.actor, seed=hp.seed) if policy == "random" else module.actor
    recorder = FrameRecorder(actor, shows_rgb(module), scale, max_video_frames) if video else None
    rows = []
    with torch.no_grad():
        for i, part in enumerate(plan):
            played = recorder if recorder is not None and i == 0 else actor
            returns = module.greedy_returns(
                part.episodes, max_steps=max_steps, policy=played, greedy=policy != "sampled", **part.options
            )
            rows.append(
                {
                    "checkpoint": str(checkpoint),
                    "suite": hp.suite,
                    "task": hp.task,
                    "level_set": part.name,
                    "policy": policy,
                    **summarize(returns),
                    "returns": returns.tolist(),
                }
            )
    if recorder is not None:
        write_video(video, recorder.frames, fps)
    return rows


def write_results(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """``.json``: a list of rows with the per-episode returns; otherwise CSV (``RESULT_COLUMNS``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=2) + "\n")
    else:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return path


def format_row(row: dict[str, Any]) -> str:
    where = f"{row['suite']}/{row['task']}" + (f" [{row['level_set']}]" if row["level_set"] else "")
    summary = f"mean={row['mean']:.4f} std={row['std']:.4f} episodes={row['episodes']}"
    return f"{where}: {row['policy']} return {summary}"


# ------------------------------------------------------------------------------------------ CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.evaluate",
        description="Greedy evaluation of an R2AC checkpoint (any suite); optional video of its play.",
    )
    parser.add_argument("checkpoint", help="a checkpoint of `recipes fit` (e.g. .../checkpoints/last.ckpt)")
    parser.add_argument(
        "--episodes", type=int, default=None,
        help=f"episodes (per ProcGen level set or run); default: the run's eval_episodes, else "
        f"{DEFAULT_EPISODES} (eval_protocol=official: the protocol's counts)",
    )  # fmt: skip
    parser.add_argument("--config", help="a recipe config whose model.init_args override the checkpoint's")
    parser.add_argument(
        "--level-set", action="append", choices=list(PROCGEN_LEVEL_SETS), dest="level_sets",
        help="ProcGen level set to evaluate (repeatable); default: the run's eval_protocol's four",
    )  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many env steps")
    parser.add_argument(
        "--policy", choices=POLICIES, default="greedy",
        help="greedy: the agent's argmax actions; sampled: actions drawn from its policy (as in "
        "training; ProcGen's usual metric); random: uniformly random actions (the baseline)",
    )  # fmt: skip
    parser.add_argument("--output", help="write the results to this .csv or .json file")
    parser.add_argument("--video", help="record env 0's first episode to this .mp4, .avi or .gif file")
    parser.add_argument("--fps", type=float, default=15.0, help="video frame rate (15 = Atari real time)")
    parser.add_argument("--scale", type=int, default=4, help="video upscaling factor (nearest neighbour)")
    parser.add_argument("--max-video-frames", type=int, default=10_000, help="longest video, in frames")
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        parser.error("--episodes must be >= 1")
    if not Path(args.checkpoint).is_file():
        parser.error(f"no checkpoint at {args.checkpoint}")
    if args.video and Path(args.video).suffix.lower() not in VIDEO_SUFFIXES:
        parser.error(f"--video: use a {', '.join(VIDEO_SUFFIXES)} file")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    try:
        rows = evaluate_checkpoint(
            args.checkpoint,
            episodes=args.episodes,
            config=args.config,
            level_sets=args.level_sets,
            max_steps=args.max_steps,
            video=args.video,
            fps=args.fps,
            scale=args.scale,
            max_video_frames=args.max_video_frames,
            policy=args.policy,
        )
    except ValueError as exc:  # a bad option for this checkpoint (e.g. --video on a non-pixel suite)
        raise SystemExit(f"python -m recipes.evaluate: error: {exc}") from None
    for row in rows:
        print(format_row(row), flush=True)
        if row["episodes"] == 0:
            print("  (no episode finished within --max-steps)", file=sys.stderr)
    if args.output:
        print(f"results: {write_results(args.output, rows)}", flush=True)
    if args.video:
        print(f"video: {args.video}", flush=True)
    return rows


if __name__ == "__main__":
    main()
