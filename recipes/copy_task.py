"""Copy task (Irie et al., ICLR 2024, §4.1): an eLSTM must replay a random bit pattern after a delimiter.

One sequence of length 2T, with the pattern length t ~ U{1..T}:

    tokens   b_1 … b_t  #  …  #   # … #        (pattern, t delimiters, padding with # to 2T)
    targets  ·   …  ·   b_1 … b_t  · … ·        (· = not scored; loss/accuracy on the t copy-out steps)

Inputs are one-hot over {0, 1, #} ([B, 2T, 3]); as in the official generator, padding reuses the
delimiter token. Sequence accuracy counts a sequence as right only if every copied bit is right.

Training modes (``CopyTaskModule(mode=...)``), all with manual optimization so "updates" are explicit.
The RTRL and TBPTT modes are named, and run, as the core's gradient modes (``rtrl_modules.GRADIENT_MODES``):

* ``"rtrl"``           exact RTRL, segment form; one update per sequence, or per segment of
                       ``segment_length`` steps with the sensitivities carried (gradient still untruncated);
* ``"rtrl_stepwise"``  exact RTRL, step-by-step recursion; one update after every step that has a
                       scored position (fully online learning, the paper's setting);
* ``"tbptt"``          truncated BPTT: segments of ``segment_length`` = k steps, state carried, gradient
                       cut at each segment start, one update per segment;
* ``"bptt"``           full backprop through the whole sequence, one update per sequence.

    python -m recipes fit --config configs/copy_task/rtrl_stepwise.yaml
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from rtrl_modules import ELSTM
from rtrl_modules.core.checks import check_choice

DELIMITER = 2  # token id of the delimiter (and of the padding, as in the official generator)
VOCAB_SIZE = 3  # one-hot input size: bits 0, 1 and the delimiter
NUM_CLASSES = 2  # the model predicts a bit at each copy-out step

MODES: tuple[str, ...] = ("rtrl", "rtrl_stepwise", "tbptt", "bptt")
SUMMARY_PREFIX = "COPY_TASK_SUMMARY"  # stdout line with the run summary (benchmarks/copy_task_table.py)
# The core's gradient mode of each training mode (full BPTT: one "tbptt" segment over the sequence).
GRADIENT_OF_MODE = {"rtrl": "rtrl", "rtrl_stepwise": "rtrl_stepwise", "tbptt": "tbptt", "bptt": "tbptt"}


# ------------------------------------------------------------------------------------------------ data
def make_copy_batch(batch_size: int, max_length: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Sample ``batch_size`` copy-task sequences of length 2T (T = ``max_length``).

    Returns a dict with
        ``inputs``   [B, 2T, 3] float one-hot of ``tokens``;
        ``tokens``   [B, 2T] long input tokens (0, 1 or DELIMITER);
        ``targets``  [B, 2T] long: the bit to output at copy-out steps, 0 elsewhere (ignored);
        ``mask``     [B, 2T] bool, True at the t copy-out steps t..2t-1 (0-based);
        ``is_init``  [B, 2T] bool, True at step 0 (every sequence is its own episode);
        ``lengths``  [B] long pattern lengths t ∈ {1..T}.
    """
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be ≥ 1, got {batch_size} and {max_length}")
    steps = 2 * max_length
    lengths = torch.randint(1, max_length + 1, (batch_size,), generator=generator)
    bits = torch.randint(0, 2, (batch_size, max_length), generator=generator)
    pos = torch.arange(steps).expand(batch_size, steps)
    t = lengths[:, None]
    in_pattern = pos < t
    mask = (pos >= t) & (pos < 2 * t)
    padded_bits = torch.cat((bits, bits.new_zeros(batch_size, max_length)), dim=1)  # [B, 2T]
    tokens = torch.where(in_pattern, padded_bits, torch.full_like(padded_bits, DELIMITER))
    source = (pos - t).clamp(min=0)  # copy-out step p replays bit p - t
    targets = torch.where(mask, padded_bits.gather(1, source), torch.zeros_like(padded_bits))
    return {
        "inputs": F.one_hot(tokens, VOCAB_SIZE).float(),
        "tokens": tokens,
        "targets": targets,
        "mask": mask,
        "is_init": pos == 0,
        "lengths": lengths,
    }


class CopyTaskStream(IterableDataset):
    """Endless batches from ``make_copy_batch``, reproducible from ``seed`` (use ``batch_size=None``)."""

    def __init__(self, batch_size: int, max_length: int, seed: int = 0, num_batches: int | None = None):
        super().__init__()
        self.batch_size, self.max_length = batch_size, max_length
        self.seed, self.num_batches = seed, num_batches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        count = 0
        while self.num_batches is None or count < self.num_batches:
            yield make_copy_batch(self.batch_size, self.max_length, generator)
            count += 1


class CopyTaskData(LightningDataModule):
    """Copy-task data: an endless training stream and a fixed validation set (its own seed).

    Args:
        max_length: T, the maximum pattern length; sequences have 2T steps.
        batch_size: B, sequences per training batch.
        seed: seed of the training stream.
        val_size: sequences in the validation set (sequence accuracy is measured on all of them).
        val_seed: seed of the validation set (default: ``seed + 1_000_003``, disjoint stream).
    """

    def __init__(
        self,
        max_length: int = 10,
        batch_size: int = 32,
        seed: int = 0,
        val_size: int = 1000,
        val_seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("max_length", max_length), ("batch_size", batch_size), ("val_size", val_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CopyTaskData: {name} must be a positive integer, got {value!r}")
        self.save_hyperparameters()
        self.max_length, self.batch_size, self.seed, self.val_size = max_length, batch_size, seed, val_size
        self.val_seed = seed + 1_000_003 if val_seed is None else val_seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(CopyTaskStream(self.batch_size, self.max_length, self.seed), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.val_seed)
        batches, left = [], self.val_size
        while left > 0:  # generated once per call, identical every time
            batches.append(make_copy_batch(min(left, 500), self.max_length, generator))
            left -= 500
        return DataLoader(batches, batch_size=None)


# ----------------------------------------------------------------------------------------------- model
class CopyTaskModule(LightningModule):
    """One-layer eLSTM + linear bit readout, trained on the copy task in one of four modes.

    Args:
        mode: ``"rtrl"``, ``"rtrl_stepwise"``, ``"tbptt"`` or ``"bptt"`` (module docstring). A plain
            ``str`` for the CLI, so that a renamed mode (``"rtrl_online"``) gets an error naming its
            new name.
        segment_length: k. Required for ``"tbptt"`` (the truncation); optional for ``"rtrl"`` (update
            after every k steps, sensitivities carried); must be unset for the other modes.
        hidden_size: N, eLSTM cells.
        forget_bias: initial forget-gate bias b_f of the eLSTM (None: uniform like the other weights;
            3.0: f ≈ 0.95 at start, memory spanning the 2T steps, used by the configs).
        lr: Adam learning rate.
        lr_milestones: updates after which the learning rate is multiplied by ``lr_gamma``
            (torch's ``MultiStepLR``, stepped once per update); empty: constant.
        lr_gamma: the decay factor at each milestone.
        grad_clip: global gradient-norm clip per update (None: no clipping).
        stop_at_accuracy: stop training once validation sequence accuracy reaches this (None: never).
        num_threads: ``torch.set_num_threads`` at setup (None: leave as is).
    """

    def __init__(
        self,
        mode: str = "rtrl_stepwise",
        segment_length: int | None = None,
        hidden_size: int = 128,
        forget_bias: float | None = None,
        lr: float = 1e-3,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        grad_clip: float | None = 1.0,
        stop_at_accuracy: float | None = 1.0,
        num_threads: int | None = 1,
    ) -> None:
        super().__init__()
        check_choice("copy-task mode", mode, MODES)
        if mode == "tbptt" and segment_length is None:
            raise ValueError("mode='tbptt' needs segment_length (the truncation k)")
        if mode in ("rtrl_stepwise", "bptt") and segment_length is not None:
            raise ValueError(f"mode={mode!r} takes no segment_length (got {segment_length})")
        if segment_length is not None and (not isinstance(segment_length, int) or segment_length < 1):
            raise ValueError(f"segment_length must be a positive integer, got {segment_length!r}")
        if hidden_size < 1 or lr <= 0:
            raise ValueError(f"hidden_size and lr must be positive, got {hidden_size} and {lr}")
        milestones = list(lr_milestones or [])
        if any(not isinstance(m, int) or m < 1 for m in milestones) or milestones != sorted(milestones):
            raise ValueError(f"lr_milestones must be increasing positive update counts; got {lr_milestones}")
        if not 0 < lr_gamma <= 1:
            raise ValueError(f"lr_gamma must be in (0, 1], got {lr_gamma}")
        if stop_at_accuracy is not None and not 0 < stop_at_accuracy <= 1:
            raise ValueError(f"stop_at_accuracy must be in (0, 1], got {stop_at_accuracy}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.mode, self.segment_length, self.grad_clip = mode, segment_length, grad_clip
        self.lr_milestones = milestones
        self.core = ELSTM(VOCAB_SIZE, hidden_size, output_gate=True, forget_bias=forget_bias)
        self.head = nn.Linear(hidden_size, NUM_CLASSES)
        # Progress counters (saved in checkpoints through the buffers).
        self.register_buffer("sequences_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("solved_at_update", torch.full((), -1, dtype=torch.long))
        self.register_buffer("solved_at_sequences", torch.full((), -1, dtype=torch.long))
        self.register_buffer("best_val_seq_acc", torch.zeros(()))
        self._val_sums: dict[str, float] = {}
        self._fit_start = 0.0

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        if not self.lr_milestones:
            return optimizer
        schedule = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, self.lr_milestones, gamma=self.hparams.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def setup(self, stage: str) -> None:
        if self.hparams.num_threads is not None:
            torch.set_num_threads(self.hparams.num_threads)

    def forward(self, inputs: Tensor, is_init: Tensor | None = None) -> Tensor:
        """Whole-sequence logits: inputs [B, L, 3], is_init [B, L] → [B, L, 2]."""
        out, _ = self.core(inputs, None, is_init=is_init)
        return self.head(out)

    def _segment(self, steps: int) -> int:
        return {"rtrl_stepwise": 1, "bptt": steps}.get(self.mode, self.segment_length or steps)

    # --------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        opt, schedule = self.optimizers(), self.lr_schedulers()
        x, y, mask, is_init = batch["inputs"], batch["targets"], batch["mask"], batch["is_init"]
        batch_size, steps = y.shape
        k, gradient = self._segment(steps), GRADIENT_OF_MODE[self.mode]
        state = self.core.initial_state(batch_size)
        preds, losses = [], []
        for start in range(0, steps, k):
            seg = slice(start, start + k)
            out, state = self.core(x[:, seg], state, is_init=is_init[:, seg], gradient=gradient)
            logits = self.head(out)  # [B, k, 2]
            preds.append(logits.argmax(-1).detach())
            m = mask[:, seg]
            if not m.any():  # nothing scored here: no update, state (and sensitivities) carried on
                continue
            loss = F.cross_entropy(logits[m], y[:, seg][m])  # mean over this segment's scored steps
            opt.zero_grad()
            self.manual_backward(loss)
            if self.grad_clip is not None:
                self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
            if schedule is not None:  # manual optimization: Lightning does not step it for us
                schedule.step()
            losses.append(loss.detach())
        self.sequences_seen += batch_size
        pred = torch.cat(preds, dim=1)
        seq_acc, bit_acc = _accuracies(pred, y, mask)
        self.log_dict(
            {
                "train/loss": torch.stack(losses).mean() if losses else torch.tensor(math.nan),
                "train/seq_acc": seq_acc / batch_size,
                "train/bit_acc": bit_acc / mask.sum(),
                "progress/sequences": self.sequences_seen.float(),
                "progress/updates": float(self.global_step),
            },
            prog_bar=False,
        )

    # ------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_sums = {"loss": 0.0, "seq": 0.0, "bit": 0.0, "n_seq": 0.0, "n_bit": 0.0}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        y, mask = batch["targets"], batch["mask"]
        logits = self(batch["inputs"], batch["is_init"])
        seq_acc, bit_acc = _accuracies(logits.argmax(-1), y, mask)
        s = self._val_sums
        s["loss"] += F.cross_entropy(logits[mask], y[mask], reduction="sum").item()
        s["seq"] += seq_acc.item()
        s["bit"] += bit_acc.item()
        s["n_seq"] += y.shape[0]
        s["n_bit"] += mask.sum().item()

    def on_validation_epoch_end(self) -> None:
        s = self._val_sums
        if not s or s["n_seq"] == 0:
            return
        seq_acc = s["seq"] / s["n_seq"]
        self.log_dict(
            {
                "val/seq_acc": seq_acc,
                "val/bit_acc": s["bit"] / s["n_bit"],
                "val/loss": s["loss"] / s["n_bit"],
                "progress/val_sequences": self.sequences_seen.float(),
                "progress/val_updates": float(self.global_step),
            },
            prog_bar=True,
        )
        if self.trainer.sanity_checking:
            return
        self.best_val_seq_acc.fill_(max(self.best_val_seq_acc.item(), seq_acc))
        target = self.hparams.stop_at_accuracy
        if target is not None and seq_acc >= target:
            if self.solved_at_update < 0:
                self.solved_at_update.fill_(self.global_step)
                self.solved_at_sequences.fill_(self.sequences_seen.item())
            self.trainer.should_stop = True

    # ---------------------------------------------------------------------------------------- summary
    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self) -> None:
        """Write ``summary.json`` next to the logs and print it on one line prefixed ``SUMMARY_PREFIX``."""
        if self.trainer.global_rank != 0:
            return
        summary = self.summary()
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, "summary.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(path + ".tmp", path)
        print(f"{SUMMARY_PREFIX} {json.dumps(summary)}", flush=True)

    def summary(self) -> dict:
        """Run summary: mode, sizes, best validation sequence accuracy and when the target was reached."""
        data = self.trainer.datamodule if self._trainer is not None else None
        solved = int(self.solved_at_update) >= 0
        return {
            "mode": self.mode,
            "segment_length": self.segment_length,
            "max_length": getattr(data, "max_length", None),
            "batch_size": getattr(data, "batch_size", None),
            "hidden_size": self.hparams.hidden_size,
            "forget_bias": self.hparams.forget_bias,
            "lr": self.hparams.lr,
            "lr_milestones": self.lr_milestones,
            "best_val_seq_acc": float(self.best_val_seq_acc),
            "solved": solved,
            "solved_at_update": int(self.solved_at_update) if solved else None,
            "solved_at_sequences": int(self.solved_at_sequences) if solved else None,
            "updates": int(self.global_step),
            "sequences": int(self.sequences_seen),
            "wall_s": round(time.perf_counter() - self._fit_start, 1),
        }


def _accuracies(pred: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Counts of fully right sequences and of right copied bits. pred, targets, mask: [B, L]."""
    right = pred == targets
    return (right | ~mask).all(dim=1).sum(), (right & mask).sum()
