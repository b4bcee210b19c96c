"""The cluster recipes in pipelines/cluster/ run at tiny scale on this machine, as the cluster would run them.

- pipelines/cluster/slurm_preprocess_array.sbatch and pipelines/cluster/slurm_predict_array.sbatch: the scripts
  themselves, run with bash as 2 array tasks at once (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT
  set, as SLURM sets them); the merged manifest and every output file equal a single run's.
- pipelines/cluster/slurm_cv_array.sbatch: one bench learn fold per array task (2 at once), the parts
  joined into learn.json by the task that finds them all.
- pipelines/cluster/torchrun_multi_node.sh: 2 "nodes" of 1 CPU process each, started as two local agents
  meeting through c10d rendezvous on 127.0.0.1:<free port>.
- pipelines/cluster/torchrun_single_node.sh: 2 CPU processes on one node; SIGTERM to the torchrun job (what
  SLURM's --signal does to the job step) -> every rank stops at the same step, rank 0 checkpoints,
  the script exits 75; the same command again resumes by itself and ends bitwise where the
  uninterrupted multi-node run (same world size) ended.
The SLURM train scripts (slurm_train_*.sbatch) wrap these torchrun command lines in srun; they run here
with fake srun/scontrol that record what they are given and play a pre-empted, a finished or a failed
job step: CPU binding, worker count, --auto-resume, the torchrun shutdown timeout inside the --signal
notice, NCCL error handling, requeue on a pre-emption only (not on a stale "preempted" status).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brats_seg.io.manifest import load_manifest
from tests.train_fixtures import TINY, kill_group, make_dataset, wait_for_line

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "pipelines" / "cluster"
# one process's 6 steps per epoch, shared by the recipes' 2 ranks (distributed.scaling=samples): 3 each
STEPS = ["train.epochs=3", "train.steps_per_epoch=6", "data.fold=0", "distributed.timeout_s=30"]
FINAL_STEP = 9


def recipe_env(**extra: str) -> dict:
    """This interpreter's bin folder first on PATH (the recipes call `brats-seg` and `python`)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHON=sys.executable)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_ARRAY_TASK_ID",
                "SLURM_ARRAY_TASK_COUNT", "SLURM_CPUS_PER_TASK"):
        env.pop(key, None)
    env.update(extra)
    return env


def run_array(script: str, args: list, tasks: int = 2, timeout: float = 180, **extra: str
              ) -> list[subprocess.CompletedProcess]:
    """`bash pipelines/cluster/SCRIPT ARGS` as `tasks` array tasks running at the same time."""
    procs = [subprocess.Popen(["bash", str(CLUSTER / script), *map(str, args)], cwd=REPO, text=True,
                              env=recipe_env(SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_TASK_COUNT=str(tasks), **extra),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(tasks)]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.glob(pattern))}


def _core(manifest: dict) -> dict:
    m = {k: v for k, v in manifest.items() if k not in ("created_at", "timings")}
    m["cases"] = [{k: v for k, v in e.items() if k != "timings"} for e in m["cases"]]
    return m


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    from brats_seg.ingest.stage import ingest
    from brats_seg.synth.phantoms import synthesize_dataset

    root = tmp_path_factory.mktemp("recipes_raw")
    synthesize_dataset(root / "src", 5, 3, (32, 32, 24))
    ingest([root / "src"], root / "raw.json")
    return root / "raw.json"


@pytest.mark.parametrize("script", ["slurm_preprocess_array.sbatch", "slurm_predict_array.sbatch",
                                    "slurm_cv_array.sbatch"])
def test_array_scripts_refuse_to_run_outside_an_array(script, tmp_path):
    args = ["a", "b"] if "preprocess" in script else ["a", "b", "c"]
    proc = subprocess.run(["bash", str(CLUSTER / script), *args], cwd=tmp_path, env=recipe_env(),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "run as an array job" in proc.stderr


def test_preprocess_array_recipe_equals_a_single_run(raw, tmp_path, run_cli):
    single, array = tmp_path / "single", tmp_path / "array"
    code, _, err = run_cli("preprocess", raw, "--out", single, "--workers", "1")
    assert code == 0, err
    for task in run_array("slurm_preprocess_array.sbatch", [raw, array]):
        assert task.returncode == 0, task.stderr
    merged = load_manifest(array / "preprocessed.json", stage="preprocessed")
    assert _core(merged) == _core(load_manifest(single / "preprocessed.json"))
    assert len(merged["cases"]) == 5
    assert _files(array, "cases/*/*.npy") == _files(single, "cases/*/*.npy")
    assert sorted(p.name for p in (array / "shards").iterdir()) == [
        "preprocessed.shard-0-of-2.json", "preprocessed.shard-1-of-2.json"]
    # resubmitting the array redoes nothing
    for task in run_array("slurm_preprocess_array.sbatch", [raw, array]):
        assert task.returncode == 0 and "0 done" in task.stderr, task.stderr


def test_predict_array_recipe_equals_a_single_run(raw, tmp_path, run_cli):
    from tests.badinput.builders import make_model_run

    model = make_model_run(tmp_path / "model")
    single, array = tmp_path / "single", tmp_path / "array"
    code, _, err = run_cli("predict", "--model", model, "--manifest", raw, "--out", single, "--threads", "1",
                           "--label-convention", "brats2023")
    assert code == 0, err
    tasks = run_array("slurm_predict_array.sbatch", [model, raw, array], PREDICT_ARGS="--label-convention brats2023")
    for task in tasks:
        assert task.returncode == 0, task.stderr
    assert sum("predict: " in t.stderr and " done, " in t.stderr for t in tasks) == 2
    merged = load_manifest(array / "predictions.json", stage="predictions")
    assert _core(merged) == _core(load_manifest(single / "predictions.json"))
    masks = _files(array, "masks/*.nii.gz")
    assert len(masks) == 5 and masks == _files(single, "masks/*.nii.gz")
    assert all(e["label_convention"] == "brats2023" for e in merged["cases"])
    again = run_array("slurm_predict_array.sbatch", [model, raw, array], PREDICT_ARGS="--label-convention brats2023")
    for task in again:
        assert task.returncode == 0 and " 0 done" in task.stderr, task.stderr  # resubmission skips everything


# ---------------------------------------------------------------------------------------------- torchrun

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recipes_ddp")
    data = make_dataset(root / "data", n_cases=4)
    config = root / "train.yaml"
    config.write_text("task: 3d\n")
    return data, config


def _latest(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=True)


def _start(script: str, data: Path, run: Path, config: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(CLUSTER / script), str(data), str(run), "0", *TINY, *STEPS], cwd=REPO,
                            env=recipe_env(CONFIG=str(config), **env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def multi_node_run(ddp_data, tmp_path_factory) -> Path:
    """Two agents with one CPU process each ("nodes"), c10d rendezvous on localhost: the reference run."""
    data, config = ddp_data
    run = tmp_path_factory.mktemp("multi") / "run"
    port = str(free_port())
    nodes = [_start("torchrun_multi_node.sh", data, run, config, NNODES="2", NPROC="1", RDZV_HOST="127.0.0.1",
                    RDZV_PORT=port, RDZV_ID="test") for _ in range(2)]
    try:
        logs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:
            kill_group(node)
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-4000:]
    return run


@pytest.mark.ddp
def test_multi_node_recipe_with_c10d_rendezvous(multi_node_run):
    info = json.loads((multi_node_run / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 2
    steps = [json.loads(r) for r in (multi_node_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == list(range(1, FINAL_STEP + 1))  # rank 0 alone wrote
    assert _latest(multi_node_run)["progress"]["step"] == FINAL_STEP


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.mark.ddp
def test_single_node_recipe_preempted_then_resumed_equals_the_uninterrupted_run(ddp_data, multi_node_run, tmp_path):
    data, config = ddp_data
    run = tmp_path / "run"
    job = _start("torchrun_single_node.sh", data, run, config, NPROC="2")
    try:
        wait_for_line(job, "step 1 ", timeout=180)
        agents = _children(job.pid)  # the torchrun agent under the script's shell
        assert len(agents) == 1, agents
        os.kill(agents[0], signal.SIGTERM)  # SLURM --signal=TERM@... signals the job step, not the batch shell
        log = job.communicate(timeout=120)[0]
    finally:
        kill_group(job)
    assert job.returncode == 75, log[-4000:]
    assert "pre-empted at a checkpoint" in log
    info = json.loads((run / "run.json").read_text())
    stopped = _latest(run)["progress"]["step"]
    assert info["status"] == "preempted" and 1 <= stopped < FINAL_STEP

    again = _start("torchrun_single_node.sh", data, run, config, NPROC="2")  # the same command, requeued
    try:
        log = again.communicate(timeout=240)[0]
    finally:
        kill_group(again)
    assert again.returncode == 0, log[-4000:]
    assert f"resumed from {run / 'checkpoints' / 'latest.pt'} at step {stopped}" in log
    a, b = _latest(multi_node_run), _latest(run)
    assert b["progress"]["step"] == FINAL_STEP
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weights differ at {k}"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 2 and info["resumed"][0]["step"] == stopped


FAKE_TORCHRUN = r"""#!/bin/bash
# PYTHON for the multi-node recipe: `-m torch.distributed.run ...` writes run.json's status
# FAKE_STATUS (none: leaves it) into the --out folder and exits FAKE_RC; anything else is real Python.
if [ "$1" = "-m" ] && [ "$2" = "torch.distributed.run" ]; then
    while [ $# -gt 0 ]; do [ "$1" = "--out" ] && out=$2; shift; done
    mkdir -p "$out"
    [ "$FAKE_STATUS" = none ] || echo "{\"status\": \"$FAKE_STATUS\"}" > "$out/run.json"
    exit "$FAKE_RC"
fi
exec "$REAL_PYTHON" "$@"
"""


@pytest.mark.parametrize("status,rc,code", [("finished", 1, 0), ("finished (time budget)", 1, 0),
                                            ("failed", 1, 1), ("none", 1, 1), ("preempted", 1, 75),
                                            ("finished", 0, 0), ("none", 2, 2)])
def test_multi_node_recipe_counts_an_agent_exit_after_a_finished_run_as_success(tmp_path, status, rc, code):
    """torch elastic's c10d race (the store's node leaves first, another agent then exits 1) after a
    run rank 0 marked finished is not a failure; any other non-zero exit is kept."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_TORCHRUN)
    fake.chmod(0o755)
    env = recipe_env(PYTHON=str(fake), REAL_PYTHON=sys.executable, FAKE_STATUS=status, FAKE_RC=str(rc),
                     NNODES="2", NPROC="1", RDZV_HOST="127.0.0.1")
    proc = subprocess.run(["bash", str(CLUSTER / "torchrun_multi_node.sh"), "data.json", str(tmp_path / "run")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert ("counted as success" in proc.stderr) == (code == 0 and rc != 0)


def test_recipes_pass_a_bash_syntax_check():
    for path in sorted(CLUSTER.iterdir()):
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, path
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        proc = subprocess.run([shellcheck, *map(str, CLUSTER.glob("*.sh")), *map(str, CLUSTER.glob("*.sbatch"))],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


# ------------------------------------------------------------------------------ SLURM train scripts, faked

FAKE_SRUN = r"""#!/bin/bash
# records its arguments and TORCH_NCCL_ASYNC_ERROR_HANDLING, then plays the job step as FAKE_MODE says
printf '%s\n' "$@" > "$FAKE_LOG/srun.args"
echo "${TORCH_NCCL_ASYNC_ERROR_HANDLING:-unset}" > "$FAKE_LOG/srun.nccl"
out=""; prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out=$a; prev=$a; done
case "$FAKE_MODE" in
    preempted) mkdir -p "$out"; printf '{"status": "preempted", "updated_at": "%s"}\n' "$(date +%s%N)" > "$out/run.json"; exit 1 ;;
    finished) mkdir -p "$out"; printf '{"status": "finished"}\n' > "$out/run.json"; exit 0 ;;
    finished-then-agent-exit) mkdir -p "$out"; printf '{"status": "finished"}\n' > "$out/run.json"; exit 1 ;;
    *) exit 2 ;;  # fails at start-up: run.json is left as it was
esac
"""
FAKE_SCONTROL = r"""#!/bin/bash
if [ "$1" = show ]; then printf 'node01\nnode02\n'; exit 0; fi
echo "$*" >> "$FAKE_LOG/scontrol.log"
"""


def _run_sbatch(script: str, tmp_path: Path, mode: str, cpus: int = 8, gpus: int = 2,
                stale: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    """The sbatch script run by bash with fake srun/scontrol on PATH and SLURM's variables set."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir(exist_ok=True)
    log.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    run = tmp_path / "run"
    if stale:  # the status the previous job start left
        run.mkdir(exist_ok=True)
        (run / "run.json").write_text('{"status": "preempted"}\n')
    env = recipe_env(FAKE_LOG=str(log), FAKE_MODE=mode, SLURM_JOB_ID="4242", SLURM_CPUS_PER_TASK=str(cpus),
                     SLURM_GPUS_ON_NODE=str(gpus), SLURM_NNODES="2", SLURM_JOB_NODELIST="node[01-02]")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.pop("TORCH_NCCL_ASYNC_ERROR_HANDLING", None)
    proc = subprocess.run(["bash", str(CLUSTER / script), "data/preprocessed.json", str(run), "0"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    return proc, log


SLURM_TRAIN = ["slurm_train_single_node.sbatch", "slurm_train_multi_node.sbatch"]


@pytest.mark.parametrize("script", SLURM_TRAIN)
def test_slurm_train_binds_cpus_sizes_workers_and_requeues_a_preemption(script, tmp_path):
    proc, log = _run_sbatch(script, tmp_path, "preempted")
    assert proc.returncode == 0, proc.stderr
    assert "requeueing job 4242" in proc.stdout
    assert (log / "scontrol.log").read_text().split() == ["requeue", "4242"]
    args = (log / "srun.args").read_text().splitlines()
    assert "--cpus-per-task=8" in args and "--kill-on-bad-exit=1" in args  # Slurm >= 22.05 passes no -c to srun
    assert "--auto-resume" in args and "--resume" not in args  # resumes from latest.pt or previous.pt
    assert "data.num_workers=3" in args  # 8 CPUs / 2 GPU processes - 1
    assert "--shutdown-timeout=240" in args
    # the one-line diagnosis survives an NCCL timeout: abort the communicator, leave the process up
    assert (log / "srun.nccl").read_text().strip() == "2"


@pytest.mark.parametrize("script", SLURM_TRAIN)
def test_slurm_train_tells_a_failure_from_a_preemption(script, tmp_path):
    """A start that fails (exit 2) in a run folder whose run.json still says "preempted" from the job
    before is a failure: no requeue (it would loop forever), the exit code is the step's."""
    proc, log = _run_sbatch(script, tmp_path, "fail", stale=True)
    assert proc.returncode == 2 and not (log / "scontrol.log").exists(), proc.stdout + proc.stderr
    proc, log = _run_sbatch(script, tmp_path, "finished", cpus=1)
    assert proc.returncode == 0 and not (log / "scontrol.log").exists()
    assert "data.num_workers=0" in (log / "srun.args").read_text().splitlines()  # never negative


def test_slurm_multi_node_counts_an_agent_exit_after_a_finished_run_as_success(tmp_path):
    proc, log = _run_sbatch("slurm_train_multi_node.sbatch", tmp_path, "finished-then-agent-exit")
    assert proc.returncode == 0 and "counted as success" in proc.stderr, proc.stdout + proc.stderr
    assert not (log / "scontrol.log").exists()


def test_train_recipes_shutdown_timeout_fits_the_slurm_notice():
    """torchrun must stop waiting for its ranks (SIGKILL) before SLURM's own kill; the notice must
    reach the job steps (TERM@N, not B:TERM@N: the batch shell has to live on to requeue)."""
    import re

    for path in [*(CLUSTER / s for s in SLURM_TRAIN), *CLUSTER.glob("torchrun_*.sh")]:
        text = path.read_text()
        timeout = int(re.search(r"SHUTDOWN_TIMEOUT=\$\{SHUTDOWN_TIMEOUT:-(\d+)\}", text).group(1))
        assert '--shutdown-timeout="$SHUTDOWN_TIMEOUT"' in text, path
        assert "--auto-resume" in text and "latest.pt ]" not in text, path
        if path.suffix == ".sbatch":
            notice = int(re.search(r"^#SBATCH --signal=TERM@(\d+)$", text, re.M).group(1))
            assert 0 < timeout < notice - 30, (path, timeout, notice)  # room for a step after the last vote
            assert "scontrol requeue" in text and '--cpus-per-task="$CPUS"' in text, path


def test_recipes_have_no_unguarded_array_expansion():
    """bash < 4.4 under set -u calls an empty "${arr[@]}" unbound: expansions must be guarded
    ("${arr[@]+"${arr[@]}"}", ${1+"$@"})."""
    import re

    for path in sorted(CLUSTER.iterdir()):
        for line in path.read_text().splitlines():
            if not line.lstrip().startswith("#"):
                assert not re.search(r'"\$\{\w+\[@\]\}"', line), f"{path.name}: {line}"


def test_cv_array_recipe_trains_one_fold_per_task_and_joins_them(raw, tmp_path, run_cli):
    """slurm_cv_array.sbatch as 2 array tasks at once: each runs its fold of bench learn, and the
    joined learn.json scores every case once, as one bench learn run of both folds does."""
    from tests.integration.test_bench_learn import TINY_YAML

    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    code, _, err = run_cli("preprocess", raw, "--out", tmp_path / "pp", "--workers", "1")
    assert code == 0, err
    args = [tmp_path / "tiny.yaml", tmp_path / "pp" / "preprocessed.json", tmp_path / "cv", "--steps", "2",
            "--predict-args=--threads 1", "--et-grid", "0,500"]
    for task in run_array("slurm_cv_array.sbatch", args, timeout=600):  # 2 train + 2 predict subprocesses
        assert task.returncode == 0, task.stderr
    parts = [json.loads((tmp_path / "cv" / f"learn_folds_{i}.json").read_text()) for i in range(2)]
    report = json.loads((tmp_path / "cv" / "learn.json").read_text())
    assert report["complete"] and report["n_cases"] == 5 and report["folds_run"] == [0, 1]
    cases = report["variants"]["base"]["cases"]
    assert sorted(cases) == sorted(c for p in parts for c in p["variants"]["base"]["cases"])
    assert {cases[c]["fold"] for c in cases} == {0, 1}
    assert all(p["config_sha256"] == report["config_sha256"] for p in parts)


def test_cv_array_recipe_refuses_a_raw_manifest(raw, tmp_path):
    proc = subprocess.run(["bash", str(CLUSTER / "slurm_cv_array.sbatch"), "c.yaml", str(raw), str(tmp_path / "cv"),
                           "--steps", "2"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=recipe_env(SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_COUNT="2"))
    assert proc.returncode == 2 and "preprocessed.json" in proc.stderr and not (tmp_path / "cv").exists()
