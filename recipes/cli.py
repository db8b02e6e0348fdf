"""The recipes' command line: Lightning's ``LightningCLI`` with OmegaConf interpolation.

Configs name their LightningModule (and optional LightningDataModule) by ``class_path``, so one
entry point serves every recipe (R2AC on the RL suites, the copy task, ...).
"""

from __future__ import annotations

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (used by tests)."""
    return LightningCLI(
        LightningModule,
        None,  # the data module is optional: R2AC's data side is the module's own collector
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )
