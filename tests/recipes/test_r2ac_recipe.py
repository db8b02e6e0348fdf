"""The R2AC Lightning recipe: shipped configs, the CLI, checkpoints and resume, DDP on 2 CPU processes."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from recipes.cli import main
from recipes.r2ac import R2ACModule

ROOT = Path(__file__).resolve().parents[2]
R2AC_CONFIGS = sorted(
    {p.resolve() for p in (ROOT / "configs").rglob("*.yaml") if "copy_task" not in p.parts}, key=str
)
SMALL = ["--model.init_args.num_envs=2", "--model.init_args.hidden_size=8"]


def cli_args(config: Path, *extra: str) -> list[str]:
    """Arguments for ``main(args, run=False)``, which parses and builds without a subcommand."""
    return ["--config", str(config), *extra]


def small(config: Path) -> list[str]:
    """``SMALL`` (2 envs), with a config's minibatches of env rows capped at those 2 envs."""
    model = (yaml.safe_load(config.read_text()).get("model") or {}).get("init_args") or {}
    return SMALL + (["--model.init_args.minibatches=2"] if model.get("minibatches", 1) > 2 else [])


@pytest.mark.parametrize("config", R2AC_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_config_parses_and_builds(config, fake_lab, tmp_path):
    """Each config builds its module (real Atari/ProcGen engines; DMLab against the fake engine)."""
    cli = main(cli_args(config, *small(config), f"--trainer.default_root_dir={tmp_path}"), run=False)
    module = cli.model
    assert isinstance(module, R2ACModule)
    assert module.hparams.suite == config.parent.name or config.name == "default.yaml"
    assert module.hparams.core.startswith("rtrl")  # rtrl, or rtrl_stepwise in the fully online config
    # the paper's clip (the CLI's default) unless the config sets its own (pong_cpu: A2C's 0.5)
    clip = (yaml.safe_load(config.read_text()).get("trainer") or {}).get("gradient_clip_val", 40.0)
    assert cli.trainer.gradient_clip_val == clip and (clip == 40.0 or config.stem.endswith("_cpu"))
    # the baselines are one override away
    cli = main(cli_args(config, *small(config), "--model.init_args.core=tbptt"), run=False)
    assert cli.model.agent.core.gradient == "tbptt"


CPU_CONFIGS = [
    c
    for c in R2AC_CONFIGS
    if c.parent.name in ("memory", "popgym") or c.stem.endswith("_cpu") or c.name == "default.yaml"
]


@pytest.mark.parametrize("config", CPU_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_cpu_config_trains_a_few_updates(config, tmp_path):
    """The configs run here (docs/results.md) train, on their real engines, for 2 updates."""
    cli = main(cli_args(config, *small(config), "--trainer.max_steps=2", "--model.init_args.eval_episodes=0",
                        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"),
               run=False)  # fmt: skip
    before = [p.detach().clone() for p in cli.model.parameters()]
    cli.trainer.fit(cli.model)
    assert cli.trainer.global_step == 2 and cli.model.frames > 0
    assert torch.isfinite(cli.model.last_loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, cli.model.parameters()))


def test_paper_configs_hold_the_paper_settings(fake_lab):
    hp = main(cli_args(ROOT / "configs/dmlab/rooms_watermaze_m100.yaml"), run=False).model.hparams
    assert (hp.hidden_size, hp.segment_length, hp.lr, hp.rms_alpha, hp.rms_eps) == (
        512,
        100,
        6e-4,
        0.99,
        0.01,
    )
    assert (hp.entropy_cost, hp.baseline_cost, hp.gamma, hp.reward_clip, hp.num_envs) == (
        0.01,
        0.5,
        0.99,
        1.0,
        32,
    )
    # the official code's settings (docs/fidelity.md)
    assert (hp.init, hp.prev_reward_at_reset, hp.eval_protocol) == ("official", "last", "official")
    assert hp.env_options == {"frame_pool": "max"} and hp.validate_every == 0
    hp = main(cli_args(ROOT / "configs/procgen/maze_memory.yaml"), run=False).model.hparams
    assert (hp.hidden_size, hp.embed_size, hp.segment_length, hp.total_frames) == (256, None, 50, 200_000_000)
    assert (hp.init, hp.prev_reward_at_reset, hp.eval_protocol) == ("official", "last", "official")
    assert hp.validation_env_options == {"level_set": "valid"} and hp.validation_episodes == 10


def test_paper_scale_configs_keep_the_impala_stem_and_cpu_configs_use_a_small_one():
    import yaml

    small = {}
    for config in R2AC_CONFIGS:
        args = yaml.safe_load(config.read_text())["model"]["init_args"]
        stem = args.get("stem", "impala")
        if args.get("suite") in ("atari", "procgen", "dmlab") and int(args["total_frames"]) >= 10_000_000:
            assert stem == "impala", config  # the paper's IMPALA ResNet
        if config.stem.endswith("_cpu"):
            small[f"{config.parent.name}/{config.name}"] = stem
    assert small["atari/pong_cpu.yaml"] == "shallow" and small["procgen/starpilot_easy_cpu.yaml"] == "nature"


def test_official_evaluation_protocol_plays_3_runs_of_100_dmlab_episodes(fake_lab, monkeypatch):
    module = R2ACModule(suite="dmlab", task="rooms_watermaze", num_envs=8, hidden_size=4, embed_size=4,
                        eval_episodes=5, eval_protocol="official", total_frames=1000)  # fmt: skip
    played = []
    greedy_returns = module.greedy_returns

    def spy(num_episodes, **options):
        returns = greedy_returns(num_episodes, **options)
        played.append((options, len(returns)))
        return returns

    monkeypatch.setattr(module, "greedy_returns", spy)
    results = module.greedy_evaluation()
    assert played == [({"run": k}, 100) for k in range(3)]
    assert set(results) == {"run_0", "run_1", "run_2", "greedy_return"}
    assert results["greedy_return"] == 40.0  # the fake pays 1 per frame, 40 frames per episode
    module.hparams.eval_protocol = "default"
    played.clear()
    assert set(module.greedy_evaluation()) == {"greedy_return"} and played == [({}, 5)]


def test_periodic_validation_keeps_the_best_checkpoint(tmp_path):
    module = R2ACModule(suite="memory", task="delayed_cue", num_envs=4, hidden_size=8, embed_size=8,
                        segment_length=5, total_frames=200, validate_every=40, validation_episodes=4,
                        validation_env_options={"delay": 2}, prev_reward_at_reset="last")  # fmt: skip
    saved = []

    class Spy(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            saved.append(pl_module.best_validation)

    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[Spy()])  # fmt: skip
    trainer.fit(module)
    best = tmp_path / "checkpoints" / "best.ckpt"
    assert best.is_file() and saved and saved == sorted(saved)  # saved only when the return improved
    assert torch.load(best, weights_only=False)["r2ac"]["best_validation"] == module.best_validation
    with pytest.raises(ValueError, match="eval_protocol 'paper'; valid choices are default, official"):
        R2ACModule(eval_protocol="paper")
    with pytest.raises(ValueError, match="valid choices are False, True, all, conv, fc"):
        R2ACModule(freeze_stem="stem")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.init_args.no_such_key=1"], "no_such_key"),
        (["--model.init_args.num_envs=many"], "num_envs"),
        (["--model.init_args.suite=minecraft"], "Expected a typing.Literal['atari', 'procgen', 'dmlab'"),
        (["--model.init_args.core=gru"], "'rtrl', 'rtrl_stepwise', 'tbptt', 'lstm', 'feedforward'"),
    ],
)
def test_bad_configs_fail_with_one_clear_message(args, message, capsys):
    with pytest.raises(SystemExit):
        main(cli_args(ROOT / "configs/default.yaml", *args), run=False)
    assert message in capsys.readouterr().err


def test_main_job_writes_checkpoint_logs_and_plot(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "recipes", "fit", *cli_args(ROOT / "configs/default.yaml"),
         "--model.init_args.total_frames=6400", "--model.init_args.eval_episodes=8",
         f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "rtrl" / "version_0"
    for name in ("metrics.csv", "learning_curve.png", "learning_curve.csv", "evaluation.csv", "config.yaml"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert "final greedy evaluation" in out.stdout
    with open(run_dir / "metrics.csv") as f:  # the final evaluation is in the logs too
        rows = [row for row in csv.DictReader(f) if row.get("eval/greedy_return")]
    assert len(rows) == 1 and -1.0 <= float(rows[0]["eval/greedy_return"]) <= 1.0
    with open(run_dir / "metrics.csv") as f:  # the stem's health is logged with every update
        rows = list(csv.DictReader(f))
    inactive = [float(r["train/stem_inactive_units"]) for r in rows if r.get("train/stem_inactive_units")]
    assert inactive and all(0.0 <= x < 1.0 for x in inactive), inactive


def test_ddp_fit_on_two_cpu_processes_keeps_ranks_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"}
    out = subprocess.run(
        [sys.executable, "-m", "recipes", "fit", *cli_args(ROOT / "configs/default.yaml"),
         "--model.init_args.total_frames=1600", "--model.init_args.eval_episodes=0",
         "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
         f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DDP check: parameters identical on 2 ranks" in out.stdout


# ------------------------------------------------------------------------------------------ resume
def small_module(**overrides) -> R2ACModule:
    seed_everything(0)
    options = dict(
        suite="memory", task="delayed_cue", num_envs=4, env_options={"delay": 6}, core="rtrl",
        hidden_size=8, embed_size=8, forget_bias=2.0, segment_length=3, total_frames=4 * 3 * 10,
        lr=1e-2, num_threads=1,
    )  # fmt: skip
    return R2ACModule(**{**options, **overrides})


def trainer(root: Path, max_steps: int = -1, callbacks=()) -> Trainer:
    return Trainer(
        default_root_dir=root, max_epochs=1, max_steps=max_steps, gradient_clip_val=40.0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
    )  # fmt: skip


class CaptureAtTrainStart(Callback):
    """What the module holds when training starts (after Lightning and the module restored the
    checkpoint, before the first segment is collected)."""

    sensitivities = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.sensitivities is not None:
            return
        self.sensitivities = module.agent.core.get_sensitivities()
        self.carrier = module.collector._carrier.clone()
        self.env_state = module.env.base_env.episode_state()


def test_kill_and_resume_restores_carried_state_and_continues_the_same_run(tmp_path):
    # The uninterrupted run: 10 updates.
    full = small_module()
    trainer(tmp_path / "full").fit(full)
    # The same run stopped after 5 updates (the checkpoint is what a killed process leaves behind) ...
    first = small_module()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    trainer(tmp_path / "first", max_steps=5, callbacks=[checkpoint]).fit(first)
    path = tmp_path / "ckpt" / "epoch=0-step=5.ckpt"
    saved = torch.load(path, weights_only=False)
    # ... resumed by a fresh process-like module from that checkpoint.
    resumed, capture = small_module(), CaptureAtTrainStart()
    trainer(tmp_path / "resumed", callbacks=[capture]).fit(resumed, ckpt_path=path)

    carried = saved["r2ac"]
    expected = first.agent.core.get_sensitivities()
    assert expected is not None and capture.sensitivities is not None
    for key in expected.keys(include_nested=True, leaves_only=True):
        assert torch.equal(capture.sensitivities[key], expected[key]), key
    for key in ("recurrent_state", "observation", "is_init", "prev_reward"):
        assert torch.equal(capture.carrier[key], carried["actor_carrier"][key]), key
    for key, value in carried["env_state"].items():
        assert torch.equal(capture.env_state[key], value), key
    assert resumed.frames == full.frames == 120
    for (name, p_full), p_resumed in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(p_full, p_resumed), name


def test_several_updates_per_batch_stay_exact_rtrl_and_resume_between_them(tmp_path):
    # 16 envs whose episodes span many segments; 10 batches, each used for 2 passes of 4 minibatches
    # of env rows: 80 updates. The envs tag their rows with their slots, so each minibatch row finds its
    # own env's carried sensitivities (by state alone, equal states of different envs are ambiguous).
    reuse = dict(
        update_epochs=2, minibatches=4, num_envs=16, env_options={"delay": 40}, total_frames=16 * 3 * 10
    )
    full = small_module(**reuse)
    assert full.updates_per_run == 80
    trainer(tmp_path / "full").fit(full)
    assert full.frames == 480 and full.trainer.global_step == 80
    # Every pass repeats its segment's start or continues the previous batch's: exact RTRL throughout.
    assert full.agent.core.segment_starts == {"exact": 80 * 4, "truncated": 0}
    # Stopped after 5 updates (the middle of the first batch) and resumed: the same run.
    first = small_module(**reuse)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    trainer(tmp_path / "first", max_steps=5, callbacks=[checkpoint]).fit(first)
    path = tmp_path / "ckpt" / "epoch=0-step=5.ckpt"
    assert len(torch.load(path, weights_only=True)["r2ac"]["pending"]["rows"]) == 3
    resumed = small_module(**reuse)
    trainer(tmp_path / "resumed").fit(resumed, ckpt_path=path)
    assert resumed.frames == 480 and resumed.trainer.global_step == 80
    for (name, p_full), p_resumed in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(p_full, p_resumed), name
    # One update per batch is the paper's recipe; more passes are more updates, not more frames.
    assert small_module().updates_per_run == 10
    with pytest.raises(ValueError, match="minibatches=5 exceeds num_envs=4"):
        small_module(minibatches=5)
    with pytest.raises(ValueError, match="update_epochs must be >= 1, got 0"):
        small_module(update_epochs=0)
