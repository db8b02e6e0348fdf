"""Copy task (Irie et al., ICLR 2024, §4.1): an eLSTM must replay a random bit pattern after a delimiter.

One sequence of length 2T, with the pattern length t ~ U{1..T}:

    tokens   b_1 … b_t  #  …  #   # … #        (pattern, t delimiters, padding with # to 2T)
    targets  ·   …  ·   b_1 … b_t  · … ·        (· = not scored; loss/accuracy on the t copy-out steps)

Inputs are one-hot over {0, 1, #} ([B, 2T, 3]); as in the official generator, padding reuses the
delimiter token. Sequence accuracy counts a sequence as right only if every copied bit is right.

Two scorings, both logged at every validation (docs/copy_task.md):

* ours (``val/seq_acc``, ``val/bit_acc``): both bits of the copy-out window are scored;
* official (``val/official_seq_acc``, ``val/official_step_acc``): the released code's rule. Its target
  vocabulary gives the "1" bit the index the loss and accuracy ignore, so only "0" bits and (with the
  three-way output) the "no output" steps are scored; a model that copies nothing scores 100%.

``loss`` picks what is trained on, ``metric`` what ends the run and selects the best checkpoint,
``output`` the readout: ``"bits"`` (2 classes, copy-out steps only) or ``"three_way"`` (the official
{no output, 0, 1} at every step). ``configs/copy_task/official.yaml`` holds the official settings.

Training modes (``CopyTaskModule(mode=...)``), all with manual optimization so "updates" are explicit.
The RTRL and TBPTT modes are named, and run, as the core's gradient modes (``rtrl_modules.GRADIENT_MODES``):

* ``"rtrl"``           exact RTRL, segment form; one update per sequence, or per segment of
                       ``segment_length`` steps with the sensitivities carried (gradient still untruncated);
* ``"rtrl_stepwise"``  exact RTRL, step-by-step recursion; one update after every step that has a
                       scored position (fully online learning, the paper's setting);
* ``"tbptt"``          truncated BPTT: segments of ``segment_length`` = k steps, state carried, gradient
                       cut at each segment start, one update per segment;
* ``"bptt"``           full backprop through the whole sequence, one update per sequence.

``cell="dense"`` replaces the eLSTM with a fully recurrent tanh RNN (``limits.FullyRecurrentRNN``,
optionally sparse: ``density``) whose ``"rtrl"`` is exact dense RTRL (O(N⁴) per step), and adds its
approximate RTRL modes ``"snap1"``, ``"snap2"``, ``"uoro"`` (docs/limits.md §6); they need
``segment_length`` (the sensitivities are approximated only across segments).

    python -m recipes fit --config configs/copy_task/rtrl_stepwise.yaml
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from rtrl_modules import ELSTM
from rtrl_modules.core.checks import check_choice
from rtrl_modules.limits import APPROXIMATE_MODES, FullyRecurrentRNN

DELIMITER = 2  # token id of the delimiter (and of the padding, as in the official generator)
VOCAB_SIZE = 3  # one-hot input size: bits 0, 1 and the delimiter
NUM_CLASSES = 2  # the model predicts a bit at each copy-out step
# Official three-way output classes, in the released code's index order (its target vocabulary):
NO_OUTPUT = 0  # the "#" target ("no output"), scored there at every step outside the copy-out window
OFFICIAL_IGNORED = 2  # = the index of the "1" bit, and the official loss/accuracy ignore index
OUTPUTS: tuple[str, ...] = ("bits", "three_way")
METRICS: tuple[str, ...] = ("ours", "official")
# Logged names of (sequence accuracy, per-position accuracy, loss) per metric.
METRIC_KEYS = {"ours": ("seq_acc", "bit_acc", "loss"),
               "official": ("official_seq_acc", "official_step_acc", "official_loss")}  # fmt: skip
OFFICIAL_SIZES = {"train_size": 9_999, "val_size": 999, "test_size": 999}  # released generator's files

MODES: tuple[str, ...] = ("rtrl", "rtrl_stepwise", "tbptt", "bptt", *APPROXIMATE_MODES)
CELLS: tuple[str, ...] = ("elstm", "dense")  # eLSTM (element-wise, exact RTRL) or a dense tanh RNN
SUMMARY_PREFIX = "COPY_TASK_SUMMARY"  # stdout line with the run summary (benchmarks/copy_task_table.py)
# The core's gradient mode of each training mode (full BPTT: one "tbptt" segment over the sequence).
GRADIENT_OF_MODE = {"rtrl": "rtrl", "rtrl_stepwise": "rtrl_stepwise", "tbptt": "tbptt", "bptt": "tbptt"}
GRADIENT_OF_MODE |= {mode: mode for mode in APPROXIMATE_MODES}


# ------------------------------------------------------------------------------------------------ data
def sample_patterns(size: int, max_length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Pattern lengths t ~ U{1..T} ([size]) and bits ([size, T], only the first t used)."""
    if size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be ≥ 1, got {size} and {max_length}")
    lengths = torch.randint(1, max_length + 1, (size,), generator=generator)
    bits = torch.randint(0, 2, (size, max_length), generator=generator)
    return lengths, bits


def copy_batch(lengths: Tensor, bits: Tensor) -> dict[str, Tensor]:
    """The copy-task batch of the patterns ``lengths`` [B], ``bits`` [B, T] (sequences of 2T steps).

    Returns a dict with
        ``inputs``   [B, 2T, 3] float one-hot of ``tokens``;
        ``tokens``   [B, 2T] long input tokens (0, 1 or DELIMITER);
        ``targets``  [B, 2T] long: the bit to output at copy-out steps, 0 elsewhere (ignored);
        ``mask``     [B, 2T] bool, True at the t copy-out steps t..2t-1 (0-based);
        ``official_targets`` [B, 2T] long, the released code's three-way targets: NO_OUTPUT before
                     and after the copy-out window, bit + 1 in it, OFFICIAL_IGNORED from step T + t on
                     (its lines have T + t tokens, padded with that index to the longest line, 2T);
        ``is_init``  [B, 2T] bool, True at step 0 (every sequence is its own episode);
        ``lengths``  [B] long pattern lengths t ∈ {1..T}.
    """
    batch_size, max_length = bits.shape
    steps = 2 * max_length
    pos = torch.arange(steps).expand(batch_size, steps)
    t = lengths[:, None]
    in_pattern = pos < t
    mask = (pos >= t) & (pos < 2 * t)
    padded_bits = torch.cat((bits, bits.new_zeros(batch_size, max_length)), dim=1)  # [B, 2T]
    tokens = torch.where(in_pattern, padded_bits, torch.full_like(padded_bits, DELIMITER))
    source = (pos - t).clamp(min=0)  # copy-out step p replays bit p - t
    targets = torch.where(mask, padded_bits.gather(1, source), torch.zeros_like(padded_bits))
    official = torch.where(mask, targets + 1, torch.full_like(targets, NO_OUTPUT))
    official = official.masked_fill(pos >= max_length + t, OFFICIAL_IGNORED)
    return {
        "inputs": F.one_hot(tokens, VOCAB_SIZE).float(),
        "tokens": tokens,
        "targets": targets,
        "mask": mask,
        "official_targets": official,
        "is_init": pos == 0,
        "lengths": lengths,
    }


def make_copy_batch(batch_size: int, max_length: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Sample ``batch_size`` copy-task sequences of length 2T (T = ``max_length``); see ``copy_batch``."""
    return copy_batch(*sample_patterns(batch_size, max_length, generator))


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


def fixed_patterns(size: int, max_length: int, seed: int, chunk: int = 500) -> list[tuple[Tensor, Tensor]]:
    """A fixed set of ``size`` patterns from ``seed``, drawn in chunks of ``chunk``: the same every call."""
    generator = torch.Generator().manual_seed(seed)
    return [sample_patterns(min(chunk, size - i), max_length, generator) for i in range(0, size, chunk)]


class FixedSetStream(IterableDataset):
    """Endless passes over a fixed training set, reshuffled each pass (``seed``), in batches of
    ``batch_size`` (the last one of a pass smaller, like the official DataLoader's)."""

    def __init__(self, lengths: Tensor, bits: Tensor, batch_size: int, seed: int = 0):
        super().__init__()
        self.lengths, self.bits, self.batch_size, self.seed = lengths, bits, batch_size, seed

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            order = torch.randperm(len(self.lengths), generator=generator)
            for index in order.split(self.batch_size):
                yield copy_batch(self.lengths[index], self.bits[index])


class CopyTaskData(LightningDataModule):
    """Copy-task data: training sequences, a fixed validation set and an optional fixed test set.

    Args:
        max_length: T, the maximum pattern length; sequences have 2T steps.
        batch_size: B, sequences per training batch.
        seed: seed of the training data.
        val_size: sequences in the validation set (sequence accuracy is measured on all of them).
        val_seed: seed of the validation set (default: ``seed + 1_000_003``, disjoint stream).
        train_size: None: an endless stream of fresh sequences; n: a fixed set of n sequences, reshuffled
            every pass (the official setting: 9,999).
        test_size: sequences in the fixed test set, scored at the end of ``fit`` (None: no test set).
        test_seed: seed of the test set (default: ``seed + 2_000_006``).
    """

    def __init__(
        self,
        max_length: int = 10,
        batch_size: int = 32,
        seed: int = 0,
        val_size: int = 1000,
        val_seed: int | None = None,
        train_size: int | None = None,
        test_size: int | None = None,
        test_seed: int | None = None,
    ) -> None:
        super().__init__()
        sizes = {"max_length": max_length, "batch_size": batch_size, "val_size": val_size}
        sizes |= {k: v for k, v in (("train_size", train_size), ("test_size", test_size)) if v is not None}
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CopyTaskData: {name} must be a positive integer, got {value!r}")
        self.save_hyperparameters()
        self.max_length, self.batch_size, self.seed, self.val_size = max_length, batch_size, seed, val_size
        self.train_size, self.test_size = train_size, test_size
        self.val_seed = seed + 1_000_003 if val_seed is None else val_seed
        self.test_seed = seed + 2_000_006 if test_seed is None else test_seed

    def train_dataloader(self) -> DataLoader:
        if self.train_size is None:
            return DataLoader(CopyTaskStream(self.batch_size, self.max_length, self.seed), batch_size=None)
        lengths, bits = map(torch.cat, zip(*fixed_patterns(self.train_size, self.max_length, self.seed)))
        return DataLoader(FixedSetStream(lengths, bits, self.batch_size, self.seed), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return _fixed_loader(self.val_size, self.max_length, self.val_seed)

    def test_dataloader(self) -> DataLoader:
        if self.test_size is None:
            raise ValueError("CopyTaskData: no test set; set data.test_size (the official value is 999)")
        return _fixed_loader(self.test_size, self.max_length, self.test_seed)


def _fixed_loader(size: int, max_length: int, seed: int) -> DataLoader:
    """A fixed evaluation set in batches of ≤ 500 sequences, generated anew (identically) per call."""
    return DataLoader([copy_batch(*p) for p in fixed_patterns(size, max_length, seed)], batch_size=None)


# --------------------------------------------------------------------------------------------- scoring
def scored_targets(batch: dict[str, Tensor], output: str, metric: str) -> tuple[Tensor, Tensor]:
    """Targets in the ``output``'s class indices and where ``metric`` scores them, both [B, 2T].

    ours: the copy-out bits. official: the released rule, everything but OFFICIAL_IGNORED ("1" bits,
    tail padding); a two-way ``"bits"`` readout predicts only the copy-out window, where that rule
    scores the "0" bits alone.
    """
    if metric == "official" and output == "three_way":
        targets = batch["official_targets"]
        return targets, targets != OFFICIAL_IGNORED
    targets = batch["targets"] + (1 if output == "three_way" else 0)  # bit b is class b + 1 there
    scored = batch["mask"] if metric == "ours" else batch["mask"] & (batch["targets"] == 0)
    return targets, scored


def score_sums(logits: Tensor, batch: dict[str, Tensor], output: str) -> dict[str, float]:
    """Sums for both metrics over a batch: right sequences and positions, scored positions, loss."""
    pred = logits.argmax(-1)
    sums = {"n_seq": float(pred.shape[0])}
    for metric, (seq, per_position, loss) in METRIC_KEYS.items():
        targets, scored = scored_targets(batch, output, metric)
        right = pred == targets
        sums[seq] = (right | ~scored).all(dim=1).sum().item()
        sums[per_position] = (right & scored).sum().item()
        sums[f"n_{per_position}"] = scored.sum().item()
        sums[loss] = F.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
    return sums


def score_means(sums: dict[str, float]) -> dict[str, float]:
    """Accuracies and mean loss (per scored position) from accumulated ``score_sums``."""
    means = {}
    for seq, per_position, loss in METRIC_KEYS.values():
        n = max(sums[f"n_{per_position}"], 1.0)
        means |= {seq: sums[seq] / sums["n_seq"], per_position: sums[per_position] / n, loss: sums[loss] / n}
    return means


def evaluate(
    predict: Callable[[dict[str, Tensor]], Tensor], batches: Iterable[dict[str, Tensor]], output: str
) -> dict[str, float]:
    """Both metrics of ``predict`` (batch → logits [B, 2T, classes]) on ``batches`` (e.g. a
    ``CopyTaskData`` loader); ``output``: the logits' readout, ``"bits"`` or ``"three_way"``."""
    total: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            sums = score_sums(predict(batch), batch, output)
            total = {k: total.get(k, 0.0) + v for k, v in sums.items()}
    return score_means(total)


def copies_nothing(batch: dict[str, Tensor], output: str) -> Tensor:
    """Logits of a model that memorises nothing: bit "0" at every copy-out step, and (three-way
    readout) "no output" everywhere else. It only has to count the steps, not remember a bit."""
    if output == "bits":
        classes = torch.zeros_like(batch["targets"])
    else:
        classes = torch.where(batch["mask"], 1, NO_OUTPUT)  # class 1 = bit "0"
    return F.one_hot(classes, 3 if output == "three_way" else NUM_CLASSES).float()


class BestCheckpoint(ModelCheckpoint):
    """Keeps ``best.ckpt``, the checkpoint with the best validation score (its own class, so that it
    does not replace the CLI's ``last.ckpt`` checkpointing)."""


# ----------------------------------------------------------------------------------------------- model
class CopyTaskModule(LightningModule):
    """One-layer eLSTM + linear readout, trained on the copy task in one of four modes.

    Args:
        mode: ``"rtrl"``, ``"rtrl_stepwise"``, ``"tbptt"`` or ``"bptt"`` (module docstring). A plain
            ``str`` for the CLI, so that a renamed mode (``"rtrl_online"``) gets an error naming its
            new name.
        segment_length: k. Required for ``"tbptt"`` (the truncation); optional for ``"rtrl"`` (update
            after every k steps, sensitivities carried); must be unset for the other modes.
        hidden_size: N, eLSTM cells.
        forget_bias: initial forget-gate bias b_f of the eLSTM (None: as the ``init`` scheme draws it;
            3.0: f ≈ 0.95 at start, memory spanning the 2T steps, used by our configs).
        init: the eLSTM's initialisation scheme, ``"default"`` or ``"official"`` (the released code's
            N(0, 0.1²) for the cell's weights and biases, no forget-bias offset).
        output: ``"bits"`` (2 classes, trained and scored on the copy-out steps) or ``"three_way"``
            (the official {no output, 0, 1} readout, predicted at every step).
        loss: ``"ours"`` (cross-entropy on both copy-out bits) or ``"official"`` (the released loss:
            cross-entropy with the "1" bits ignored; module docstring).
        metric: ``"ours"`` or ``"official"``: the validation sequence accuracy that ends the run
            (``stop_at_accuracy``) and selects the best checkpoint. Both are always logged.
        keep_best: keep the best-validation checkpoint (``best.ckpt``, Lightning's ``ModelCheckpoint``
            on ``metric``) and score the data's test set with it at the end of ``fit``.
        lr: Adam learning rate.
        betas, eps: Adam's β = (β₁, β₂) and ε (official: (0.9, 0.995), 1e-9).
        lr_milestones: updates after which the learning rate is multiplied by ``lr_gamma``
            (torch's ``MultiStepLR``, stepped once per update); empty: constant.
        lr_gamma: the decay factor at each milestone.
        grad_clip: global gradient-norm clip per update (None: no clipping).
        stop_at_accuracy: stop training once the validation sequence accuracy by ``metric`` reaches
            this (None: never).
        num_threads: ``torch.set_num_threads`` at setup (None: leave as is).
        cell: ``"elstm"`` (default) or ``"dense"`` (a fully recurrent tanh RNN of ``hidden_size`` units;
            ``forget_bias`` and ``init`` do not apply to it); the modes ``"snap1"``, ``"snap2"``,
            ``"uoro"`` need ``"dense"``, and ``"rtrl_stepwise"`` needs ``"elstm"``.
        density: the dense core's fraction of off-diagonal recurrent weights (fixed random mask; 1 = dense).
    """

    def __init__(
        self,
        mode: str = "rtrl_stepwise",
        segment_length: int | None = None,
        hidden_size: int = 128,
        forget_bias: float | None = None,
        init: str = "default",
        output: str = "bits",
        loss: str = "ours",
        metric: str = "ours",
        keep_best: bool = False,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        grad_clip: float | None = 1.0,
        stop_at_accuracy: float | None = 1.0,
        num_threads: int | None = 1,
        cell: str = "elstm",
        density: float = 1.0,
    ) -> None:
        super().__init__()
        check_choice("copy-task mode", mode, MODES)
        check_choice("copy-task cell", cell, CELLS)
        needs = "dense" if mode in APPROXIMATE_MODES else "elstm" if mode == "rtrl_stepwise" else cell
        if cell != needs:
            raise ValueError(f"mode={mode!r} needs cell={needs!r}")
        if mode in APPROXIMATE_MODES and segment_length is None:
            raise ValueError(f"mode={mode!r} needs segment_length (one segment per sequence would be BPTT)")
        check_choice("copy-task output", output, OUTPUTS)
        check_choice("copy-task loss", loss, METRICS)
        check_choice("copy-task metric", metric, METRICS)
        if mode == "tbptt" and segment_length is None:
            raise ValueError("mode='tbptt' needs segment_length (the truncation k)")
        if mode in ("rtrl_stepwise", "bptt") and segment_length is not None:
            raise ValueError(f"mode={mode!r} takes no segment_length (got {segment_length})")
        if segment_length is not None and (not isinstance(segment_length, int) or segment_length < 1):
            raise ValueError(f"segment_length must be a positive integer, got {segment_length!r}")
        if hidden_size < 1 or lr <= 0:
            raise ValueError(f"hidden_size and lr must be positive, got {hidden_size} and {lr}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas) or eps <= 0:
            raise ValueError(f"betas must be two numbers in [0, 1) and eps positive, got {betas} and {eps}")
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
        self.output, self.loss, self.metric = output, loss, metric
        self.lr_milestones = milestones
        if cell == "dense":
            gradient = GRADIENT_OF_MODE[mode]
            self.core = FullyRecurrentRNN(VOCAB_SIZE, hidden_size, gradient=gradient, density=density)
        else:
            self.core = ELSTM(VOCAB_SIZE, hidden_size, output_gate=True, forget_bias=forget_bias, init=init)
        self.head = nn.Linear(hidden_size, 3 if output == "three_way" else NUM_CLASSES)
        # Progress counters (saved in checkpoints through the buffers).
        self.register_buffer("sequences_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("solved_at_update", torch.full((), -1, dtype=torch.long))
        self.register_buffer("solved_at_sequences", torch.full((), -1, dtype=torch.long))
        self.register_buffer("best_val_seq_acc", torch.zeros(()))  # by ``metric``
        self.register_buffer("best_val_update", torch.full((), -1, dtype=torch.long))
        self._val_sums: dict[str, float] = {}
        self._fit_start = 0.0
        self._test: dict = {}

    @property
    def monitor(self) -> str:
        """The logged validation sequence accuracy by ``metric`` (ends the run, selects ``best.ckpt``)."""
        return "val/" + METRIC_KEYS[self.metric][0]

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        if not self.lr_milestones:
            return optimizer
        schedule = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, self.lr_milestones, gamma=self.hparams.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_callbacks(self) -> list:
        if not self.hparams.keep_best:
            return []
        return [BestCheckpoint(monitor=self.monitor, mode="max", save_top_k=1, filename="best")]

    def setup(self, stage: str) -> None:
        if self.hparams.num_threads is not None:
            torch.set_num_threads(self.hparams.num_threads)

    def forward(self, inputs: Tensor, is_init: Tensor | None = None) -> Tensor:
        """Whole-sequence logits: inputs [B, L, 3], is_init [B, L] → [B, L, classes]."""
        out, _ = self.core(inputs, None, is_init=is_init)
        return self.head(out)

    def score(self, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """Both metrics (ours, official) of the model on ``batches``; see ``evaluate``."""
        return evaluate(lambda b: self(b["inputs"].to(self.device), b["is_init"].to(self.device)).cpu(),
                        batches, self.output)  # fmt: skip

    def _segment(self, steps: int) -> int:
        return {"rtrl_stepwise": 1, "bptt": steps}.get(self.mode, self.segment_length or steps)

    # --------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        opt, schedule = self.optimizers(), self.lr_schedulers()
        x, is_init = batch["inputs"], batch["is_init"]
        y, scored = scored_targets(batch, self.output, self.loss)
        batch_size, steps = y.shape
        k, gradient = self._segment(steps), GRADIENT_OF_MODE[self.mode]
        state = self.core.initial_state(batch_size)
        preds, losses = [], []
        for start in range(0, steps, k):
            seg = slice(start, start + k)
            out, state = self.core(x[:, seg], state, is_init=is_init[:, seg], gradient=gradient)
            logits = self.head(out)  # [B, k, classes]
            preds.append(logits.argmax(-1).detach())
            m = scored[:, seg]
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
        bits, mask = scored_targets(batch, self.output, "ours")
        right = pred == bits
        self.log_dict(
            {
                "train/loss": torch.stack(losses).mean() if losses else torch.tensor(math.nan),
                "train/seq_acc": (right | ~mask).all(dim=1).float().mean(),
                "train/bit_acc": (right & mask).sum() / mask.sum(),
                "progress/sequences": self.sequences_seen.float(),
                "progress/updates": float(self.global_step),
            },
            prog_bar=False,
        )

    # ------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        sums = score_sums(self(batch["inputs"], batch["is_init"]), batch, self.output)
        self._val_sums = {k: self._val_sums.get(k, 0.0) + v for k, v in sums.items()}

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        means = score_means(self._val_sums)
        self.log_dict(
            {
                **{f"val/{k}": v for k, v in means.items()},
                "progress/val_sequences": self.sequences_seen.float(),
                "progress/val_updates": float(self.global_step),
            },
            prog_bar=True,
        )
        if self.trainer.sanity_checking:
            return
        acc = means[METRIC_KEYS[self.metric][0]]
        # First strictly better score, compared in float32 as logged (and as ModelCheckpoint compares).
        if torch.tensor(acc) > self.best_val_seq_acc or self.best_val_update < 0:
            self.best_val_seq_acc.fill_(acc)
            self.best_val_update.fill_(self.global_step)
        target = self.hparams.stop_at_accuracy
        if target is not None and acc >= target:
            if self.solved_at_update < 0:
                self.solved_at_update.fill_(self.global_step)
                self.solved_at_sequences.fill_(self.sequences_seen.item())
            self.trainer.should_stop = True

    # ---------------------------------------------------------------------------------------- summary
    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()
        self._test = {}

    def on_fit_end(self) -> None:
        """Score the test set (if the data has one) with ``best.ckpt`` (``keep_best``) or the final
        weights; write ``summary.json`` next to the logs and print it on one line (``SUMMARY_PREFIX``)."""
        if self.trainer.global_rank != 0:
            return
        self._test = self._score_test_set()
        summary = self.summary()
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, "summary.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(path + ".tmp", path)
        print(f"{SUMMARY_PREFIX} {json.dumps(summary)}", flush=True)

    def _score_test_set(self) -> dict:
        data = self.trainer.datamodule
        if getattr(data, "test_size", None) is None:
            return {}
        best = next((c for c in self.trainer.callbacks if isinstance(c, BestCheckpoint)), None)
        path = best.best_model_path if best is not None else ""
        final = {k: v.clone() for k, v in self.state_dict().items()}
        if path:
            self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True)["state_dict"])
        scores = self.score(data.test_dataloader())
        update = int(self.best_val_update) if path else int(self.global_step)
        self.load_state_dict(final)
        for logger in self.loggers:
            logger.log_metrics({f"test/{k}": v for k, v in scores.items()}, step=self.global_step)
            logger.save()
        return {"checkpoint": path or "final weights", "update": update, **scores}

    def summary(self) -> dict:
        """Run summary: mode, sizes, best validation sequence accuracy (by ``metric``), when the target
        was reached, and the test-set scores (both metrics) if the data has a test set."""
        data = self.trainer.datamodule if self._trainer is not None else None
        solved = int(self.solved_at_update) >= 0
        return {
            "mode": self.mode,
            "segment_length": self.segment_length,
            "max_length": getattr(data, "max_length", None),
            "batch_size": getattr(data, "batch_size", None),
            "hidden_size": self.hparams.hidden_size,
            "forget_bias": self.hparams.forget_bias,
            "init": self.hparams.init,
            "output": self.output,
            "loss": self.loss,
            "metric": self.metric,
            "lr": self.hparams.lr,
            "lr_milestones": self.lr_milestones,
            "best_val_seq_acc": float(self.best_val_seq_acc),
            "best_val_update": int(self.best_val_update),
            "solved": solved,
            "solved_at_update": int(self.solved_at_update) if solved else None,
            "solved_at_sequences": int(self.solved_at_sequences) if solved else None,
            "updates": int(self.global_step),
            "sequences": int(self.sequences_seen),
            "wall_s": round(time.perf_counter() - self._fit_start, 1),
            "test": self._test or None,
        }
