"""Process-level training setup shared by the 3D and 2D trainers: seeds, threads, determinism,
mixed precision, and the SIGTERM flag that turns pre-emption into "checkpoint and exit".

Exit codes of `brats-seg train`: 0 finished (epochs, steps or wall-clock budget reached);
1 training produced a non-finite loss or non-finite weights (one `error:` line naming the step; the
last good checkpoint is kept); 2 bad input (one `error:` line); 75 (EX_TEMPFAIL, "try again") stopped by SIGTERM after saving a
checkpoint: run the same command with --resume to continue.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from typing import Callable, ContextManager, Iterator

import numpy as np
import torch

EXIT_OK = 0
EXIT_NOT_FINITE = 1
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C after a checkpoint, as a shell reports SIGINT


def seed_all(seed: int) -> None:
    """Python, NumPy and torch (all devices) from one seed."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def configure_runtime(num_threads: int, deterministic: bool, device: torch.device) -> None:
    """Threads and (non-)deterministic kernels; cuDNN autotuning unless determinism is asked for."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if deterministic:
            warn(CUDA_NOT_BIT_EXACT)


# warn_only=True: an op without a deterministic CUDA kernel warns and runs anyway. The 3D models
# have one on every step: the backward of trilinear interpolation (the attention gates' resampling,
# and upsample: trilinear), so bit-identical CUDA reruns are not guaranteed (unmeasured: no GPU yet).
CUDA_NOT_BIT_EXACT = ("train.deterministic=true on CUDA: deterministic kernels are preferred, but the backward "
                      "of trilinear interpolation (used by the 3D models' attention gates) has no deterministic "
                      "CUDA kernel and runs anyway: repeated runs are not guaranteed to be bit-identical")
AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}  # as stored in ModelMeta.amp_dtype


def warn(message: str) -> None:
    """One `warning:` line on stderr, from rank 0 only under torchrun."""
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def amp_dtype(setting: str, device: torch.device, quiet: bool = False) -> torch.dtype | None:
    """Autocast dtype: AMP runs on CUDA only. bf16 only where it is native (compute capability >= 8,
    Ampere and newer); older GPUs (V100, T4) emulate it slowly although torch.cuda.is_bf16_supported()
    says yes, so there 'auto' and 'bf16' train in fp16 (with make_scaler's GradScaler) and warn once."""
    if device.type != "cuda" or setting == "none":
        return None
    if setting == "fp16":
        return torch.float16
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return torch.bfloat16
    if not quiet:
        warn(f"train.amp={setting}: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
             "has no native bf16; training in fp16 with a GradScaler")
    return torch.float16


def amp_name(setting: str, device: torch.device) -> str | None:
    """What training autocasts to, as stored in the checkpoint meta: 'bf16', 'fp16' or None (fp32)."""
    return AMP_NAMES.get(amp_dtype(setting, device, quiet=True))


def memory_format(setting: str, device: torch.device, dims: int = 3) -> torch.memory_format:
    """Layout of a model's weights and inputs. 3D: 'auto' is channels-last on CPU, where oneDNN's
    NDHWC convolutions made a CPU-recipe training step 1.6x faster than NCDHW (measured on 2
    cores, 64^3 patches), and the default layout on CUDA, where it is not measured. 2D (dims=2):
    'auto' is the default layout everywhere (not measured for the 2D models)."""
    if dims == 2:
        return torch.channels_last if setting == "channels_last" else torch.contiguous_format
    if setting == "channels_last" or (setting == "auto" and device.type == "cpu"):
        return torch.channels_last_3d
    return torch.contiguous_format


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], ContextManager]:
    """A zero-argument context factory: autocast when dtype is set, else a no-op."""
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, dtype: torch.dtype | None):
    """A GradScaler that is active only for fp16 (bf16 has fp32's range and needs none)."""
    enabled = dtype == torch.float16
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


DUPLICATE_SIGINT_S = 1.0  # a SIGINT this soon after the first is the same Ctrl-C (forwarded), not a second one
WORKER_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # loader workers ignore these: the rank decides


class StopFlag:
    """Sets `requested` on SIGTERM (cluster pre-emption) or a first SIGINT (Ctrl-C); the loop
    checkpoints and exits 75 (SIGTERM: run.json "preempted", which the launch scripts requeue) or
    130 (Ctrl-C first: run.json "interrupted", not requeued).

    The handler sets flags (and writes one line for Ctrl-C), so a signal in the middle of a step, a
    validation or a checkpoint write lets that work finish; the ranks agree to stop at the next
    stop vote. A second Ctrl-C is Python's KeyboardInterrupt (exit 130 at once, the last checkpoint
    intact: checkpoint writes are atomic), for a user who will not wait for the step to end; it
    takes effect between Python operations, so after the native call in hand (a convolution).
    Under torchrun one Ctrl-C can reach a rank twice (from the terminal, where the rank shares its
    process group, then forwarded by the agent), so there a SIGINT within DUPLICATE_SIGINT_S of the
    first counts as the same one; a single process takes every second Ctrl-C as one.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.interrupted = False  # the first stop request was a SIGINT
        self._first_interrupt: float | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._first_interrupt is not None:
                if now - self._first_interrupt < DUPLICATE_SIGINT_S and "TORCHELASTIC_RUN_ID" in os.environ:
                    return  # the same Ctrl-C again: torchrun's agent forwards the one the terminal sent
                raise KeyboardInterrupt
            self._first_interrupt = now
            self.interrupted = not self.requested
            with contextlib.suppress(OSError):  # stderr closed: the stop must still be recorded
                os.write(2, b"interrupt: stopping after this step with a checkpoint (Ctrl-C again: stop now)\n")
        self.requested = True

    def install(self) -> "StopFlag":
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    @property
    def exit_code(self) -> int:
        """The exit code of a run this flag stopped."""
        return EXIT_INTERRUPTED if self.interrupted else EXIT_PREEMPTED

    @staticmethod
    @contextlib.contextmanager
    def held() -> Iterator[None]:
        """Block SIGTERM and SIGINT while loader workers fork: a worker starts with them blocked
        until its init ignores them (engine.loader), so no signal meant for the rank can kill it
        before then; one that reached the rank meanwhile is delivered when the block lifts."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# Test-only fault injection (tests/faults/test_preempt_workers.py): BRATS_SEG_TEST_PAUSE=PHASE@STEP:SECONDS
# makes the phase ('step', 'validation' or 'checkpoint') sleep once when it is entered at optimiser
# step STEP, after writing BRATS_SEG_TEST_PAUSE_DIR/PHASE-rankR, so a test can signal the job there.
PAUSE_ENV, PAUSE_DIR_ENV = "BRATS_SEG_TEST_PAUSE", "BRATS_SEG_TEST_PAUSE_DIR"
_paused: set = set()


def pause_point(phase: str, step: int, rank: int = 0) -> None:
    """Sleep here when BRATS_SEG_TEST_PAUSE names this phase and step (test-only; unset: nothing)."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec or phase in _paused:
        return
    where, _, seconds = spec.partition(":")
    name, _, at = where.partition("@")
    if name != phase or int(at or -1) != step:
        return
    _paused.add(phase)
    folder = os.environ.get(PAUSE_DIR_ENV)
    if folder:
        with open(os.path.join(folder, f"{phase}-rank{rank}"), "w") as f:
            f.write(f"{os.getpid()}\n")
    import time

    time.sleep(float(seconds or 5))
