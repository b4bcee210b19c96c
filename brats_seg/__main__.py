"""`python -m brats_seg ...` (what torchrun launches) is the same as the `brats-seg` script.

A rank of a torchrun job (WORLD_SIZE > 1) leaves with os._exit once main() has returned: its work is
written, its loader closed and its process group destroyed by then, and interpreter finalisation can
still abort in gloo's C++ threads (SIGABRT, "terminate called without an active exception"; torch
2.13, rare), which would turn a finished rank into a failed job."""
import os
import sys

from brats_seg.cli import main

code = main()
if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
