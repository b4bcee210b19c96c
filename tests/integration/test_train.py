"""3D training end to end on a tiny fixture: determinism, exact resume after SIGKILL, SIGTERM,
corrupt-checkpoint fallback, config mismatch, time budget, learning."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from brats_seg.errors import InputError
from brats_seg.engine.checkpoint import checkpoint_dir
from brats_seg.seg3d.config import load_config
from brats_seg.seg3d.trainer import train_3d
from brats_seg.engine.runtime import EXIT_PREEMPTED
from tests.train_fixtures import TINY, make_dataset, start_cli, wait_for_line

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n_cases=4)


def _train(data, out, *extra: str, resume: bool = False) -> int:
    return train_3d(load_config(None, TINY + list(extra)), data, out, resume)


def _losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "step"]


def _latest(run_dir) -> dict:
    return torch.load(checkpoint_dir(run_dir) / "latest.pt", weights_only=True)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ at {k}"


def _cli_args(data, out, *extra: str, flags: tuple[str, ...] = ()) -> list[str]:
    """Options first, then the key=value overrides (argparse takes positionals in one run)."""
    config = data.parent / "train.yaml"
    config.write_text("task: 3d\n")
    return ["train", "--config", str(config), "--data", str(data), "--out", str(out), *flags, *TINY, *extra]


def test_seeded_runs_are_identical(data, tmp_path):
    steps = ["train.max_steps=3", "train.steps_per_epoch=3", "data.fold=-1"]
    for name in ("a", "b"):
        assert _train(data, tmp_path / name, *steps) == 0
    assert _train(data, tmp_path / "c", *steps, "seed=1") == 0
    a, b, c = (_losses(tmp_path / n) for n in "abc")
    assert len(a) == 3 and a == b
    assert a != c  # the test can fail: a different seed gives different losses
    _assert_same_weights(_latest(tmp_path / "a")["model"], _latest(tmp_path / "b")["model"])


def test_channels_last_layout_trains_the_same_model(data, tmp_path):
    """'auto' on CPU trains in channels-last (the faster layout there); the numbers match the
    default layout up to float rounding, and the checkpoint loads into a plain model."""
    steps = ["train.max_steps=3", "train.steps_per_epoch=3", "data.fold=-1"]
    assert _train(data, tmp_path / "auto", *steps) == 0
    assert _train(data, tmp_path / "plain", *steps, "train.memory_format=contiguous") == 0
    auto, plain = _latest(tmp_path / "auto")["model"], _latest(tmp_path / "plain")["model"]
    conv = next(k for k, v in auto.items() if v.ndim == 5)
    assert auto[conv].is_contiguous(memory_format=torch.channels_last_3d)
    assert not auto[conv].is_contiguous() and plain[conv].is_contiguous()
    assert _losses(tmp_path / "auto") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-4)
    for k in auto:
        assert torch.allclose(auto[k], plain[k], atol=1e-4), k


def test_init_from_starts_with_the_other_runs_weights(data, tmp_path):
    steps = ["train.max_steps=2", "train.steps_per_epoch=2", "data.fold=-1"]
    assert _train(data, tmp_path / "source", *steps) == 0
    source = _latest(tmp_path / "source")["model"]
    tiny_lr = ["optim.lr=1e-12", "optim.weight_decay=0.0"]  # the weights barely move from where they start
    assert _train(data, tmp_path / "tuned", *steps, *tiny_lr, f"model.init_from={tmp_path / 'source'}") == 0
    tuned = _latest(tmp_path / "tuned")["model"]
    assert all(torch.allclose(source[k], tuned[k], atol=1e-8) for k in source)
    assert _train(data, tmp_path / "fresh", *steps, *tiny_lr) == 0
    assert not torch.allclose(source["head.weight"], _latest(tmp_path / "fresh")["model"]["head.weight"], atol=1e-3)
    with pytest.raises(InputError, match="different model"):
        _train(data, tmp_path / "wider", *steps, "model.features=[4,8,32]",
               f"model.init_from={tmp_path / 'source'}")
    with pytest.raises(InputError, match="checkpoint not found"):
        _train(data, tmp_path / "none", *steps, f"model.init_from={tmp_path / 'missing'}")


def test_exact_resume_after_sigkill(data, tmp_path):
    """6 steps straight == 3 steps, SIGKILL, --resume to 6: bitwise-identical weights and optimiser."""
    steps = ["train.max_steps=6", "train.steps_per_epoch=4", "train.epochs=2",
             "train.checkpoint_every_steps=1", "data.fold=0"]
    assert _train(data, tmp_path / "straight", *steps) == 0
    killed = tmp_path / "killed"
    proc = start_cli(_cli_args(data, killed, *steps))
    try:
        wait_for_line(proc, "checkpoint: step 3", timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = _latest(killed)["progress"]["step"]
    assert 3 <= stopped_at < 6, "the kill should land mid-run"
    resumed = start_cli(_cli_args(data, killed, *steps, flags=("--resume",)))
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"resumed from {checkpoint_dir(killed) / 'latest.pt'} at step {stopped_at}" in out
    a, b = _latest(tmp_path / "straight"), _latest(killed)
    assert b["progress"]["step"] == 6
    _assert_same_weights(a["model"], b["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        _assert_same_weights(sa, sb)
    assert _losses(tmp_path / "straight") == _losses(killed)  # logs cut back and continued, no duplicates
    run = json.loads((killed / "run.json").read_text())
    assert run["status"] == "finished" and run["resumed"][0]["step"] == stopped_at


def test_sigterm_saves_and_exits_75(data, tmp_path):
    proc = start_cli(_cli_args(data, tmp_path, "train.epochs=100", "train.steps_per_epoch=5", "data.fold=-1"))
    try:
        wait_for_line(proc, "step 2 ", timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "stopped by SIGTERM" in out
    step = _latest(tmp_path)["progress"]["step"]
    assert 2 <= step < 500
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "preempted"


def test_corrupt_latest_falls_back_and_replays(data, tmp_path, capsys):
    steps = ["train.epochs=2", "train.steps_per_epoch=2", "data.fold=-1"]
    assert _train(data, tmp_path, *steps) == 0
    final = _latest(tmp_path)["model"]
    latest = checkpoint_dir(tmp_path) / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    capsys.readouterr()
    assert _train(data, tmp_path, *steps, resume=True) == 0
    assert str(latest) in capsys.readouterr().err
    _assert_same_weights(final, _latest(tmp_path)["model"])  # epoch 2 replayed from previous.pt, exactly


def test_resume_guards(data, tmp_path):
    steps = ["train.max_steps=1", "data.fold=-1"]
    with pytest.raises(InputError, match="no checkpoint"):
        _train(data, tmp_path, *steps, resume=True)
    assert _train(data, tmp_path, *steps) == 0
    with pytest.raises(InputError, match="already holds a training run"):
        _train(data, tmp_path, *steps)
    with pytest.raises(InputError, match="different config"):
        _train(data, tmp_path, *steps, "optim.lr=0.5", resume=True)
    assert _train(data, tmp_path, *steps, "train.time_budget_s=5", resume=True) == 0  # run control may change
    manifest = json.loads(data.read_text())
    rewritten = data.parent / "rewritten.json"  # same cases and files, new timestamp: same data
    rewritten.write_text(json.dumps({**manifest, "created_at": "2030-01-01T00:00:00+00:00"}))
    assert _train(rewritten, tmp_path, *steps, resume=True) == 0
    manifest["cases"][0]["sha256"]["image"] = "0" * 64
    rewritten.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="different data"):
        _train(rewritten, tmp_path, *steps, resume=True)


def test_time_budget_stops_and_validates(data, tmp_path):
    assert _train(data, tmp_path, "train.time_budget_s=0.001", "train.steps_per_epoch=50", "data.fold=0") == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "finished (time budget)" and run["progress"]["step"] == 1
    assert run["best"]["val_dice_mean"] >= 0 and (tmp_path / "checkpoints" / "best.pt").exists()
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert run["split"]["val"] and not set(run["split"]["val"]) & set(run["split"]["train"])


def test_planned_steps_ending_a_budget_early_are_reported(data, tmp_path, capsys):
    assert _train(data, tmp_path, "train.time_budget_s=3600", "train.max_steps=2", "data.fold=-1") == 0
    out = capsys.readouterr().out
    assert "training finished at step 2" in out and "of the 3600 s budget; raise train.max_steps" in out
    assert _train(data, tmp_path / "a", "train.time_budget_s=3600", "train.epochs=1", "train.steps_per_epoch=2",
                  "data.fold=-1") == 0
    assert "of the 3600 s budget; raise train.epochs" in capsys.readouterr().out
    assert _train(data, tmp_path / "b", "train.time_budget_s=0.001", "data.fold=-1") == 0  # the budget decided
    assert "raise train.epochs" not in capsys.readouterr().out


def test_learns_the_fixture(data, tmp_path):
    """Loss falls and the held-out Dice is well above chance after a few dozen steps."""
    assert _train(data, tmp_path, "train.epochs=4", "train.steps_per_epoch=15", "data.fold=0",
                  "validation.every_epochs=4", "train.log_every_steps=5", "optim.grad_accum=2") == 0
    losses = _losses(tmp_path)
    assert losses[-1] < 0.7 * losses[0]
    best = json.loads((tmp_path / "run.json").read_text())["best"]
    assert best["val_dice_WT"] > 0.6 and best["val_dice_mean"] > 0.5, best


@pytest.mark.slow
def test_demo_recipe_learns_phantoms(tmp_path):
    """pipelines/train/train_demo.yaml on synthetic phantoms at 2 mm: mean region Dice >= 0.85 held out."""
    from brats_seg.cli import main

    raw, pre, run = tmp_path / "raw", tmp_path / "pre", tmp_path / "run"
    assert main(["synth", "--out", str(raw), "--cases", "12", "--seed", "0"]) == 0
    assert main(["ingest", str(raw), "--out", str(tmp_path / "raw.json")]) == 0
    assert main(["preprocess", str(tmp_path / "raw.json"), "--out", str(pre), "--spacing", "2.0"]) == 0
    config = Path(__file__).resolve().parents[2] / "pipelines" / "train" / "train_demo.yaml"
    assert main(["train", "--config", str(config), "--data", str(pre / "preprocessed.json"), "--out", str(run),
                 "train.time_budget_s=0"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert len(info["split"]["val"]) == 3 and info["status"] == "finished"
    assert info["best"]["val_dice_mean"] >= 0.85, info["best"]


@pytest.mark.parametrize("extra, where", [
    (["optim.lrr=1"], "error: optim.lrr: unknown key"),
    (["task=4d"], "error: task: unknown task '4d'"),
    (["data.patch_size=[18,18,18]"], "error: data.patch_size:"),
    (["--data", "missing.json"], "missing.json: manifest not found"),
    (["--data", "."], "is a folder, not a file; expected a brats-seg manifest"),
])
def test_cli_bad_input_is_one_line_exit_2(data, tmp_path, capsys, extra, where):
    from brats_seg.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("task: 3d\n")
    options = ["--config", str(config), "--data", str(data), "--out", str(tmp_path / "run")]
    if extra[0] == "--data":
        options[3], extra = str(tmp_path / extra[1]), []
    assert main(["train", *options, *TINY, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and where in err
