"""Approximate RTRL (SnAp-1, SnAp-2, UORO, KF-RTRL) beside exact RTRL and TBPTT: fidelity, cost, learning.

    .venv/bin/python benchmarks/bench_approx.py fidelity   # gradient vs full BPTT, against N and M
    .venv/bin/python benchmarks/bench_approx.py cost       # time and memory per step, against N and M
    .venv/bin/python benchmarks/bench_approx.py learn --task copy          # copy task, T = 5
    .venv/bin/python benchmarks/bench_approx.py learn --task memory        # delayed cue, delay 8
    .venv/bin/python benchmarks/bench_approx.py learn --task memory_long   # delayed cue, delay 20
    .venv/bin/python benchmarks/bench_approx.py stacked    # 2-layer eLSTM stack: rtrl_uoro etc. vs BPTT
    (--quick: a smoke run of each)

Prints markdown tables; writes docs/figures/approx_*.png and docs/figures/approx_*.csv.
Learning runs: fully online (1-step segments), equal parameter counts (eLSTM N = 16 vs a dense tanh
RNN with a 25 %-dense recurrent matrix, N chosen to match the count of its nonzero weights + head).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from bench_limits import FIGURES, plt, slope, sweep, table, write_csv
from torch import nn

import rtrl_modules as rm
from rtrl_modules.limits import FullyRecurrentRNN, StackedELSTM, approximate_sweep, gradient_fidelity

METHODS = ("rtrl", "snap1", "snap2", "uoro", "kfrtrl", "tbptt")
COLORS = {method: f"C{i}" for i, method in enumerate(METHODS)}  # the same colour per method in every plot
DENSITY = 0.25  # recurrent density of the sparse networks (where SnAp-2 differs from exact RTRL)


# --------------------------------------------------------------------------------------- fidelity
def fidelity(quick: bool) -> None:
    seeds = (0, 1) if quick else (0, 1, 2, 3, 4)
    steps = 16 if quick else 64
    sizes = (4, 8) if quick else (8, 16, 32, 64)
    lengths = (1, 4) if quick else (1, 2, 4, 8, 16, 64)
    keys = ["gradient", "hidden_size", "segment_length", "cosine", "relative_error", "cosine_hh",
            "relative_error_hh"]  # fmt: skip
    results = {}
    for density in (1.0, DENSITY):
        methods = [m for m in METHODS[1:] if not (density == 1.0 and m == "snap2")]  # dense: snap2 = rtrl
        by_n = approximate_sweep(methods, sizes, (steps,), (1,), seeds, density=density)
        n_m = 16 if not quick else 8
        by_m = approximate_sweep(methods, (n_m,), (steps,), lengths, seeds, density=density)
        for title, rows, key in (("vs N (segment length 1)", by_n, "hidden_size"),
                                 (f"vs segment length M (N = {n_m})", by_m, "segment_length")):  # fmt: skip
            print(f"\n### density {density}, T = {steps}, {title}; mean over {len(seeds)} seeds\n")
            print(table(rows, keys))
            print(f"\nrelative error (cosine) vs full BPTT, all parameters:\n\n{pivot(rows, key)}")
        for r in by_n + by_m:
            r["density"] = density
        results[density] = (by_n, by_m)
    write_csv(
        [r for pair in results.values() for rows in pair for r in rows], FIGURES / "approx_fidelity.csv"
    )
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for col, (density, (by_n, by_m)) in enumerate(results.items()):
        for ax, rows, key in (
            (axes[2 * col], by_n, "hidden_size"),
            (axes[2 * col + 1], by_m, "segment_length"),
        ):
            for method in dict.fromkeys(r["gradient"] for r in rows):  # M = T is exact (0): not on a log axis
                sel = [r for r in rows if r["gradient"] == method and r["relative_error"] > 0]
                ax.plot([r[key] for r in sel], [r["relative_error"] for r in sel], "o-", label=method,
                        color=COLORS[method])  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"{key} (density {density})")
            ax.set_ylabel("relative error vs BPTT")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"approximate RTRL of a tanh RNN: gradient error vs full BPTT (= exact RTRL), T = {steps}")
    fig.tight_layout()
    fig.savefig(FIGURES / "approx_fidelity.png", dpi=110)
    plt.close(fig)


def pivot(rows: list[dict], key: str) -> str:
    """Markdown table: one row per value of ``key``, one column per method, "rel. error (cosine)"."""
    methods = list(dict.fromkeys(r["gradient"] for r in rows))
    lines = [f"| {key} | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for value in dict.fromkeys(r[key] for r in rows):
        cells = {
            r["gradient"]: f"{r['relative_error']:.3g} ({r['cosine']:.4f})" for r in rows if r[key] == value
        }
        lines.append(f"| {value} | " + " | ".join(cells[m] for m in methods) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ stacked eLSTM fidelity
STACKED_METHODS = ("rtrl", "rtrl_layerwise", "rtrl_uoro", "tbptt")


def stacked(quick: bool) -> None:
    """2-layer eLSTM stack, gradient vs full BPTT (exact ``"rtrl"`` as a check), mean over seeds, against N
    (M = 1) and segment length M (N = 8); writes docs/figures/approx_stacked_fidelity.csv."""
    seeds = (0, 1) if quick else (0, 1, 2, 3, 4)
    steps = 16 if quick else 64
    grids = (("hidden_size", (4, 8) if quick else (4, 8, 16), (1,)),
             ("segment_length", (8,), (1, 4) if quick else (1, 4, 16)))  # fmt: skip
    keys = ["gradient", "hidden_size", "segment_length", "carried_per_example", "cosine", "relative_error",
            "cosine_lower", "relative_error_lower"]  # fmt: skip
    all_rows = []
    for key, sizes, lengths in grids:
        rows = []
        for method in STACKED_METHODS:
            for n in sizes:
                for m in lengths:
                    reports = [gradient_fidelity(2, n, steps, m, gradient=method, seed=s) for s in seeds]
                    row = {"gradient": method, "hidden_size": n, "segment_length": m,
                           "carried_per_example": carried_numbers(method, n)}  # fmt: skip
                    row.update({k: sum(r[k] for r in reports) / len(reports) for k in reports[0]})
                    rows.append(row)
        print(f"\n### 2-layer eLSTM stack, T = {steps}, against {key}; mean over {len(seeds)} seeds\n")
        print(table(rows, keys))
        print(f"\nrelative error (cosine) vs full BPTT, all parameters:\n\n{pivot(rows, key)}")
        all_rows += rows
    write_csv(all_rows, FIGURES / "approx_stacked_fidelity.csv")


def carried_numbers(method: str, n: int, depth: int = 2, d: int = 4) -> int:
    """Sensitivity numbers a ``method`` carries per example across segments (0 for TBPTT)."""
    if method == "tbptt":
        return 0
    stack = StackedELSTM(d, [n] * depth, gradient=method)
    keys = stack.sensitivity_keys(cross=method != "rtrl_layerwise", gradient=method)
    return sum(shape.numel() for shape in keys.values())


# --------------------------------------------------------------------------------------------- cost
def cost(quick: bool, reps: int) -> None:
    d, batch = 16, 1
    sizes = [8, 16, 32] if quick else [16, 32, 64, 128, 256]
    larger = [] if quick else [512, 1024]  # only for the methods that are O(N²) in memory and ≤ O(N³) in time
    rows = []
    print(f"## cost per step against N (D = 16, B = 1, T = 4-step segments, float32, density {DENSITY})")
    for method in METHODS:
        make = _maker(method, d, DENSITY)
        rows += sweep(
            method, sizes + (larger if method not in ("rtrl", "snap2") else []), make, batch, 4, reps
        )
    print("\n## cost per step against segment length M (N = 64, D = 16, B = 1)")
    n_m, by_m = 32 if quick else 64, []
    for method in METHODS:
        for m in [1, 4] if quick else [1, 4, 16, 64]:
            (row,) = sweep(f"{method} M={m}", [n_m], _maker(method, d, DENSITY), batch, m, reps)
            by_m.append(dict(row, series=method, segment_length=m))
    rows = [dict(r, segment_length=4) for r in rows]
    print("\n## fitted log-log exponents against N (largest 3 sizes)")
    for method in METHODS:
        sel = [r for r in rows if r["series"] == method][-3:]
        xs = [r["x"] for r in sel]
        t = slope(xs, [r["seconds_per_step"] for r in sel])
        m = slope(xs, [r["state_bytes"] for r in sel])
        print(f"  {method:6s} time {t:5.2f}  memory {m:5.2f}")
    write_csv(rows + by_m, FIGURES / "approx_cost.csv")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method in METHODS:
        sel = [r for r in rows if r["series"] == method]
        style = {"label": method, "color": COLORS[method]}
        axes[0].loglog([r["x"] for r in sel], [r["seconds_per_step"] for r in sel], "o-", **style)
        axes[1].loglog([r["x"] for r in sel], [max(r["state_bytes"], 1) for r in sel], "o-", **style)
        sel = [r for r in by_m if r["series"] == method]
        axes[2].loglog(
            [r["segment_length"] for r in sel], [r["seconds_per_step"] for r in sel], "o-", **style
        )
    labels = (("N", "seconds per step (fwd+bwd)"), ("N", "carried state (bytes)"),
              ("segment length M (N = 64)", "seconds per step"))  # fmt: skip
    for ax, (xl, yl) in zip(axes, labels):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"cost of exact vs approximate RTRL, tanh RNN (density {DENSITY}), CPU, 1 thread")
    fig.tight_layout()
    fig.savefig(FIGURES / "approx_cost.png", dpi=110)
    plt.close(fig)


def _maker(method: str, d: int, density: float) -> Callable[[int], tuple]:
    return lambda n: (FullyRecurrentRNN(d, n, gradient=method, density=density), {"gradient": method})


# ----------------------------------------------------------------------------------------- learning
def dense_size_matching(target: int, input_size: int, classes: int, density: float) -> tuple[int, int]:
    """The N whose dense RNN (nonzero recurrent weights counted) + linear head is closest to ``target``."""

    def count(n: int) -> int:
        core = FullyRecurrentRNN(input_size, n, density=density)
        nonzero_u = n * n if core.recurrent_mask is None else int(core.recurrent_mask.sum())
        return n * input_size + nonzero_u + n + n * classes + classes

    best = min(range(4, 256), key=lambda n: abs(count(n) - target))
    return best, count(best)


def elstm_count(input_size: int, n: int, classes: int) -> int:
    return sum(p.numel() for p in rm.ELSTM(input_size, n).parameters()) + n * classes + classes


class Curve:
    """Validation points (sequences seen, accuracy) of one run."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []


def learn_copy(method: str, core: str, hidden: int, seed: int, max_length: int, updates: int) -> dict:
    """One fully online copy-task run through the recipe's module (``recipes.copy_task``)."""
    import lightning.pytorch as pl

    from recipes.copy_task import CopyTaskData, CopyTaskModule

    curve = Curve()

    class Record(pl.Callback):
        def on_validation_end(self, trainer, module) -> None:
            curve.points.append((int(module.sequences_seen), float(trainer.callback_metrics["val/seq_acc"])))

    pl.seed_everything(seed, verbose=False)
    kwargs = {"density": DENSITY} if core == "dense" else {"forget_bias": 3.0}
    module = CopyTaskModule(mode=method, segment_length=1, cell=core, hidden_size=hidden, lr=3e-3,
                            stop_at_accuracy=None, **kwargs)  # fmt: skip
    data = CopyTaskData(max_length=max_length, batch_size=32, seed=seed, val_size=500)
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:  # the run's summary.json goes there, not into the repo
        trainer = pl.Trainer(max_steps=updates, val_check_interval=25, check_val_every_n_epoch=None,
                             num_sanity_val_steps=0, enable_model_summary=False, callbacks=[Record()],
                             default_root_dir=root, **quiet)  # fmt: skip
        trainer.fit(module, data)
    return {"curve": curve.points, "wall_s": time.perf_counter() - start}


def memory_batch(batch: int, delay: int, cues: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Supervised delayed cue (the layout of ``rtrl_modules.envs.memory.DelayedCueEnv``): cue one-hot at
    t = 0, ``delay`` blank steps, decision flag at t = delay + 1; target = the cue, scored there only.
    Returns x [B, delay + 2, 2·cues + 1], is_init [B, delay + 2], target [B]."""
    steps = delay + 2
    target = torch.randint(cues, (batch,), generator=gen)
    x = torch.zeros(batch, steps, 2 * cues + 1)
    x[torch.arange(batch), 0, target] = 1.0
    x[:, -1, -1] = 1.0
    is_init = torch.zeros(batch, steps, dtype=torch.bool)
    is_init[:, 0] = True
    return x, is_init, target


def learn_memory(method: str, core: str, hidden: int, seed: int, delay: int, updates: int) -> dict:
    """Fully online (1-step segments) training on the supervised delayed cue; one update per sequence
    batch, at the decision step. Accuracy on 512 fixed sequences every 25 updates."""
    torch.manual_seed(seed)
    cues, batch = 2, 32
    d = 2 * cues + 1
    rnn = (
        FullyRecurrentRNN(d, hidden, gradient=method, density=DENSITY)
        if core == "dense"
        else rm.ELSTM(d, hidden)
    )
    head = nn.Linear(hidden, cues)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    gen, val = (
        torch.Generator().manual_seed(seed),
        memory_batch(512, delay, cues, torch.Generator().manual_seed(999)),
    )
    curve = []
    start = time.perf_counter()
    for update in range(updates + 1):
        if update % 25 == 0:
            with torch.no_grad():
                out, _ = rnn(val[0], None, is_init=val[1])
                curve.append((update * batch, float((head(out[:, -1]).argmax(-1) == val[2]).float().mean())))
        if update == updates:
            break
        x, is_init, target = memory_batch(batch, delay, cues, gen)
        state = rnn.initial_state(batch)
        for t in range(x.shape[1]):
            out, state = rnn(x[:, t : t + 1], state, is_init=is_init[:, t : t + 1], gradient=method)
        loss = F.cross_entropy(head(out[:, -1]), target)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return {"curve": curve, "wall_s": time.perf_counter() - start}


RUNS = [("elstm", "rtrl"), ("dense", "rtrl"), ("dense", "snap1"), ("dense", "snap2"), ("dense", "uoro"),
        ("dense", "kfrtrl"), ("dense", "tbptt")]  # fmt: skip


LEARN_TASKS = {  # input size, classes, T (copy) or delay (memory), optimizer updates (full run)
    "copy": (3, 2, 5, 6000),
    "memory": (5, 2, 8, 1500),
    "memory_long": (5, 2, 20, 1500),
}


def learn(quick: bool, seeds: Sequence[int], task: str) -> None:
    """All of ``RUNS`` on one task over ``seeds``; writes approx_learning_{task}.png and .csv."""
    torch.set_num_threads(1)
    d, classes, length, updates = LEARN_TASKS[task]
    updates = max(updates // 15, 40) if quick else updates
    rows, points = [], []
    fig, ax = plt.subplots(figsize=(7, 4.4))
    target = elstm_count(d, 16, classes)
    n_dense, dense_count = dense_size_matching(target, d, classes, DENSITY)
    print(f"## {task}: eLSTM N = 16 ({target} parameters) vs dense RNN N = {n_dense} (density "
          f"{DENSITY}: {dense_count} nonzero parameters), {updates} updates", flush=True)  # fmt: skip
    for core, method in RUNS:
        hidden = 16 if core == "elstm" else n_dense
        finals, walls, curves = [], [], []
        for seed in seeds:
            fit = learn_copy if task == "copy" else learn_memory
            run = fit(method, core, hidden, seed, length, updates)
            curves.append(run["curve"])
            finals.append(sum(acc for _, acc in run["curve"][-3:]) / len(run["curve"][-3:]))
            walls.append(run["wall_s"])
            points += [{"task": task, "core": core, "gradient": method, "seed": seed, "sequences": x,
                        "accuracy": acc} for x, acc in run["curve"]]  # fmt: skip
            print(
                f"  {core:5s} {method:6s} seed {seed}: final acc {finals[-1]:.3f} ({walls[-1]:.0f} s)",
                flush=True,
            )
        steps = min(map(len, curves))
        mean = [sum(c[i][1] for c in curves) / len(curves) for i in range(steps)]
        ax.plot([x for x, _ in curves[0][:steps]], mean, label=f"{core} {method}")
        avg = sum(finals) / len(finals)
        std = math.sqrt(sum((f - avg) ** 2 for f in finals) / max(len(finals) - 1, 1))
        rows.append({"task": task, "core": core, "gradient": method, "hidden_size": hidden,
                     "parameters": target if core == "elstm" else dense_count, "final_accuracy_mean": avg,
                     "final_accuracy_std": std, "seeds": len(seeds),
                     "wall_s_per_run": sum(walls) / len(walls)})  # fmt: skip
    what = f"sequence accuracy (T = {length})" if task == "copy" else f"accuracy (delay {length})"
    ax.set_xlabel("training sequences")
    ax.set_ylabel(f"validation {what}")
    ax.set_title(f"{task}: fully online (1-step segments), mean over {len(seeds)} seeds", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    keys = ["task", "core", "gradient", "hidden_size", "parameters", "final_accuracy_mean",
            "final_accuracy_std", "seeds", "wall_s_per_run"]  # fmt: skip
    print("\n" + table(rows, keys))
    write_csv(rows, FIGURES / f"approx_learning_{task}.csv")
    write_csv(points, FIGURES / f"approx_learning_{task}_curves.csv")
    fig.tight_layout()
    fig.savefig(FIGURES / f"approx_learning_{task}.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("fidelity", "cost", "learn", "stacked"))
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--task", default="copy", choices=tuple(LEARN_TASKS), help="for learn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    FIGURES.mkdir(parents=True, exist_ok=True)
    if args.what == "fidelity":
        fidelity(args.quick)
    elif args.what == "stacked":
        stacked(args.quick)
    elif args.what == "cost":
        cost(args.quick, args.reps)
    else:
        learn(args.quick, args.seeds, args.task)


if __name__ == "__main__":
    main()
