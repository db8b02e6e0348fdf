"""What makes a recipe run trustworthy: divergence caught, checkpoints that survive faults, progress.

* :class:`DivergenceGuard`: a non-finite loss or gradient skips the update (the parameters and the
  optimizer state are left as they were) and counts it in ``train/skipped_updates``; ``max_skips``
  skips in a row (or non-finite parameters) stop the run with :class:`DivergedError`, one line naming
  the update and the last checkpoint written. Carried RTRL sensitivities are checked on a skip and
  every ``check_every`` updates; non-finite ones are forgotten (``reset_sensitivities``).
* :class:`AtomicCheckpointIO`: checkpoints go to a temporary file in the destination folder, then
  ``os.replace`` (atomic on one filesystem): a failed or interrupted write leaves the previous
  checkpoint intact.
* :class:`RecipeCheckpoint`: ``last.ckpt`` every ``every_n_train_steps`` updates and/or every
  ``train_time_interval`` seconds, and at the end of training; no ``epoch=...`` copies.
* :class:`RecipeProgressBar`: updates done / total, frames/s and ETA on a terminal; one line every
  ``log_every`` updates when stdout is not a terminal.
* :class:`FramesTensorBoardLogger`: TensorBoard scalars against frames (the x-axis of the curves).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO


class RecipeError(Exception):
    """An error the command line reports in one line (``error: ...``), without a traceback."""

    exit_code = 2


class DivergedError(RecipeError):
    exit_code = 1


class CheckpointWriteError(RecipeError):
    exit_code = 1


# ------------------------------------------------------------------------------------------ divergence
def _all_finite(tensors) -> bool:
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _sensitivities_finite(module: LightningModule) -> bool | None:
    """Whether the carried RTRL sensitivities are finite; None when the module carries none."""
    core = getattr(getattr(module, "agent", None), "core", None)
    if core is None or not hasattr(core, "get_sensitivities"):
        return None
    state = core.get_sensitivities()
    if state is None:
        return None
    return _all_finite(state.values(include_nested=True, leaves_only=True))


def last_checkpoint(trainer: Trainer) -> str:
    """The newest checkpoint this run wrote (or resumed from), for messages."""
    for callback in trainer.checkpoint_callbacks:
        path = getattr(callback, "last_model_path", "") or getattr(callback, "_last_checkpoint_saved", "")
        if path and os.path.isfile(path):
            return str(path)
    if trainer.ckpt_path:
        return str(trainer.ckpt_path)
    return "none written yet"


class DivergenceGuard(Callback):
    """Skip updates with a non-finite loss or gradient; stop after ``max_skips`` in a row.

    Args:
        max_skips: skipped updates in a row that stop the run (``DivergedError``).
        check_every: updates between checks of the carried sensitivities and parameters (they are
            also checked on every skip); 0 checks them only on skips.
    """

    def __init__(self, max_skips: int = 3, check_every: int = 100) -> None:
        if max_skips < 1:
            raise ValueError(f"max_skips must be >= 1, got {max_skips}")
        self.max_skips, self.check_every = max_skips, check_every
        self.skipped = 0  # over the run (saved in checkpoints)
        self.in_a_row = 0
        self.sensitivity_resets = 0

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "sensitivity_resets": self.sensitivity_resets}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.sensitivity_resets = int(state_dict.get("sensitivity_resets", 0))

    def _diverged(self, trainer: Trainer, what: str) -> DivergedError:
        return DivergedError(
            f"diverged at update {trainer.global_step + 1} ({what}); "
            f"last good checkpoint: {last_checkpoint(trainer)}"
        )

    def _check_sensitivities(self, module: LightningModule) -> None:
        if _sensitivities_finite(module) is False:
            module.agent.core.reset_sensitivities()
            self.sensitivity_resets += 1

    def on_before_optimizer_step(self, trainer: Trainer, module: LightningModule, optimizer) -> None:
        loss = getattr(module, "last_loss", None)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        finite_loss = loss is None or bool(torch.isfinite(loss).all())
        finite_grads = not grads or bool(
            torch.isfinite(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
        )
        if finite_loss and finite_grads:
            self.in_a_row = 0
            return
        # Skip: without gradients the optimizer leaves these parameters and their state untouched.
        for p in params:
            p.grad = None
        self.skipped += 1
        self.in_a_row += 1
        self._check_sensitivities(module)
        if self.in_a_row >= self.max_skips:
            what = "loss" if not finite_loss else "gradient"
            raise self._diverged(trainer, f"non-finite {what} in {self.in_a_row} updates in a row")

    def on_train_batch_end(
        self, trainer: Trainer, module: LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        if self.in_a_row or (self.check_every and step % self.check_every == 0):
            if not _all_finite(p.detach() for p in module.parameters()):
                raise self._diverged(trainer, "non-finite parameters")
            self._check_sensitivities(module)
        counts = {"train/skipped_updates": self.skipped, "train/sensitivity_resets": self.sensitivity_resets}
        module.log_dict({k: float(v) for k, v in counts.items()}, on_step=True, on_epoch=False, batch_size=1)


# ------------------------------------------------------------------------------------------ checkpoints
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file next to the destination, then ``os.replace`` it there."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as error:
            tmp.unlink(missing_ok=True)
            previous = "the previous checkpoint is intact" if path.is_file() else "no previous checkpoint"
            raise CheckpointWriteError(f"could not write checkpoint {path} ({error}); {previous}") from error


class RecipeCheckpoint(ModelCheckpoint):
    """``last.ckpt`` only: every ``every_n_train_steps`` updates and/or every ``train_time_interval``
    seconds (both may be set), and at the end of training.

    ``save_top_k`` defaults to 0 (no ``epoch=...-step=....ckpt`` copies); set it with ``monitor`` to keep
    best checkpoints too."""

    def __init__(
        self,
        every_n_train_steps: int | None = 500,
        train_time_interval: float | None = None,
        save_top_k: int = 0,
        save_last: bool | None = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            every_n_train_steps=every_n_train_steps, save_top_k=save_top_k, save_last=save_last, **kwargs
        )
        if train_time_interval is not None:  # ModelCheckpoint's step logic already ORs the two triggers
            self._train_time_interval = timedelta(seconds=float(train_time_interval))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Also when a periodic last.ckpt was written before the final update.
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RunInfo(Callback):
    """Stores the log version in checkpoints, so that a resumed run continues its own log folder."""

    def on_save_checkpoint(
        self, trainer: Trainer, module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.loggers:
            checkpoint["recipe_run"] = {"log_version": trainer.loggers[0].version, "log_dir": trainer.log_dir}


# ------------------------------------------------------------------------------------------ progress
def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class RecipeProgressBar(ProgressBar):
    """Updates / total, frames/s and ETA: a live bar on a terminal, else a line every ``log_every``
    updates (so log files stay short)."""

    def __init__(self, log_every: int = 100, interactive: bool | None = None) -> None:
        super().__init__()
        self.log_every = log_every
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._enabled = True
        self._bar = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _total(self, trainer: Trainer, module: LightningModule) -> int | None:
        total = getattr(module, "updates_per_run", None)
        if total is None and trainer.max_steps and trainer.max_steps > 0:
            total = trainer.max_steps
        return total

    def on_train_start(self, trainer: Trainer, module: LightningModule) -> None:
        self._start_time, self._start_step = time.monotonic(), trainer.global_step
        self._start_frames = getattr(module, "frames", 0)
        if self._enabled and self.interactive and trainer.is_global_zero:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self._total(trainer, module), initial=trainer.global_step, desc="updates",
                dynamic_ncols=True, file=sys.stdout, smoothing=0.05,
            )  # fmt: skip

    def _summary(self, trainer: Trainer, module: LightningModule) -> tuple[str, dict[str, str]]:
        elapsed = max(time.monotonic() - self._start_time, 1e-9)
        steps = trainer.global_step - self._start_step
        total = self._total(trainer, module)
        fields: dict[str, str] = {}
        if hasattr(module, "frames"):
            fields["frames/s"] = f"{(module.frames - self._start_frames) * trainer.world_size / elapsed:.0f}"
        if "return" in trainer.progress_bar_metrics:
            fields["return"] = f"{trainer.progress_bar_metrics['return']:.3g}"
        eta = (total - trainer.global_step) * elapsed / steps if total and steps else float("nan")
        return f"update {trainer.global_step}/{total or '?'}", {**fields, "eta": _duration(eta)}

    def on_train_batch_end(
        self, trainer: Trainer, module: LightningModule, outputs, batch, batch_idx
    ) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        head, fields = self._summary(trainer, module)
        if self._bar is not None:
            self._bar.n = trainer.global_step
            self._bar.set_postfix({k: v for k, v in fields.items() if k != "eta"}, refresh=False)
            self._bar.refresh()
        elif self.log_every and trainer.global_step % self.log_every == 0:
            print(head + "  " + "  ".join(f"{k} {v}" for k, v in fields.items()), flush=True)

    def on_train_end(self, trainer: Trainer, module: LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._enabled and trainer.is_global_zero:
            head, fields = self._summary(trainer, module)
            fields.pop("eta", None)
            print(head + " (done)  " + "  ".join(f"{k} {v}" for k, v in fields.items()), flush=True)

    def on_exception(self, trainer: Trainer, module: LightningModule, exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class FramesTensorBoardLogger(TensorBoardLogger):
    """TensorBoard scalars against environment frames (the ``frames`` metric) where a step logs it."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        frames = metrics.get("frames")
        if frames is not None:
            step = int(frames)
        super().log_metrics(metrics, step)


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (a resumed run continues it) instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` is appended to when the version folder already holds one."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
