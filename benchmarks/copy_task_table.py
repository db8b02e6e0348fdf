"""The copy-task truncation table (docs/copy_task.md): stepwise RTRL vs full BPTT vs TBPTT (k < T).

Each row is one ``python -m recipes fit`` run of a config in ``configs/copy_task/`` with a fixed
update budget; the run stops early once all 1000 validation sequences are copied perfectly. Rows run
``--jobs`` at a time, one thread each. The script prints a Markdown table and writes it, with the raw
summaries, to ``--out``.

    python benchmarks/copy_task_table.py --jobs 2 --out docs/copy_task_table.md

``--metrics`` instead scores models by both metrics (ours, and the official code's, which ignores
the "1" bits) on a fixed 999-sequence test set: a model that memorises nothing (no training) at
T = 50 and 500, and the best-validation checkpoints of short runs with our loss and the official one.

    python benchmarks/copy_task_table.py --metrics --jobs 2 --out docs/copy_task_metrics.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# = recipes.copy_task.SUMMARY_PREFIX (not imported: keeps this script free of torch)
PREFIX = "COPY_TASK_SUMMARY"


@dataclass
class Row:
    label: str
    config: str  # configs/copy_task/<config>.yaml
    max_length: int  # T
    max_steps: int  # update budget
    segment_length: int | None = None
    minutes: int = 3  # wall-clock cap (trainer.max_time)
    extra: tuple[str, ...] = ()  # further CLI overrides

    def command(self, log_dir: str | None = None) -> list[str]:
        cmd = [
            "python", "-m", "recipes", "fit", "--config", f"configs/copy_task/{self.config}.yaml",
            f"--data.init_args.max_length={self.max_length}", f"--trainer.max_steps={self.max_steps}",
            f"--trainer.max_time=00:00:{self.minutes:02d}:00",
        ]  # fmt: skip
        if self.segment_length is not None:
            cmd.append(f"--model.init_args.segment_length={self.segment_length}")
        cmd += list(self.extra)
        if log_dir is not None:  # keep table runs apart from interactive ones
            csv = "lightning.pytorch.loggers.CSVLogger"
            logger = f"[{{class_path: {csv}, init_args: {{save_dir: {log_dir}}}}}]"
            cmd += [f"--trainer.default_root_dir={log_dir}", f"--trainer.logger={logger}"]
        return cmd


# Budgets: an update cap and a wall-clock cap per row (~21 CPU-minutes in all, sized for a shared 2-core
# CPU); a row stops at whichever comes first, or once solved ("used" says where). Stepwise RTRL makes
# ~2T-1 updates per batch of sequences, TBPTT 2T/k, full BPTT one.
ROWS = [
    Row("RTRL stepwise", "rtrl_stepwise", 10, 60_000, minutes=4),
    Row("full BPTT", "bptt", 10, 8_000, minutes=4),
    Row("TBPTT k=5", "tbptt", 10, 20_000, segment_length=5, minutes=4),
    Row("RTRL stepwise", "rtrl_stepwise", 20, 60_000, minutes=2),
    Row("full BPTT", "bptt", 20, 4_000, minutes=2),
    Row("TBPTT k=10", "tbptt", 20, 8_000, segment_length=10, minutes=2),
    Row("RTRL stepwise", "rtrl_stepwise", 50, 60_000, minutes=1),
    Row("full BPTT", "bptt", 50, 2_000, minutes=1),
    Row("TBPTT k=25", "tbptt", 50, 4_000, segment_length=25, minutes=1),
]
# Longer budget at T = 10 (``--long``): exact RTRL with one update per sequence batch (its gradient is full
# BPTT's, tested), run until solved, to show where 100% is reached: the config's lr decay (10x after
# 8,000 updates) and a constant lr.
_LONG = ("--trainer.val_check_interval=50",)
LONG_ROWS = [
    Row("RTRL per sequence, lr decay at 8k", "rtrl", 10, 20_000, minutes=22, extra=_LONG),
    Row("RTRL per sequence, constant lr", "rtrl", 10, 20_000, minutes=22,
        extra=(*_LONG, "--model.init_args.lr_milestones=[]")),
]  # fmt: skip

# Both metrics (``--metrics``): each run keeps its best-validation checkpoint and scores the test set with it.
_TESTED = ("--model.init_args.keep_best=true", "--data.init_args.test_size=999")
METRIC_ROWS = [
    Row("our loss (rtrl config)", "rtrl", 10, 20_000, minutes=5,
        extra=(*_TESTED, "--trainer.val_check_interval=50")),
    Row("official loss, N = 128, lr 3e-3 (official config)", "official", 10, 1_000_000, minutes=5,
        extra=("--model.init_args.hidden_size=128", "--model.init_args.lr=3e-3")),
    Row("official config (N = 2048, lr 3e-5), validated every 10 batches", "official", 50, 3_950_000,
        minutes=5, extra=("--trainer.val_check_interval=10",)),
]  # fmt: skip


def run_row(row: Row, log_root: Path) -> dict:
    name = f"{row.config}_T{row.max_length}" + (f"_k{row.segment_length}" if row.segment_length else "")
    log_dir = log_root / (name + ("_metrics" if row in METRIC_ROWS else ""))
    cmd = row.command(str(log_dir))
    cmd[0] = sys.executable
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"row {row.label} T={row.max_length} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(lines[-1][len(PREFIX) :])
    summary["process_s"] = round(time.perf_counter() - start, 1)
    print(f"done: {row.label} T={row.max_length}: {summary}", file=sys.stderr, flush=True)
    return summary


def markdown(rows: list[Row], summaries: list[dict]) -> str:
    head = (
        "| T | mode | val. seq. acc. | reached 100% at updates / sequences | budget (updates / min) "
        "| used updates / sequences | wall s | command |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row, s in zip(rows, summaries):
        reached = "not reached"
        if s["solved"]:
            reached = f"{s['solved_at_update']:,} / {s['solved_at_sequences']:,}"
        cmd = shlex.join(row.command())
        lines.append(
            f"| {row.max_length} | {row.label} | {100 * s['best_val_seq_acc']:.1f}% | {reached} "
            f"| {row.max_steps:,} / {row.minutes} | {s['updates']:,} / {s['sequences']:,} "
            f"| {s['wall_s']:.0f} | `{cmd}` |"
        )
    return head + "\n".join(lines) + "\n"


def score_copies_nothing(max_lengths: tuple[int, ...] = (50, 500)) -> list[dict]:
    """Both metrics of the model that memorises nothing (``recipes.copy_task.copies_nothing``) on the
    fixed 999-sequence test set (official sizes, seed 0), for each readout and T."""
    from recipes.copy_task import OFFICIAL_SIZES, CopyTaskData, copies_nothing, evaluate

    results = []
    for max_length in max_lengths:
        test = list(CopyTaskData(max_length=max_length, **OFFICIAL_SIZES).test_dataloader())
        for output in ("three_way", "bits"):
            scores = evaluate(lambda batch: copies_nothing(batch, output), test, output)  # noqa: B023
            results.append({"max_length": max_length, "output": output, **scores})
    return results


def metrics_markdown(nothing: list[dict], rows: list[Row], summaries: list[dict]) -> str:
    """The both-metrics table: test-set scores (%) by our metric and the official one."""
    head = (
        "| model | T | trained (updates / sequences / wall s) | ours: seq. acc. | ours: bit acc. "
        "| official: seq. acc. | official: step acc. | command |\n|---|---|---|---|---|---|---|---|\n"
    )
    pct = "{:.1f}%".format
    lines = []
    readout = {"three_way": "three-way readout", "bits": "two-way readout"}
    for r in nothing:
        lines.append(
            f"| memorises nothing ({readout[r['output']]}) | {r['max_length']} | not trained "
            f"| {pct(100 * r['seq_acc'])} | {pct(100 * r['bit_acc'])} | {pct(100 * r['official_seq_acc'])} "
            f"| {pct(100 * r['official_step_acc'])} | `python benchmarks/copy_task_table.py --metrics` |"
        )
    for row, s in zip(rows, summaries):
        t = s["test"]
        lines.append(
            f"| {row.label}: best of {s['updates']:,} updates (at {t['update']:,}) | {row.max_length} "
            f"| {s['updates']:,} / {s['sequences']:,} / {s['wall_s']:.0f} | {pct(100 * t['seq_acc'])} "
            f"| {pct(100 * t['bit_acc'])} | {pct(100 * t['official_seq_acc'])} "
            f"| {pct(100 * t['official_step_acc'])} | `{shlex.join(row.command())}` |"
        )
    return head + "\n".join(lines) + "\n"


def plot_curves(rows: list[Row], log_root: Path, out: Path, max_length: int = 10) -> None:
    """Validation sequence accuracy vs optimizer updates for the rows at T = ``max_length`` (PNG)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for row in rows:
        if row.max_length != max_length:
            continue
        name = f"{row.config}_T{row.max_length}" + (f"_k{row.segment_length}" if row.segment_length else "")
        files = sorted((log_root / name).glob("**/metrics.csv"))
        if not files:
            continue
        with open(files[-1]) as f:
            points = [
                (float(r["progress/val_updates"]), 100 * float(r["val/seq_acc"]))
                for r in csv.DictReader(f)
                if r.get("val/seq_acc") and r.get("progress/val_updates")
            ]
        if points:
            style = "--" if row in LONG_ROWS else "-"  # per-sequence RTRL overlays full BPTT exactly
            ax.plot(*zip(*points), style, label=row.label)
    ax.set_xscale("log")
    ax.set_xlabel("optimizer updates")
    ax.set_ylabel("validation sequence accuracy (%)")
    ax.set_title(f"Copy task, T = {max_length} (eLSTM N = 128, batch 128)")
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--jobs", type=int, default=2, help="rows run in parallel (one thread each)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "copy_task_table.md")
    parser.add_argument("--log-root", type=Path, default=ROOT / "runs" / "copy_task_table")
    parser.add_argument("--only-T", type=int, nargs="*", help="run only these T")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "copy_task_curves.png")
    parser.add_argument("--plot-only", action="store_true", help="only redraw --figure from --log-root")
    parser.add_argument("--long", action="store_true", help="run LONG_ROWS instead of ROWS")
    parser.add_argument("--metrics", action="store_true", help="both metrics: METRIC_ROWS + copies nothing")
    args = parser.parse_args()
    if args.metrics:
        with ThreadPoolExecutor(args.jobs) as pool:
            summaries = list(pool.map(lambda r: run_row(r, args.log_root), METRIC_ROWS))
        nothing = score_copies_nothing()
        table = metrics_markdown(nothing, METRIC_ROWS, summaries)
        print(table)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(
            json.dumps({"copies_nothing": nothing, "runs": summaries}, indent=2)
        )
        return
    rows = [r for r in (LONG_ROWS if args.long else ROWS) if not args.only_T or r.max_length in args.only_T]
    if args.plot_only:
        plot_curves(ROWS + LONG_ROWS, args.log_root, args.figure)
        return
    with ThreadPoolExecutor(args.jobs) as pool:
        summaries = list(pool.map(lambda r: run_row(r, args.log_root), rows))
    table = markdown(rows, summaries)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    args.out.with_suffix(".json").write_text(json.dumps(summaries, indent=2))
    plot_curves(ROWS + LONG_ROWS, args.log_root, args.figure)


if __name__ == "__main__":
    main()
