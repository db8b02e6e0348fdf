"""The recipes' command line: Lightning's ``LightningCLI`` with OmegaConf interpolation.

    python -m recipes fit --config configs/<suite>/<task>.yaml [--model.init_args.core=tbptt ...]

Configs name their LightningModule (and optional LightningDataModule) by ``class_path``, so one
entry point serves every recipe (R2AC on the RL suites, the copy task). Trainer defaults shared by
the recipes live here, so a config holds only what differs: one epoch over the run (the module's
data stream ends at its frame budget), gradient-norm clipping at 40 (paper), CSV + TensorBoard
loggers under ``trainer.default_root_dir``, periodic atomic checkpoints (``last.ckpt``) and, for
R2AC, the learning curve and final greedy evaluation at the end of ``fit``.
"""

from __future__ import annotations

from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI


def trainer_defaults() -> dict[str, Any]:
    from recipes.r2ac import LearningCurve

    return {
        "max_epochs": 1,
        "gradient_clip_val": 40.0,
        "gradient_clip_algorithm": "norm",
        "log_every_n_steps": 20,
        # Lightning writes checkpoints atomically (temporary file, then move).
        "callbacks": [LearningCurve(), ModelCheckpoint(every_n_train_steps=500, save_last=True)],
    }


class RecipeCLI(LightningCLI):
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config["trainer"]
        if trainer.get("logger") in (None, True):  # not set by the config: CSV and TensorBoard
            root = trainer.get("default_root_dir") or "runs"
            init = config["model"].get("init_args") or {}
            name = str(init.get("core") or init.get("mode") or "run")  # after command-line overrides
            trainer["logger"] = [
                Namespace(
                    class_path="lightning.pytorch.loggers.CSVLogger",
                    init_args=Namespace(save_dir=root, name=name),
                ),
                Namespace(
                    class_path="lightning.pytorch.loggers.TensorBoardLogger",
                    init_args=Namespace(save_dir=f"{root}/tensorboard", name=name),
                ),
            ]


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (used by tests)."""
    return RecipeCLI(
        LightningModule,
        None,  # the data module is optional: R2AC's data side is the module's own collector
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults(),
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )
