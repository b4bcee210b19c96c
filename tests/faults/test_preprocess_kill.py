"""The real CLI in a subprocess: SIGKILL in the middle of writing a case, then resume; and a second
run on a locked output folder is refused."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from brats_seg.core.hashing import sha256_file
from tests.preprocess_fixtures import (cli_command, error_lines, final_npy_files, ingest_to, load_json, run_cli,
                                       run_cli_subprocess, subprocess_env, summary_counts, without_created_at,
                                       write_block_case)

BIG = (160, 160, 128)  # a 26 MB float16 image per case: writing it takes long enough to be caught
IDS = ["Big_0", "Big_1", "Big_2"]


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pp_big")
    for i, case_id in enumerate(IDS):
        write_block_case(root / "data", case_id, BIG, seed=i)
    ingest_to([root / "data"], root / "raw.json")
    return root / "raw.json"


def _kill_while_writing(raw: Path, out: Path, case_id: str, timeout: float = 120.0) -> list[str]:
    """Start the CLI; SIGKILL it as soon as the first file (of any name) appears in cases/<case_id>/,
    i.e. while that case's first array is being written. Returns the names seen at that moment."""
    proc = subprocess.Popen(cli_command("preprocess", raw, "--out", out, "--workers", "1"), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = out / "cases" / case_id
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while not seen and proc.poll() is None and time.monotonic() < deadline:
            try:
                seen = os.listdir(folder)
            except FileNotFoundError:
                continue
        if seen:
            proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None and not seen:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert seen, f"nothing appeared in {folder} before the run ended (rc {proc.returncode}):\n{err.decode()}"
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself (rc {proc.returncode}) before the kill"
    return seen


def _check_no_partial_final_files(out: Path) -> None:
    """Every array under a final name is complete; every entry.json lists arrays that exist and verify."""
    for rel in final_npy_files(out):
        np.load(out / rel)  # a truncated .npy raises here
    for entry_path in (out / "cases").glob("*/entry.json"):
        entry = json.loads(entry_path.read_text())
        for key, digest in entry["sha256"].items():
            assert sha256_file(out / entry[key]) == digest, f"{entry_path}: {key} does not match its recorded sha256"


def test_sigkill_mid_case_leaves_no_partial_file_and_rerun_matches_a_clean_run(big_raw, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    done = run_cli_subprocess("preprocess", big_raw, "--out", clean, "--workers", "1")
    assert done.returncode == 0, done.stderr

    _kill_while_writing(big_raw, killed, IDS[1])
    assert not (killed / "preprocessed.json").exists()
    assert (killed / "cases" / IDS[0] / "entry.json").is_file(), "the case before the killed one is complete"
    assert not (killed / "cases" / IDS[1] / "entry.json").exists(), "killed case must not look done"
    assert not (killed / "cases" / IDS[2]).exists()
    _check_no_partial_final_files(killed)
    # the kill landed mid-write: the file being written is still a hidden temp, never renamed
    left = os.listdir(killed / "cases" / IDS[1])
    assert any(n.startswith(".") and ".tmp" in n for n in left), left

    rerun = run_cli_subprocess("preprocess", big_raw, "--out", killed, "--workers", "1")
    assert rerun.returncode == 0, rerun.stderr
    assert summary_counts(rerun.stderr) == (2, 1, 0)
    _check_no_partial_final_files(killed)
    assert final_npy_files(killed) == final_npy_files(clean)
    for rel in final_npy_files(clean):
        assert (killed / rel).read_bytes() == (clean / rel).read_bytes(), rel
    assert without_created_at(load_json(killed / "preprocessed.json")) == without_created_at(load_json(clean / "preprocessed.json"))


@pytest.fixture
def small_raw(tmp_path) -> Path:
    for i in range(2):
        write_block_case(tmp_path / "data", f"Small_{i}", (24, 20, 16), seed=i)
    ingest_to([tmp_path / "data"], tmp_path / "raw.json")
    return tmp_path / "raw.json"


def _hold_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_second_run_on_the_same_output_and_shard_is_refused(small_raw, tmp_path):
    out = tmp_path / "out"
    fd = _hold_lock(out / ".locks" / "shard-0-of-1.lock")  # a first run holding the folder
    try:
        refused = run_cli_subprocess("preprocess", small_raw, "--out", out, "--workers", "1")
        assert refused.returncode == 2, refused.stderr
        lines = error_lines(refused.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "another run" in lines[0], refused.stderr
        assert not (out / "cases").exists() and not (out / "preprocessed.json").exists()
        # another shard of the same folder has its own lock and goes ahead
        code, _, err = run_cli("preprocess", small_raw, "--out", out, "--workers", "1", "--shard", "1/2")
        assert code == 0, err
    finally:
        os.close(fd)
    code, _, err = run_cli("preprocess", small_raw, "--out", out, "--workers", "1")  # lock released: runs
    assert code == 0 and summary_counts(err) == (1, 1, 0), err  # shard 1/2's case is reused
