"""Plots for docs/benchmarks.md from the JSON files the benchmarks write.

    .venv/bin/python benchmarks/plot_benchmarks.py --core core.json --learner learner.json \
        --e2e e2e.json --out docs/figures
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_core(data, out: Path) -> None:
    rows = data["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for hidden, style in ((256, "-"), (512, "--")):
        sel = sorted((r for r in rows if r["N"] == hidden), key=lambda r: r["T"])
        if not sel:
            continue
        steps = [r["T"] for r in sel]
        for mode, color in (("tbptt", "C0"), ("rtrl", "C1"), ("rtrl_stepwise", "C2")):
            axes[0].plot(
                steps,
                [r["ms"][mode] for r in sel],
                style,
                color=color,
                marker="o",
                label=f"{mode} N={hidden}",
            )
        mb = 1 / 2**20
        axes[1].plot(
            steps,
            [r["saved"]["tbptt"] * mb for r in sel],
            style,
            color="C0",
            marker="o",
            label=f"tbptt: kept for backward, N={hidden}",
        )
        axes[1].plot(
            steps,
            [r["saved"]["rtrl"] * mb for r in sel],
            style,
            color="C1",
            marker="o",
            label=f"rtrl: kept for backward (incl. S_0), N={hidden}",
        )
        axes[1].plot(
            steps,
            [r["sens_bytes"] * mb for r in sel],
            style,
            color="C3",
            marker="s",
            label=f"rtrl: carried sensitivities, N={hidden}",
        )
    axes[0].set(
        xlabel="segment length T",
        ylabel="fwd + bwd per segment (ms)",
        yscale="log",
        title=f"eLSTM core, B=32, D=257, {data['threads']} thread(s)",
    )
    axes[1].set(xlabel="segment length T", ylabel="MB", title="memory vs T")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "bench_core.png", dpi=110)


def plot_bars(results, key_fn, ylabel, title, path: Path) -> None:
    names = list(results)
    cores = ["tbptt", "rtrl"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for i, core in enumerate(cores):
        vals = [key_fn(results[n], core) for n in names]
        ax.bar([j + (i - 0.5) * width for j in range(len(names))], vals, width, label=core)
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--core")
    parser.add_argument("--learner")
    parser.add_argument("--e2e")
    parser.add_argument("--out", default="docs/figures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.core:
        plot_core(json.loads(Path(args.core).read_text()), out)
    if args.learner:
        res = json.loads(Path(args.learner).read_text())["results"]
        plot_bars(
            res,
            lambda r, c: r[c],
            "seconds per update",
            "learner step (B=32, M=50, N=256)",
            out / "bench_learner.png",
        )
    if args.e2e:
        res = json.loads(Path(args.e2e).read_text())["results"]
        plot_bars(
            res,
            lambda r, c: r["fps"][c],
            "frames / s",
            "end-to-end training throughput",
            out / "bench_e2e.png",
        )


if __name__ == "__main__":
    main()
