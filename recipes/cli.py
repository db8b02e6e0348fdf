"""The recipes' command line: Lightning's ``LightningCLI`` with OmegaConf interpolation.

    python -m recipes fit --config configs/<suite>/<task>.yaml [--model.init_args.core=tbptt ...]

Configs name their LightningModule (and optional LightningDataModule) by ``class_path``, so one
entry point serves every recipe (R2AC on the RL suites, the copy task). Trainer defaults shared by
the recipes live here, so a config holds only what differs: one epoch over the run (the module's
data stream ends at its frame budget), gradient-norm clipping at 40 (paper), CSV + TensorBoard
loggers under ``trainer.default_root_dir``, atomic checkpoints (``last.ckpt``: ``--checkpoint.*``),
the divergence guard (``--divergence.*``), a progress bar and, for R2AC, the learning curve and
final greedy evaluation at the end of ``fit``.

Resume (``--ckpt_path``) refuses values that conflict with the checkpoint's hyper-parameters, except
a larger ``total_frames`` and operational settings (:data:`RESUME_SAFE`), and continues the run's
own log folder. Configuration mistakes end with one line, ``error: ...``, on stderr (exit status 2);
a diverged run or a failed checkpoint write with one line too (exit status 1).
"""

from __future__ import annotations

import difflib
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from recipes.callbacks import (
    AtomicCheckpointIO,
    DivergenceGuard,
    RecipeCheckpoint,
    RecipeError,
    RecipeProgressBar,
    RunInfo,
)

# Hyper-parameters a resumed run may change (applied, not refused): how it runs, not what it learns.
RESUME_SAFE = frozenset({"num_threads", "eval_episodes", "stop_at_accuracy"})
# ... and the budget, which may grow: the LR schedule follows the new total.
RESUME_EXTENDABLE = frozenset({"total_frames"})


def silence_known_notices() -> None:
    """Third-party notices that say nothing about the user's run (targeted, by message)."""
    for message in (
        r".*You are using the `dataloader_iter` step flavor.*",
        r".*Found `dataloader_iter` argument in the `training_step`.*",
        r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
        r".*does not have many workers which may be a bottleneck.*",
        r".*Your `IterableDataset` has `__len__` defined.*",
        r".*The number of training batches \(.*\) is smaller than the logging interval.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    try:  # Lightning 2.6 calls jsonargparse APIs deprecated in jsonargparse 4.49 (not the user's doing)
        from jsonargparse._deprecated import JsonargparseDeprecationWarning

        warnings.filterwarnings(
            "ignore", category=JsonargparseDeprecationWarning, module=r"lightning\.pytorch\.cli"
        )
    except ImportError:  # pragma: no cover
        pass
    # Lightning's "💡 Tip: ... try installing litlogger/litmodels" (an advertisement, via rank_zero_info)
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())


class _DropTips:
    def filter(self, record) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def trainer_defaults() -> dict[str, Any]:
    from recipes.r2ac import LearningCurve

    return {
        "max_epochs": 1,
        "gradient_clip_val": 40.0,
        "gradient_clip_algorithm": "norm",
        "log_every_n_steps": 20,
        "callbacks": [LearningCurve(), RunInfo()],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Namespace):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class RecipeCLI(LightningCLI):
    _resume: dict[str, Any] | None = None

    def add_arguments_to_parser(self, parser) -> None:
        # --checkpoint.every_n_train_steps / --checkpoint.train_time_interval (seconds) / ...
        parser.add_lightning_class_args(RecipeCheckpoint, "checkpoint")
        # --divergence.max_skips / --divergence.check_every
        parser.add_lightning_class_args(DivergenceGuard, "divergence")

    # ---------------------------------------------------------------------------------------- resume
    def _parse_ckpt_path(self) -> None:
        """Check the command line against the checkpoint's hyper-parameters (instead of Lightning's
        silent override by the checkpoint's values)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        if not Path(ckpt_path).is_file():
            raise RecipeError(f"checkpoint not found: {ckpt_path}")
        if subcommand != "fit":  # test/validate evaluate the checkpoint as trained (Lightning's rule)
            return super()._parse_ckpt_path()
        model = config.get("model")
        if model is None or model.get("class_path") is None:
            return super()._parse_ckpt_path()  # no model given: take the checkpoint's
        try:
            checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
        except Exception as error:
            raise RecipeError(f"cannot read checkpoint {ckpt_path}: {str(error).splitlines()[0]}") from None
        saved = dict(checkpoint.get("hyper_parameters") or {})
        saved.pop("_instantiator", None)
        saved_class = saved.pop("_class_path", None)
        if saved_class and saved_class != model.class_path:
            raise RecipeError(f"cannot resume {ckpt_path} (a {saved_class}) as {model.class_path}")
        given = _plain(model.get("init_args") or Namespace())
        trained_frames = int((checkpoint.get("r2ac") or {}).get("frames", 0))
        changes = []
        for key, old in saved.items():
            if key not in given or _plain(old) == given[key]:
                continue
            new = given[key]
            if key in RESUME_SAFE:
                changes.append(f"{key} {old!r} → {new!r}")
            elif key in RESUME_EXTENDABLE and isinstance(new, int) and new >= max(trained_frames, 1):
                changes.append(f"{key} {old!r} → {new!r} (the LR schedule follows the new total)")
            elif key in RESUME_EXTENDABLE:
                raise RecipeError(
                    f"cannot resume with {key}={new!r}: the checkpoint has already trained "
                    f"{trained_frames} frames"
                )
            else:
                raise RecipeError(
                    f"cannot resume with {key}={new!r}: the checkpoint was trained with {key}={old!r} "
                    f"(only {', '.join(sorted(RESUME_SAFE | RESUME_EXTENDABLE))} may change on resume)"
                )
        run = checkpoint.get("recipe_run") or {}
        version = run.get("log_version")
        if version is None:  # <root>/<name>/version_<n>/checkpoints/last.ckpt
            match = re.fullmatch(r"version_(\d+)", Path(ckpt_path).resolve().parent.parent.name)
            version = int(match.group(1)) if match else None
        self._resume = {
            "path": ckpt_path, "version": version, "changes": changes,
            "step": int(checkpoint.get("global_step", 0)), "epoch": int(checkpoint.get("epoch", 0)),
            "frames": trained_frames,
        }  # fmt: skip
        # A finished run (its epoch done) that is extended needs one more epoch to train the extra frames.
        trainer = config["trainer"]
        max_epochs = trainer.get("max_epochs")
        if max_epochs is not None and max_epochs > 0 and self._resume["epoch"] >= max_epochs:
            trainer["max_epochs"] = self._resume["epoch"] + 1
        del checkpoint

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config["trainer"]
        if trainer.get("logger") in (None, True):  # not set by the config: CSV and TensorBoard
            root = trainer.get("default_root_dir") or "runs"
            init = config["model"].get("init_args") or {}
            name = str(init.get("core") or init.get("mode") or "run")  # after command-line overrides
            version = self._resume["version"] if self._resume else None
            trainer["logger"] = [
                Namespace(
                    class_path="recipes.callbacks.ResumableCSVLogger",
                    init_args=Namespace(save_dir=root, name=name, version=version),
                ),
                Namespace(
                    class_path="recipes.callbacks.FramesTensorBoardLogger",
                    init_args=Namespace(save_dir=f"{root}/tensorboard", name=name, version=version),
                ),
            ]

    def parse_arguments(self, parser, args) -> None:
        from jsonargparse import ArgumentError

        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            argv = list(sys.argv[1:] if args is None else args)
            configs = [v for k, v in zip(argv, argv[1:]) if k == "--config"]
            configs += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
            raise RecipeError(_explain(str(error), _option_strings(parser), configs)) from None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:  # the modules' own checks of their arguments
            raise RecipeError(_explain(str(error))) from None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, RecipeCheckpoint)]
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in [*callbacks, *(config.get("callbacks") or [])]
        ):
            callbacks = [*callbacks, RecipeProgressBar()]
        # Checkpoints: a temporary file in the destination folder, then os.replace (atomic).
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if not self.subcommand or not getattr(self, "trainer", None):
            return
        where = self.trainer.log_dir or self.trainer.default_root_dir
        if self._resume:
            r = self._resume
            changes = f"; changed: {', '.join(r['changes'])}" if r["changes"] else ""
            rank_zero_info(
                f"resuming {r['path']} at update {r['step']} ({r['frames']} frames){changes}; logs: {where}"
            )
        else:
            rank_zero_info(f"logs: {where}")


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _signature_options(class_path: str) -> list[str]:
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except Exception:
        return []


def _explain(text: str, known_options: list[str] | None = None, configs: list[str] = ()) -> str:
    """jsonargparse's multi-line message → one line: the option, what is wrong, the valid values."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    unrecognized = re.search(r"(?i)unrecognized arguments: (\S+)", text)
    if unrecognized:
        name = unrecognized.group(1).split("=")[0]
        close = difflib.get_close_matches(name, known_options or [], n=1)
        return f"unknown option {name}" + (f"; did you mean {close[0]}?" if close else "")
    missing = re.search(r"File does not exist: '([^']+)'", text)
    if missing:
        return f"config file not found: {missing.group(1)}"
    if text.startswith("Problems parsing config"):
        where = " or ".join(configs) or "the config"
        return f"cannot parse {where}: " + " ".join(lines)[len("Problems parsing config: ") :]
    top = re.match(r'Parser key "([^"]+)"', text)
    block = lines
    if "Errors:" in lines:  # a Union (the class given, or None): the class's error comes first
        block = []
        for line in lines[lines.index("Errors:") + 1 :]:
            if (line.startswith("- ") and block) or line.startswith(("Given value", "Subtypes")):
                break
            block.append(line[2:] if line.startswith("- ") else line)
    class_path = None
    if block and block[0].startswith("Problem with given class_path"):
        class_path = re.search(r"'([^']+)'", block[0]).group(1)
        block = block[1:]
    keys = [m.group(1) for line in block if (m := re.match(r'Parser key "([^"]+)"', line))]
    reasons = [line for line in block if not line.startswith("Parser key")]
    prefix = (top.group(1) + "." if top else "") + ("init_args." if class_path else "")
    option = re.match(r"Option '([^']+)' is not accepted", reasons[0]) if reasons else None
    if option:
        valid = _signature_options(class_path) if class_path else []
        close = difflib.get_close_matches(option.group(1), valid, n=1)
        hint = (
            f"; did you mean --{prefix}{close[0]}?"
            if close
            else f"; valid: {', '.join(valid)}"
            if valid
            else ""
        )
        return f"unknown option --{prefix}{option.group(1)}" + hint
    reason = " ".join(reasons) or " ".join(lines)
    if keys:
        return f"invalid value for --{prefix}{'.'.join(keys)}: {reason}"
    where = f"{top.group(1)} ({class_path})" if top and class_path else (top.group(1) if top else "")
    return f"{where}: {reason}" if where else reason


def _option_strings(parser: Any) -> list[str]:
    names: list[str] = []
    for action in getattr(parser, "_actions", []):
        names += [o for o in action.option_strings if o.startswith("--")]
        for sub in (
            (getattr(action, "choices", None) or {}).values()
            if isinstance(getattr(action, "choices", None), dict)
            else ()
        ):
            names += _option_strings(sub)
    return names


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (used by tests).

    Configuration mistakes, a diverged run or a failed checkpoint write print one line
    (``error: ...``) to stderr and exit (:class:`SystemExit`, status 2 or 1)."""
    from jsonargparse import ArgumentError

    silence_known_notices()
    try:
        return RecipeCLI(
            LightningModule,
            None,  # the data module is optional: R2AC's data side is the module's own collector
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=trainer_defaults(),
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )
    except ArgumentError as error:  # raised outside parse_arguments
        print(f"error: {_explain(str(error))}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(error.exit_code) from None
