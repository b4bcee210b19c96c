"""The stop vote (engine.loop.stop_reason): its answers, and the budget's time fraction it hands the
LR schedule, the same on every rank (the max of the ranks' elapsed times)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from brats_seg.engine.distributed import DistInfo
from brats_seg.engine.loop import stop_reason


class Recorder:
    def __init__(self) -> None:
        self.fractions: list[float] = []

    def set_time_fraction(self, fraction: float) -> None:
        self.fractions.append(fraction)


def _vote(budget: float, elapsed: float, requested: bool = False, loss: float = 1.0,
          info: DistInfo = DistInfo()) -> tuple[str | None, list[float]]:
    schedule = Recorder()
    state = SimpleNamespace(info=info, schedule=schedule)
    session = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(time_budget_s=budget)),
                              stop=SimpleNamespace(requested=requested), last_loss=loss, elapsed=lambda: elapsed)
    return stop_reason(state, session), schedule.fractions


def test_vote_answers_and_time_fraction():
    assert _vote(0, 5.0) == (None, [])  # no budget: the schedule follows the steps alone
    assert _vote(10, 4.0) == (None, [0.4])
    assert _vote(10, 12.0) == ("budget", [1.2])  # the schedule clamps
    assert _vote(10, 4.0, requested=True)[0] == "preempted"
    assert _vote(10, 12.0, requested=True, loss=math.nan)[0] == "not_finite"  # first of all


def _rank(rank: int, init: str, results) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, world_size=2, backend="gloo")
        results[rank] = _vote(10, 3.0 if rank == 0 else 7.0, requested=rank == 1, info=info)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.ddp
def test_two_ranks_agree_on_the_stop_and_the_time_fraction(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(f"file://{tmp_path / 'store'}", results), nprocs=2, join=True)
        got = dict(results)
    assert got == {0: ("preempted", [0.7]), 1: ("preempted", [0.7])}  # rank 1's SIGTERM, rank 1's clock


@pytest.mark.parametrize("torchrun, swallowed", [(False, False), (True, True)])
def test_a_quick_second_ctrl_c_is_a_duplicate_only_under_torchrun(monkeypatch, torchrun, swallowed):
    """Single process: a double-tap is a second Ctrl-C (stop now). Under torchrun, a SIGINT within
    DUPLICATE_SIGINT_S is the agent forwarding the terminal's one and is ignored."""
    import signal

    from brats_seg.engine.runtime import StopFlag

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    if torchrun:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    flag = StopFlag()
    flag._handle(signal.SIGINT, None)
    assert flag.requested and flag.interrupted and flag.exit_code == 130
    if swallowed:
        flag._handle(signal.SIGINT, None)
    else:
        with pytest.raises(KeyboardInterrupt):
            flag._handle(signal.SIGINT, None)
