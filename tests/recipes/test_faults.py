"""Faults and mistakes a recipe run must survive or report in one line: divergence, failed checkpoint
writes, resume with changed settings, bad configurations."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes.callbacks import AtomicCheckpointIO, CheckpointWriteError
from recipes.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs/default.yaml")
QUICK = ["--model.init_args.eval_episodes=0", "--trainer.enable_model_summary=false"]


def fit(tmp_path: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m recipes fit`` on the default config (32 envs × M = 3: 96 frames per update)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "recipes", "fit", "--config", CONFIG, *QUICK,
         f"--trainer.default_root_dir={tmp_path}", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def error_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------------ divergence
def test_huge_learning_rate_stops_the_run_with_one_line(tmp_path):
    out = fit(tmp_path, "--model.init_args.total_frames=9600", "--model.init_args.lr=1e36",
              "--checkpoint.every_n_train_steps=1")  # fmt: skip
    assert out.returncode == 1, out.stderr[-3000:]
    line = error_line(out)
    assert line.startswith("error: diverged at update ") and "last good checkpoint: " in line
    checkpoint = line.split("last good checkpoint: ")[1]
    assert checkpoint.endswith("last.ckpt")
    state = torch.load(checkpoint, weights_only=True)  # loadable, finite
    assert all(
        torch.isfinite(v).all()
        for v in state["state_dict"].values()
        if torch.is_tensor(v) and v.is_floating_point()
    )
    assert state["callbacks"]["DivergenceGuard"]["skipped"] >= 0


def test_max_skips_is_configurable(tmp_path):
    out = fit(tmp_path, "--model.init_args.total_frames=9600", "--model.init_args.lr=1e36",
              "--divergence.max_skips=5")  # fmt: skip
    assert out.returncode == 1
    assert "in 5 updates in a row" in error_line(out)


def test_a_non_finite_gradient_skips_the_update_and_is_counted():
    """One bad update: parameters and optimizer state untouched, the run goes on."""
    from lightning.pytorch import LightningModule

    from recipes.callbacks import DivergenceGuard

    class Module(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

    module, guard = Module(), DivergenceGuard(max_skips=2)
    optimizer = torch.optim.RMSprop(module.parameters(), lr=0.1)
    trainer = type("T", (), {"global_step": 0, "checkpoint_callbacks": [], "ckpt_path": None})()
    before = [p.detach().clone() for p in module.parameters()]
    for p in module.parameters():
        p.grad = torch.full_like(p, float("nan"))
    guard.on_before_optimizer_step(trainer, module, optimizer)
    optimizer.step()
    assert guard.skipped == 1 and guard.in_a_row == 1
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
    assert optimizer.state_dict()["state"] == {}
    for p in module.parameters():
        p.grad = torch.full_like(p, float("nan"))
    with pytest.raises(Exception, match="diverged at update 1 .*last good checkpoint: none written yet"):
        guard.on_before_optimizer_step(trainer, module, optimizer)


# ------------------------------------------------------------------------------------------ checkpoints
def test_a_failed_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)

    def half_then_fail(obj, f, *args, **kwargs):
        f.write(b"\x80\x02partial" * 100)
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(CheckpointWriteError, match="previous checkpoint is intact"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_only_last_checkpoint_and_time_interval(tmp_path):
    out = fit(tmp_path, "--model.init_args.total_frames=1920", "--checkpoint.every_n_train_steps=4",
              "--checkpoint.train_time_interval=0.0")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert files == ["last.ckpt"]
    from recipes.callbacks import RecipeCheckpoint

    callback = RecipeCheckpoint(every_n_train_steps=500, train_time_interval=60)
    assert callback._every_n_train_steps == 500 and callback._train_time_interval.total_seconds() == 60


# ------------------------------------------------------------------------------------------ resume
def test_resume_extends_total_frames_reuses_the_log_folder_and_refuses_conflicts(tmp_path):
    first = fit(tmp_path, "--model.init_args.total_frames=960")  # 10 updates, finished
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "rtrl" / "version_0"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["r2ac"]["frames"] == 960

    refused = fit(tmp_path, "--model.init_args.core=tbptt", f"--ckpt_path={ckpt}")
    assert refused.returncode == 2
    line = error_line(refused)
    assert "core='tbptt'" in line and "core='rtrl'" in line
    refused = fit(tmp_path, "--model.init_args.lr=0.1", f"--ckpt_path={ckpt}")
    assert "lr=0.1" in error_line(refused)

    resumed = fit(tmp_path, "--model.init_args.total_frames=1920", "--model.init_args.num_threads=2",
                  f"--ckpt_path={ckpt}")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "total_frames 960 → 1920" in resumed.stderr + resumed.stdout
    assert str(run) in resumed.stderr + resumed.stdout  # says where it writes
    state = torch.load(ckpt, weights_only=True)
    assert state["r2ac"]["frames"] == 1920 and state["global_step"] == 20  # trained the extra frames
    assert sorted(p.name for p in (tmp_path / "rtrl").iterdir()) == ["version_0"]  # same log folder
    assert state["lr_schedulers"][0]["last_epoch"] == 20


# ------------------------------------------------------------------------------------------ bad configs
@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--config", CONFIG, "--model.init_args.totl_frames=5"],
            "did you mean --model.init_args.total_frames?",
        ),
        (["--config", CONFIG, "--trainer.max_stepz=5"], "did you mean --trainer.max_steps?"),
        (["--config", CONFIG, "--model.init_args.core=gru"], "invalid value for --model.init_args.core"),
        (
            ["--config", CONFIG, "--model.init_args.num_envs=many"],
            "invalid value for --model.init_args.num_envs",
        ),
        (["--config", "/no/such/config.yaml"], "config file not found: /no/such/config.yaml"),
        (
            ["--config", CONFIG, "--model.init_args.total_frames=10"],
            "total_frames=10 is less than one update",
        ),
        (["--config", CONFIG, "--model.init_args.env_options.dealy=3"], "unknown option(s) ['dealy']"),
    ],
)
def test_configuration_mistakes_print_one_line(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args, run=False)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "usage:" not in err and "Traceback" not in err


def test_malformed_config_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(SystemExit):
        main(["--config", str(bad)], run=False)
    assert f"error: cannot parse {bad}" in capsys.readouterr().err


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", CONFIG, "--ckpt_path", str(tmp_path / "nope.ckpt")])
    assert f"error: checkpoint not found: {tmp_path / 'nope.ckpt'}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ progress
def test_progress_lines_and_logged_columns_without_a_terminal(tmp_path):
    out = fit(tmp_path, "--model.init_args.total_frames=1920", "--trainer.log_every_n_steps=1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "update 20/20 (done)" in out.stdout and "frames/s" in out.stdout
    for notice in ("Here be dragons", "💡 Tip", "LeafSpec"):
        assert notice not in out.stdout + out.stderr, notice
    header = (tmp_path / "rtrl" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("frames", "train/lr", "train/fps", "train/skipped_updates"):
        assert column in header, column
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard" / "rtrl" / "version_0"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps[-1] == 1920  # x-axis: frames
