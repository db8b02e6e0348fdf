"""The limits of RTRL, measured: cost per step against N and L, and the layer-wise mode's fidelity.

    .venv/bin/python benchmarks/bench_limits.py            # full run (a few minutes on 2 CPU cores)
    .venv/bin/python benchmarks/bench_limits.py --quick    # smoke run

Prints markdown tables and fitted log-log exponents; writes docs/figures/limits_*.png and
docs/figures/limits_*.csv. Time per step = (forward + backward of one segment) / T, the minimum
over repetitions (robust to other load on the machine). Memory = bytes of the carried RTRL
state (cell state + sensitivities), which is what grows with N and L; it does not depend on T.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import torch

import rtrl_modules as rm
from rtrl_modules.limits import FullyRecurrentRNN, StackedELSTM, fidelity_sweep

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state.values(include_nested=True, leaves_only=True))


def time_per_step(model, batch: int, steps: int, reps: int, **call) -> tuple[float, int]:
    """(min seconds per step of forward + backward over one segment, carried state bytes)."""
    x = torch.randn(batch, steps, model.input_size)
    if isinstance(model, StackedELSTM):
        state = model.initial_state(batch, cross=call.get("gradient") == "rtrl")
    else:
        state = model.initial_state(batch)
    best = math.inf
    for _ in range(reps + 1):  # the first run warms up
        start = time.perf_counter()
        out, new = model(x, state, **call)
        out.square().sum().backward()
        best = min(best, time.perf_counter() - start)
    return best / steps, state_bytes(new)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def sweep(name: str, values: Sequence[int], make: Callable[[int], tuple], batch: int, steps: int, reps: int):
    rows = []
    for v in values:
        model, call = make(v)
        seconds, nbytes = time_per_step(model, batch, steps, reps, **call)
        rows.append({"series": name, "x": v, "seconds_per_step": seconds, "state_bytes": nbytes})
        print(f"  {name:28s} x={v:6d}  {seconds * 1e3:10.3f} ms/step  {nbytes / 2**20:10.3f} MiB", flush=True)
    return rows


def fits(rows: list[dict], tail: int) -> dict[str, float]:
    xs = [r["x"] for r in rows][-tail:]
    return {
        "time (all points)": slope([r["x"] for r in rows], [r["seconds_per_step"] for r in rows]),
        f"time (largest {tail})": slope(xs, [r["seconds_per_step"] for r in rows][-tail:]),
        f"memory (largest {tail})": slope(xs, [r["state_bytes"] for r in rows][-tail:]),
    }


def plot_scaling(groups: dict[str, list[dict]], xlabel: str, path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in groups.items():
        xs = [r["x"] for r in rows]
        axes[0].loglog(xs, [r["seconds_per_step"] for r in rows], "o-", label=name)
        axes[1].loglog(xs, [r["state_bytes"] for r in rows], "o-", label=name)
    for ax, ylabel in zip(axes, ("seconds per step (fwd+bwd)", "carried RTRL state (bytes)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def table(rows: list[dict], keys: Sequence[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is stable when shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    FIGURES.mkdir(parents=True, exist_ok=True)
    print(f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# python {platform.python_version()}, torch {torch.__version__}\n")
    q = args.quick
    batch, steps, d = 1, 4, 16

    print("## cost per step against N (D = 16, B = 1, float32)")
    rnn = sweep(
        "fully recurrent tanh RNN",
        [8, 16, 32] if q else [16, 32, 48, 64, 96, 128, 160, 192],
        lambda n: (FullyRecurrentRNN(d, n), {"gradient": "rtrl"}),
        batch,
        steps,
        args.reps,
    )
    elstm = sweep(
        "eLSTM, no output gate",
        [16, 64, 256] if q else [16, 64, 256, 1024, 4096, 16384, 65536],
        lambda n: (rm.ELSTM(d, n, output_gate=False), {"gradient": "rtrl"}),
        batch,
        steps,
        args.reps,
    )
    elstm_gate = sweep(  # the output gate O [N, D + N] is feed-forward but costs N² per step
        "eLSTM with output gate",
        [16, 64, 256] if q else [16, 64, 256, 1024, 2048, 4096],
        lambda n: (rm.ELSTM(d, n), {"gradient": "rtrl"}),
        batch,
        steps,
        args.reps,
    )
    exact2 = sweep(
        "2-layer eLSTM, exact",
        [8, 16] if q else [8, 16, 24, 32, 48, 64],
        lambda n: (StackedELSTM(d, [n, n]), {"gradient": "rtrl"}),
        batch,
        steps,
        args.reps,
    )
    layerwise2 = sweep(
        "2-layer eLSTM, layer-wise RTRL",
        [8, 16] if q else [16, 64, 256, 1024, 4096],
        lambda n: (StackedELSTM(d, [n, n]), {"gradient": "rtrl_layerwise"}),
        batch,
        steps,
        args.reps,
    )
    print("\n## cost per step against depth L (N = D = 16)")
    depth_exact = sweep(
        "L-layer eLSTM, exact",
        [1, 2, 3] if q else [1, 2, 3, 4, 5, 6],
        lambda n_layers: (StackedELSTM(d, [16] * n_layers), {"gradient": "rtrl"}),
        batch,
        steps,
        args.reps,
    )
    depth_layerwise = sweep(
        "L-layer eLSTM, layer-wise RTRL",
        [1, 2, 3] if q else [1, 2, 3, 4, 5, 6],
        lambda n_layers: (StackedELSTM(d, [16] * n_layers), {"gradient": "rtrl_layerwise"}),
        batch,
        steps,
        args.reps,
    )

    print("\n## fitted log-log exponents")
    fitted = []
    for name, rows, tail in (
        ("fully recurrent RNN vs N", rnn, 4),
        ("eLSTM (no gate) vs N", elstm, 3),
        ("eLSTM (gate) vs N", elstm_gate, 3),
        ("2-layer exact vs N", exact2, 3),
        ("2-layer layer-wise vs N", layerwise2, 3),
        ("exact stack vs L", depth_exact, 3),
        ("layer-wise stack vs L", depth_layerwise, 3),
    ):
        row = {"series": name, **fits(rows, tail)}
        fitted.append(row)
        print(f"  {name:28s} " + "  ".join(f"{k}: {v:5.2f}" for k, v in row.items() if k != "series"))

    plot_scaling(
        {"fully recurrent RNN (exact)": rnn, "eLSTM, no gate (exact)": elstm,
         "eLSTM + output gate": elstm_gate, "2-layer eLSTM exact": exact2,
         "2-layer eLSTM layer-wise": layerwise2},
        "hidden size N",
        FIGURES / "limits_scaling_n.png",
        "RTRL cost per step vs N (D = 16, B = 1, CPU)",
    )  # fmt: skip
    plot_scaling(
        {"exact (L(L+1)/2 blocks)": depth_exact, "layer-wise RTRL": depth_layerwise},
        "number of layers L",
        FIGURES / "limits_scaling_depth.png",
        "eLSTM stack: RTRL cost per step vs depth (N = D = 16)",
    )
    scaling = rnn + elstm + elstm_gate + exact2 + layerwise2 + depth_exact + depth_layerwise
    write_csv(scaling, FIGURES / "limits_scaling.csv")

    print("\n## gradient fidelity of layer-wise RTRL vs full BPTT (fully online: segment length 1)")
    base_t = 64 if q else 256
    fid_depth = fidelity_sweep(depths=(1, 2, 3) if q else (1, 2, 3, 4), hidden_sizes=(8,), steps=(base_t,))
    fid_n = fidelity_sweep(depths=(2,), hidden_sizes=(4, 8) if q else (4, 8, 16, 32), steps=(base_t,))
    lengths = (8, 32) if q else (8, 16, 32, 64, 128, 256, 512)
    fid_t = fidelity_sweep(depths=(2,), hidden_sizes=(8,), steps=lengths)
    fid_m = fidelity_sweep(
        depths=(2,), hidden_sizes=(8,), steps=(base_t,), segment_lengths=(1, 8) if q else (1, 4, 16, 64, 256)
    )
    fid_trunc = fidelity_sweep(
        depths=(2,),
        hidden_sizes=(8,),
        steps=(base_t,),
        segment_lengths=(1, 8) if q else (1, 4, 16, 64, 256),
        lower_gradient="tbptt",
    )
    keys = ["depth", "hidden_size", "steps", "segment_length", "cosine", "relative_error", "cosine_lower",
            "relative_error_lower"]  # fmt: skip
    for title, rows in (
        ("vs depth", fid_depth),
        ("vs hidden size", fid_n),
        ("vs sequence length", fid_t),
        ("vs segment length", fid_m),
        ("vs segment length, lower layers truncated (lower_gradient='tbptt')", fid_trunc),
    ):
        print(f"\n### {title}\n" + table(rows, keys))
    for rows in (fid_depth, fid_n, fid_t, fid_m, fid_trunc):
        for r in rows:
            r["lower_gradient"] = "tbptt" if rows is fid_trunc else "rtrl"
    write_csv(fid_depth + fid_n + fid_t + fid_m + fid_trunc, FIGURES / "limits_fidelity.csv")

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, rows, key, label in (
        (axes[0], fid_depth, "depth", "depth L (N = 8)"),
        (axes[1], fid_n, "hidden_size", "hidden size N (L = 2)"),
        (axes[2], fid_t, "steps", "sequence length T (L = 2)"),
        (axes[3], fid_m, "segment_length", "segment length M (L = 2)"),
    ):
        xs = [r[key] for r in rows]
        ax.plot(xs, [r["cosine"] for r in rows], "o-", label="cos sim (all params)")
        ax.plot(xs, [r["relative_error"] for r in rows], "s-", label="rel. error (all params)")
        ax.plot(xs, [r["cosine_lower"] for r in rows], "o--", label="cos sim (lower layers)")
        ax.plot(xs, [r["relative_error_lower"] for r in rows], "s--", label="rel. error (lower layers)")
        if key != "depth":
            ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[3].plot(
        [r["segment_length"] for r in fid_trunc],
        [r["relative_error_lower"] for r in fid_trunc],
        "x:",
        label="rel. error (lower, truncated)",
    )
    axes[0].legend(fontsize=7)
    axes[3].legend(fontsize=7)
    fig.suptitle("layer-wise RTRL vs full BPTT (eLSTM stack, float64, one sequence, no resets)")
    fig.tight_layout()
    fig.savefig(FIGURES / "limits_fidelity.png", dpi=110)
    plt.close(fig)
    print(f"\nwrote {FIGURES}/limits_scaling_n.png, limits_scaling_depth.png, limits_fidelity.png and CSVs")


if __name__ == "__main__":
    main()
