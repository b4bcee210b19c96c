"""`python -m brats_seg ...` (what torchrun launches) is the same as the `brats-seg` script."""
import sys

from brats_seg.cli import main

sys.exit(main())
