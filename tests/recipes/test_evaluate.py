"""After training: ``recipes test|validate --ckpt_path``, ``python -m recipes.evaluate`` (results, video)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.cli import main
from recipes.evaluate import FrameRecorder, RandomActions, write_video
from recipes.evaluate import main as evaluate_main

ROOT = Path(__file__).resolve().parents[2]
MEMORY = ROOT / "configs/memory/delayed_cue.yaml"
PROCGEN = ROOT / "configs/procgen/starpilot_easy_cpu.yaml"
TINY = [
    "--model.init_args.num_envs=2", "--model.init_args.hidden_size=8", "--model.init_args.embed_size=8",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]  # fmt: skip
EPISODES = 4


def fit(config: Path, root: Path, *extra: str) -> Path:
    main(["fit", "--config", str(config), *TINY, f"--trainer.default_root_dir={root}", *extra])
    (checkpoint,) = root.rglob("last.ckpt")
    return checkpoint


@pytest.fixture(scope="module")
def memory_run(tmp_path_factory):
    """10 updates of the delayed-cue task (2 envs × M = 3), greedy evaluation on EPISODES episodes."""
    root = tmp_path_factory.mktemp("memory")
    checkpoint = fit(
        MEMORY, root, "--model.init_args.total_frames=60", f"--model.init_args.eval_episodes={EPISODES}"
    )
    return root, checkpoint


def read_metrics(root: Path) -> list[dict[str, str]]:
    rows = []
    for path in sorted(root.rglob("metrics.csv")):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def test_fit_runs_no_validation(memory_run):
    root, _ = memory_run
    assert not any(k.startswith("val/") for row in read_metrics(root) for k in row)


QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.mark.parametrize(
    "subcommand, prefix, model",
    [
        # the training config without the run's overrides: Lightning takes the checkpoint's hyper-parameters
        ("test", "test", ["--config", str(MEMORY)]),
        ("validate", "val", ["--model=recipes.r2ac.R2ACModule"]),  # no config at all
    ],
)
def test_test_and_validate_subcommands_log_the_greedy_return(memory_run, tmp_path, subcommand, prefix, model):
    _, checkpoint = memory_run
    cli = main(
        [subcommand, *model, *QUIET, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={checkpoint}"]
    )
    assert cli.model.hparams.hidden_size == 8  # the checkpoint's, not the config's 32
    metrics = cli.trainer.callback_metrics
    assert -1.0 <= float(metrics[f"{prefix}/greedy_return"]) <= 1.0  # delayed cue: ±1 per episode
    assert float(metrics[f"{prefix}/episodes"]) == EPISODES  # the run's eval_episodes
    (row,) = [r for r in read_metrics(tmp_path) if r.get(f"{prefix}/greedy_return")]  # in the run's logs
    assert float(row[f"{prefix}/greedy_return"]) == pytest.approx(float(metrics[f"{prefix}/greedy_return"]))


def test_evaluate_prints_and_writes_the_same_numbers_as_recipes_test(memory_run, tmp_path, capsys):
    _, checkpoint = memory_run
    cli = main([
        "test", "--config", str(MEMORY), *TINY, f"--model.init_args.eval_episodes={EPISODES}",
        f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={checkpoint}",
    ])  # fmt: skip
    tested = float(cli.trainer.callback_metrics["test/greedy_return"])
    capsys.readouterr()
    (row,) = evaluate_main([str(checkpoint), "--output", str(tmp_path / "results.csv")])
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("memory/delayed_cue: greedy return mean=") and f"episodes={EPISODES}" in line
    # the run's eval_episodes, envs and seeds: the number recipes test logged (and fit's evaluation.csv)
    assert row["mean"] == pytest.approx(tested) and row["episodes"] == EPISODES
    returns = torch.tensor(row["returns"])
    assert row["std"] == pytest.approx(float(returns.std(correction=0)))
    with open(tmp_path / "results.csv") as f:
        (written,) = list(csv.DictReader(f))
    assert float(written["mean"]) == pytest.approx(tested) and int(written["episodes"]) == EPISODES
    # --config: the training config's env options and seed; the network sizes stay the checkpoint's
    (row,) = evaluate_main([str(checkpoint), "--config", str(MEMORY), "--episodes", "2"])
    assert row["episodes"] == 2
    assert "keeping the checkpoint's hidden_size, embed_size" in capsys.readouterr().err


def test_evaluate_command_line_writes_json(memory_run, tmp_path):
    _, checkpoint = memory_run
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "recipes.evaluate", str(checkpoint), "--episodes", "3",
         "--output", str(tmp_path / "results.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "greedy return mean=" in out.stdout and "episodes=3" in out.stdout
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["episodes"] == len(row["returns"]) == 3 and row["suite"] == "memory"
    # a video needs pixels: one clear error line, no traceback
    out = subprocess.run(
        [sys.executable, "-m", "recipes.evaluate", str(checkpoint), "--video", str(tmp_path / "x.gif")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0 and "--video needs a pixel suite" in out.stderr
    assert "Traceback" not in out.stderr


def test_procgen_run_and_video_of_its_greedy_play(tmp_path, capsys):
    checkpoint = fit(
        PROCGEN, tmp_path, "--model.init_args.segment_length=5", "--model.init_args.total_frames=20",
        "--model.init_args.eval_episodes=0",
    )  # fmt: skip
    video = tmp_path / "play.gif"
    (row,) = evaluate_main(
        [
            str(checkpoint),
            "--episodes",
            "1",
            "--level-set",
            "train",
            "--video",
            str(video),
            "--max-video-frames",
            "200",
        ]
    )
    assert row["level_set"] == "train" and row["episodes"] == 1
    out = capsys.readouterr().out
    assert "procgen/starpilot [train]: greedy return" in out and f"video: {video}" in out
    gif = Image.open(video)
    assert video.stat().st_size > 1000 and gif.size == (256, 256) and gif.n_frames > 1  # 64×64, ×4


def test_random_policy_on_the_same_envs(memory_run, tmp_path):
    """--policy random: the random-agent baseline on the run's evaluation envs; the agent's greedy
    actions are replaced by uniform ones (the delayed cue pays ±1: chance is 0)."""
    _, checkpoint = memory_run
    (greedy,) = evaluate_main([str(checkpoint), "--episodes", "64"])
    (random,) = evaluate_main([str(checkpoint), "--episodes", "64", "--policy", "random",
                               "--output", str(tmp_path / "random.csv")])  # fmt: skip
    assert (greedy["policy"], random["policy"]) == ("greedy", "random")
    assert random["returns"] != greedy["returns"] and abs(random["mean"]) < 0.4
    with open(tmp_path / "random.csv") as f:
        (written,) = list(csv.DictReader(f))
    assert written["policy"] == "random" and int(written["episodes"]) == 64


def test_sampled_policy_draws_from_the_agents_distribution(memory_run):
    """--policy sampled plays actions drawn from the policy (a near-uniform one after 10 updates), so
    the same envs and seeds give other returns than its argmax."""
    _, checkpoint = memory_run
    (greedy,) = evaluate_main([str(checkpoint), "--episodes", "64"])
    (sampled,) = evaluate_main([str(checkpoint), "--episodes", "64", "--policy", "sampled"])
    assert sampled["policy"] == "sampled" and sampled["episodes"] == 64
    assert sampled["returns"] != greedy["returns"]


def test_random_actions_are_uniform_whatever_the_logits():
    from tensordict import TensorDict

    def actor(td):  # always prefers action 2 of 4
        td.set("logits", torch.tensor([0.0, 0.0, 50.0, 0.0]).expand(*td.batch_size, 4))
        return td.set("action", torch.full(td.batch_size, 2))

    td = RandomActions(actor, seed=0)(TensorDict({}, [4000]))
    counts = torch.bincount(td["action"], minlength=4)
    assert td["action"].dtype == torch.int64 and ((counts - 1000).abs() < 150).all(), counts


def test_recorder_keeps_env_0s_first_episode():
    from tensordict import TensorDict

    recorder = FrameRecorder(lambda td: td, rgb=False, scale=2)
    for t, is_init in enumerate([True, False, False, True, False]):
        pixels = torch.full((2, 4, 3, 3), t, dtype=torch.uint8)
        recorder(TensorDict({"pixels": pixels, "is_init": torch.tensor([[is_init], [False]])}, [2]))
    assert [int(f[0, 0, 0]) for f in recorder.frames] == [0, 1, 2]
    assert recorder.frames[0].shape == (6, 6, 3)


def test_mp4_writer(tmp_path):
    cv2 = pytest.importorskip("cv2")
    frames = [np.full((32, 48, 3), 10 * i, dtype=np.uint8) for i in range(12)]
    path = write_video(tmp_path / "play.mp4", frames, fps=15)
    capture = cv2.VideoCapture(str(path))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 12 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 48
