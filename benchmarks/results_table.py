"""The learning results of docs/results.md: shipped CPU configs × cores × seeds, run by the recipe.

Each run is one ``python -m recipes fit --config <config> --model.init_args.core=<core>`` with seed
``s`` (``seed_everything`` and the env seed), one torch thread, ``--jobs`` runs at a time. For every
task the script writes the runs' learning curves into one PNG (``recipes.compare``: mean and min–max
over seeds per core), and a Markdown table of the final greedy returns (mean ± std over seeds), the
frames and the wall time per run, with the raw numbers in JSON beside it.

    python benchmarks/results_table.py --jobs 2 --out docs/results              # everything (~2 h on 2 cores)
    python benchmarks/results_table.py --tasks repeat_first_easy --cores rtrl tbptt --seeds 0 1

Runs go to ``runs/results/<task>/<core>/seed_<s>/`` (kept; a finished run is not repeated unless
``--force``). ``--cores`` and ``--seeds`` choose the runs to start; each task's table, curves and the
summary always cover every finished run found there, so a partial run never drops earlier ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# task label → config and overrides. Every config is a shipped CPU config (its header states its
# budget and what to expect); CountRecall and Autoencode learned with no core at this budget, so they
# are not shipped as configs and run as overrides of the RepeatPrevious config (popgym pays ±1/51 and
# ±1/52 per step there).
POPGYM = "configs/popgym/repeat_previous_easy.yaml"
TASK = "--model.init_args.task="
SCALE = "--model.init_args.reward_scale="
TASKS = {
    "repeat_first_easy": ("configs/popgym/repeat_first_easy.yaml", ()),
    "repeat_previous_easy": (POPGYM, ()),
    "count_recall_easy": (POPGYM, (TASK + "CountRecall", SCALE + "51")),
    "autoencode_easy": (POPGYM, (TASK + "Autoencode", SCALE + "52")),
    "stateless_cartpole_easy": ("configs/popgym/stateless_cartpole_easy.yaml", ()),
    "delayed_cue_online": ("configs/memory/delayed_cue_online.yaml", ()),
}
CORES = ("rtrl", "tbptt", "lstm", "feedforward")
#: every core a table can hold, in table order (``rtrl_stepwise``: the fully online config)
TABLE_CORES = ("rtrl", "rtrl_stepwise", "tbptt", "lstm", "feedforward")


def core_dir(task: str, core: str) -> Path:
    return ROOT / "runs" / "results" / task / core


def run_dir(task: str, core: str, seed: int) -> Path:
    return core_dir(task, core) / f"seed_{seed}"


def command(task: str, core: str, seed: int, extra: list[str]) -> list[str]:
    csv_logger = "lightning.pytorch.loggers.CSVLogger"
    folder = run_dir(task, core, seed)
    init = f"{{save_dir: {folder.parent}, name: '', version: {folder.name}}}"
    logger = f"[{{class_path: {csv_logger}, init_args: {init}}}]"
    config, overrides = TASKS[task]
    return [
        sys.executable, "-m", "recipes", "fit", "--config", config, *overrides,
        f"--model.init_args.core={core}", f"--seed_everything={seed}", f"--model.init_args.seed={seed}",
        "--model.init_args.num_threads=1", f"--trainer.default_root_dir={folder.parent}",
        f"--trainer.logger={logger}", *extra,
    ]  # fmt: skip


def read_result(folder: Path) -> dict | None:
    """Greedy return, frames and wall time of a finished run (None if it has not finished)."""
    evaluation, curve = folder / "evaluation.csv", folder / "learning_curve.csv"
    timing = folder / "wall_time.txt"
    if not (evaluation.exists() and curve.exists() and timing.exists()):
        return None
    metrics = {row["metric"]: float(row["value"]) for row in csv.DictReader(evaluation.open())}
    rows = list(csv.DictReader(curve.open()))
    tail = [float(r["episode_return"]) for r in rows[-max(1, len(rows) // 20) :]]
    return {
        "greedy_return": metrics["greedy_return"],
        "frames": float(rows[-1]["frames"]) if rows else 0.0,
        "final_training_return": statistics.fmean(tail) if tail else float("nan"),
        "first_training_return": float(rows[0]["episode_return"]) if rows else float("nan"),
        "wall_s": float(timing.read_text()),
    }


def finished_runs(task: str) -> dict[tuple[str, int], dict]:
    """Every finished run of ``task`` under ``runs/results``: (core, seed) → :func:`read_result`."""
    found = {}
    for core in TABLE_CORES:
        folders = core_dir(task, core).glob("seed_*")
        for seed in sorted(int(folder.name.removeprefix("seed_")) for folder in folders):
            if (result := read_result(run_dir(task, core, seed))) is not None:
                found[(core, seed)] = result
    return found


def run(task: str, core: str, seed: int, extra: list[str], force: bool) -> dict:
    folder = run_dir(task, core, seed)
    if not force and (done := read_result(folder)) is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = (folder / "fit.log").open("w")
    code = subprocess.call(command(task, core, seed, extra), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    (folder / "wall_time.txt").write_text(f"{time.perf_counter() - start:.1f}")
    if code != 0:
        raise RuntimeError(f"{task}/{core}/seed {seed} failed (exit {code}); see {folder / 'fit.log'}")
    result = read_result(folder)
    print(f"{task:24s} {core:12s} seed {seed}: greedy {result['greedy_return']:+.3f}  "
          f"{result['frames']:.0f} frames  {result['wall_s']:.0f} s", flush=True)  # fmt: skip
    return result


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:+.2f}"
    return f"{statistics.fmean(values):+.2f} ± {statistics.stdev(values):.2f}"


SUMMARY_HEAD = (
    "| task / core | seeds | greedy return (mean ± std) | training return, first → last 5 % | frames "
    "| wall time per run (min–max) |\n|---|---|---|---|---|---|"
)


def table(task: str, results: dict[str, list[dict]]) -> str:
    lines = [
        "| core | seeds | greedy return (mean ± std) | training return, first → last 5 % | frames "
        "| wall time per run (min–max) |",
        "|---|---|---|---|---|---|",
    ]
    for core, runs in results.items():
        greedy = [r["greedy_return"] for r in runs]
        first = statistics.fmean(r["first_training_return"] for r in runs)
        last = statistics.fmean(r["final_training_return"] for r in runs)
        walls = sorted(r["wall_s"] / 60 for r in runs)
        minutes = f"{walls[0]:.1f}" if len(walls) == 1 else f"{walls[0]:.1f}–{walls[-1]:.1f}"
        lines.append(
            f"| `{core}` | {len(runs)} | {mean_std(greedy)} | {first:+.2f} → {last:+.2f} | "
            f"{runs[0]['frames'] / 1e6:.2f}M | {minutes} min |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--cores", nargs="+", default=list(CORES), choices=TABLE_CORES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--out", default="docs/results", help="folder for the PNGs, tables and JSON")
    parser.add_argument("--force", action="store_true", help="re-run finished runs")
    parser.add_argument("--report", action="store_true", help="run nothing: tabulate the finished runs")
    # --cores and --seeds choose the runs to start; the tables hold every finished run (finished_runs)
    parser.add_argument("extra", nargs="*", help="further recipe overrides, after --")
    args = parser.parse_args(argv)
    jobs = [(t, c, s) for t in args.tasks for c in args.cores for s in args.seeds]
    if not args.report:
        with ThreadPoolExecutor(args.jobs) as pool:
            for future in [pool.submit(run, *job, args.extra, args.force) for job in jobs]:
                future.result()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    from recipes.compare import compare

    summary: list[str] = []
    for task in TASKS:  # the summary holds every task with finished runs; files only for --tasks
        finished = finished_runs(task)
        if not finished:
            continue
        results: dict[str, list[dict]] = {}
        for (c, _), result in finished.items():
            results.setdefault(c, []).append(result)
        text = table(task, results)
        if task in args.tasks:
            compare([run_dir(task, c, s) for c, s in finished], out / f"{task}.png", smoothing=20,
                    label_by=1, title=f"{task}: training return")  # fmt: skip
            (out / f"{task}.json").write_text(json.dumps(results, indent=1))
            (out / f"{task}.md").write_text(text + "\n")
            print(f"\n## {task}\n\n{text}\n", flush=True)
        summary.append(f"| **{task}** |" + " |" * 5)
        summary += ["| " + row.lstrip("| ") for row in text.splitlines()[2:]]
    (out / "summary.md").write_text("\n".join([SUMMARY_HEAD, *summary]) + "\n")


if __name__ == "__main__":
    main()
