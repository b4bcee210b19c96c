"""Checkpoints: RNG round trip, weights_only loading, latest/previous rotation, corrupt fallback."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from brats_seg.errors import InputError
from brats_seg.engine import checkpoint as ckpt

torch.set_num_threads(1)


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in the legacy state
    state = ckpt.capture_rng()
    expected = _draws()
    torch.save({"rng": state}, tmp_path / "r.pt")
    loaded = torch.load(tmp_path / "r.pt", weights_only=True)["rng"]
    _draws()
    ckpt.restore_rng(loaded)
    assert _draws() == expected


def _payload(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "rng": ckpt.capture_rng()}


def test_latest_and_previous_rotation(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, _payload(step))
    folder = ckpt.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["latest.pt", "previous.pt"]  # no temp files left
    payload, path = ckpt.load_latest(tmp_path)
    assert payload["step"] == 3 and path.name == "latest.pt"
    assert torch.load(folder / "previous.pt", weights_only=True)["step"] == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_latest_falls_back_with_a_warning(tmp_path, capsys, damage):
    ckpt.save_checkpoint(tmp_path, _payload(1))
    ckpt.save_checkpoint(tmp_path, _payload(2))
    latest = ckpt.checkpoint_dir(tmp_path) / "latest.pt"
    data = latest.read_bytes()
    latest.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a zip" * 10, "empty": b""}[damage])
    payload, path = ckpt.load_latest(tmp_path)
    assert payload["step"] == 1 and path.name == "previous.pt"
    err = capsys.readouterr().err
    assert "warning:" in err and str(latest) in err


def test_no_unsafe_fallback(tmp_path, capsys):
    """A latest.pt that needs full unpickling (a NumPy array inside) is refused, not loaded unsafely."""
    ckpt.save_checkpoint(tmp_path, _payload(1))
    ckpt.save_checkpoint(tmp_path, {**_payload(2), "extra": np.zeros(3)})
    payload, path = ckpt.load_latest(tmp_path)
    assert payload["step"] == 1 and path.name == "previous.pt"
    assert "latest.pt" in capsys.readouterr().err


def test_no_readable_checkpoint_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        ckpt.load_latest(tmp_path)
    ckpt.save_checkpoint(tmp_path, _payload(1))
    ckpt.save_checkpoint(tmp_path, _payload(2))
    for name in ("latest.pt", "previous.pt"):
        (ckpt.checkpoint_dir(tmp_path) / name).write_bytes(b"broken")
    with pytest.raises(InputError, match="both damaged"):
        ckpt.load_latest(tmp_path)


def test_incompatible_config_or_data_refused(tmp_path):
    payload = {"config_hash": "a" * 64, "data_sha256": "b" * 64}
    ckpt.check_compatible(payload, tmp_path, "a" * 64, "b" * 64)
    with pytest.raises(InputError, match="different config"):
        ckpt.check_compatible(payload, tmp_path, "c" * 64, "b" * 64)
    with pytest.raises(InputError, match="different data"):
        ckpt.check_compatible(payload, tmp_path, "a" * 64, "c" * 64)


def test_best_checkpoint_rebuilds_the_model(tmp_path):
    from brats_seg.models.registry import create_model

    kwargs = {"in_channels": 4, "out_channels": 3, "features": [4, 8]}
    model = create_model("attention_unet3d", **kwargs)
    meta = {"model": "attention_unet3d", "model_kwargs": kwargs, "loss_mode": "regions", "patch_size": [8, 8, 8]}
    ckpt.save_best(tmp_path, model.state_dict(), meta, {"val_dice_mean": 0.5})
    loaded, got_meta = ckpt.load_inference_model(tmp_path)
    assert got_meta == meta and not loaded.training
    x = torch.randn(1, 4, 8, 8, 8)
    model.eval()
    assert torch.equal(loaded(x), model(x))


def test_new_file_is_fsynced_before_any_rename(tmp_path, monkeypatch):
    """The temp file and the folder are fsynced before latest.pt becomes previous.pt, so a crash
    (power loss included) never leaves previous.pt as the only name while the new data is unsynced."""
    import os

    ckpt.save_checkpoint(tmp_path, _payload(1))
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ckpt.save_checkpoint(tmp_path, _payload(2))
    first_rename = events.index(("replace", "previous.pt"))
    synced = [path for kind, path in events[:first_rename] if kind == "fsync"]
    assert any(".latest.pt." in p and ".tmp" in p for p in synced), events
    assert str(ckpt.checkpoint_dir(tmp_path)) in synced, events  # the folder too
    assert events[first_rename + 1] == ("replace", "latest.pt")
    assert events[-1][0] == "fsync"  # the renames made durable


@pytest.mark.parametrize("crash_at", ["previous.pt", "latest.pt"])
def test_a_crash_at_either_rename_leaves_a_readable_checkpoint(tmp_path, monkeypatch, crash_at):
    """os.replace raising stands for a kill at that rename: load_latest still finds a complete
    checkpoint (step 2, as latest.pt or previous.pt), and the next save removes a temp file that a
    SIGKILL (which runs no cleanup) left behind."""
    import os

    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, _payload(step))
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == crash_at:
            raise KeyboardInterrupt("killed")  # not an OSError: nothing may catch it
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, _payload(3))
    monkeypatch.undo()
    payload, path = ckpt.load_latest(tmp_path)
    assert payload["step"] == 2
    assert path.name == ("latest.pt" if crash_at == "previous.pt" else "previous.pt")
    folder = ckpt.checkpoint_dir(tmp_path)
    (folder / ".latest.pt.0123abcd.tmp.pt").write_bytes(b"half a checkpoint")
    ckpt.save_checkpoint(tmp_path, _payload(4))
    assert sorted(p.name for p in folder.iterdir()) == ["latest.pt", "previous.pt"]
    assert ckpt.load_latest(tmp_path)[0]["step"] == 4
