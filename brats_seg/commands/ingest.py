"""`brats-seg ingest SRC... --out raw.json`: discover and validate cases, write the raw manifest."""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", type=Path, metavar="SRC", help="dataset or case folders")
    p.add_argument("--out", required=True, type=Path, help="raw manifest to write (JSON)")
    p.add_argument("--layout", default="auto", choices=["auto", "brats2021", "brats2023", "msd", "nnunet"])
    p.add_argument("--labels", default="auto", choices=["auto", "brats2021", "brats2023", "msd"],
                   help="label convention on disk (auto: from the layout and the values found)")
    p.add_argument("--channels", default="t1,t1ce,t2,flair", help="comma-separated channel list, in pipeline order")
    p.add_argument("--skip-invalid", action="store_true", help="list bad cases under 'rejected' and go on")
    p.add_argument("--workers", type=int, default=1, help="parallel processes for reading and checking")


def run(args: argparse.Namespace) -> int:
    from brats_seg.ingest.stage import ingest

    channels = tuple(c.strip().lower() for c in args.channels.split(",") if c.strip())
    manifest = ingest(args.sources, args.out, args.layout, args.labels, channels, args.skip_invalid, args.workers)
    print(f"ingested {len(manifest['cases'])} case(s), rejected {len(manifest['rejected'])} -> {args.out}")
    return 0
