"""Test helper, not a test: `brats-seg ARGS` as one torchrun rank that records the exit code its
`main` returns in $RANK_EXIT_DIR/rank<RANK> before exiting with it. torchrun, signalled itself,
reports no exit codes of its ranks, and the pre-emption tests must see every rank's 75."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from brats_seg.cli import main

if __name__ == "__main__":
    code = main(sys.argv[1:])
    folder = os.environ.get("RANK_EXIT_DIR")
    if folder:
        Path(folder, f"rank{os.environ.get('RANK', '0')}").write_text(f"{code}\n")
    sys.exit(code)
