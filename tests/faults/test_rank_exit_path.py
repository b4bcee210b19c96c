"""`python -m brats_seg` as a torchrun rank (WORLD_SIZE > 1) leaves by os._exit once main() returns, so
interpreter finalisation (where torch 2.13's gloo threads can abort a finished rank) never runs;
its exit code and its output are still what main gave. A single process exits normally."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the package's real __main__ with an exit handler that writes a marker: the marker shows
# whether finalisation ran.
PROBE = ("import atexit, runpy, sys; from pathlib import Path; marker = Path(sys.argv[1]); "
         "atexit.register(lambda: marker.write_text('finalised')); "
         "sys.argv = ['brats_seg', 'ingest', sys.argv[2], '--out', sys.argv[3]]; "
         "runpy.run_module('brats_seg', run_name='__main__')")


@pytest.mark.parametrize("world_size,finalised", [("2", False), ("1", True), ("", True)])
def test_a_rank_skips_finalisation_and_keeps_its_exit_code_and_error_line(tmp_path: Path, world_size: str,
                                                                            finalised: bool):
    marker, missing = tmp_path / "marker", tmp_path / "no_such_folder"
    env = {**os.environ, "WORLD_SIZE": world_size}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(marker), str(missing), str(tmp_path / "raw.json")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no_such_folder" in lines[0], proc.stderr
    assert marker.exists() == finalised
