"""Sharded batch stages (--shard I/N): which cases a shard does, where its partial manifest goes,
and the merge that the last shard to finish runs, so N shards end with what one run would write.

Layout under a stage's output folder:
  <name>.json                        one run's manifest, or the merge of all shards
  shards/<name>.shard-I-of-N.json    shard I's partial manifest
  .locks/                            per-shard run locks and the merge lock

The stage supplies how its manifests are loaded, saved and rebuilt from entries (core does not
know the manifest schema); the mechanism (file names, completeness, compatibility, locking) is here.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from brats_seg.core.locks import exclusive_lock
from brats_seg.errors import InputError

SHARD_DIR = "shards"
LOCK_DIR = ".locks"
MERGE_WAIT_S = 600.0  # a merging shard holds the lock for well under a second


def parse_shard(text: str) -> tuple[int, int]:
    """A --shard argument 'I/N' with 0 <= I < N."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError("--shard", f"{text!r} is not I/N; expected e.g. 0/4")
    if count < 1 or not 0 <= index < count:
        raise InputError("--shard", f"{text!r} is out of range; expected 0 <= I < N")
    return index, count


def select_shard(cases: list[dict], shard: tuple[int, int]) -> list[dict]:
    """Deterministic 1/N of the cases: sorted by id, every N-th starting at I (the same split in every stage)."""
    index, count = shard
    return sorted(cases, key=lambda c: c["id"])[index::count]


@dataclass(frozen=True)
class ShardedManifest:
    """One stage's sharded manifest: its name and how its manifests are read, written and rebuilt."""

    name: str  # file stem, e.g. "preprocessed"
    load: Callable[[Path], dict]  # read and check one manifest of this stage
    save: Callable[[Path, dict], None]  # validate and write one manifest atomically
    build: Callable[[list[dict], list[dict], str, dict], dict]  # (entries, rejected, input sha256, config)
    run_key: Callable[[dict], object]  # equal for every shard of one run
    mismatch: str  # the error when shards' run keys differ
    run_lock: str  # lock file of one shard's run, formatted with index and count
    merge_lock: str  # lock file of the merge

    def path(self, out_dir: Path, shard: tuple[int, int]) -> Path:
        """Where shard `shard` writes its manifest (the final manifest for an unsharded run)."""
        if shard[1] == 1:
            return Path(out_dir) / f"{self.name}.json"
        return Path(out_dir) / SHARD_DIR / f"{self.name}.shard-{shard[0]}-of-{shard[1]}.json"

    @contextlib.contextmanager
    def locked(self, out_dir: Path, shard: tuple[int, int]) -> Iterator[None]:
        """Refuse a second run of the same shard on the same folder while this one works."""
        with exclusive_lock(Path(out_dir) / LOCK_DIR / self.run_lock.format(index=shard[0], count=shard[1])):
            yield

    def write(self, out_dir: Path, manifest: dict, shard: tuple[int, int]) -> tuple[Path, Path | None]:
        """Save this shard's manifest; the shard that completes the set also merges it.

        Returns (the path written, the merged manifest's path or None).
        """
        path = self.path(out_dir, shard)
        if shard[1] > 1:
            manifest = {**manifest, "shard": {"index": shard[0], "count": shard[1]}}
        self.save(path, manifest)
        if shard[1] == 1:
            return path, None
        return path, self.merge_when_complete(out_dir, shard[1])

    def merge_when_complete(self, out_dir: Path, count: int) -> Path | None:
        """Merge if all `count` shards are there, under a lock so two finishing shards don't race."""
        with exclusive_lock(Path(out_dir) / LOCK_DIR / self.merge_lock, wait_seconds=MERGE_WAIT_S):
            if all((i, count) in self.shard_files(out_dir) for i in range(count)):
                return self.merge(out_dir, count)
        return None

    def _run_key(self, path: Path, manifest: dict) -> object:
        """The run key of one shard manifest; a field it lacks is one error line naming the file."""
        try:
            return self.run_key(manifest)
        except KeyError as exc:
            raise InputError(path, f"lacks the field {exc.args[0]!r} that names its run; expected a shard manifest "
                                   f"as `--shard I/N` writes it (rerun that shard)") from None

    def shard_files(self, out_dir: Path) -> dict[tuple[int, int], Path]:
        """The shard manifests present, by (index, count)."""
        pattern = re.compile(rf"{re.escape(self.name)}\.shard-(\d+)-of-(\d+)\.json")
        found = {}
        for path in (Path(out_dir) / SHARD_DIR).glob(f"{self.name}.shard-*-of-*.json"):
            if m := pattern.fullmatch(path.name):
                found[(int(m.group(1)), int(m.group(2)))] = path
        return found

    def merge(self, out_dir: Path, count: int | None = None) -> Path:
        """Combine the shard manifests of `out_dir` into <name>.json; refuse an incomplete or mixed set."""
        files = self.shard_files(out_dir)
        counts = {n for _, n in files} if count is None else {count}
        if len(counts) != 1:
            raise InputError(out_dir, f"shard manifests of different shard counts {sorted(counts)}; "
                                      "expected one --shard I/N set")
        n = counts.pop()
        missing = [i for i in range(n) if (i, n) not in files]
        if missing:
            raise InputError(out_dir, f"shards {missing} of {n} have no {self.name} manifest yet; "
                                      f"expected all {n} to finish first")
        parts = [self.load(files[(i, n)]) for i in range(n)]
        if len({repr(self._run_key(files[(i, n)], p)) for i, p in enumerate(parts)}) != 1:
            raise InputError(out_dir, self.mismatch)
        entries = [e for p in parts for e in p["cases"]]
        rejected = [f for p in parts for f in p.get("rejected", [])]
        target = Path(out_dir) / f"{self.name}.json"
        self.save(target, self.build(entries, rejected, parts[0]["input_manifest_sha256"], parts[0]["config"]))
        return target
