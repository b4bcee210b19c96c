"""The options of `brats-seg bench learn` (bench/learn.py), each checked once, before any fold
trains: a bad override or predict option fails in seconds, not after the first fold's hour."""
from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Sequence

from brats_seg.core.flags import check_minutes
from brats_seg.errors import InputError

DEFAULT_SPACING = "2.0"
RESERVED = ("data.fold", "data.folds", "train.time_budget_s", "train.max_steps")  # bench learn sets these
# predict's options bench learn sets itself, with the placeholder each is parsed with (None: unset)
SUBPROCESS_ONLY = {"model": Path("M"), "manifest": Path("R"), "out": Path("O"), "case": None, "t1": None,
                   "t1ce": None, "t2": None, "flair": None}


@dataclass(frozen=True)
class LearnOptions:
    config: Path
    data: Path
    out: Path
    folds: int
    minutes: float | None = None
    steps: int | None = None
    overrides: tuple[str, ...] = ()
    predict_args: tuple[str, ...] = ()
    compare_tta: bool = False
    spacing: str | None = None  # with a raw manifest: the preprocessing spacing (default 2.0 mm)
    et_grid: tuple[float, ...] = ()
    data_roots: tuple[Path, ...] = ()
    workers: int = 2
    only_folds: tuple[int, ...] = ()  # empty: every fold
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)  # name -> predict args

    def __post_init__(self) -> None:
        if (self.minutes is None) == (self.steps is None):
            raise InputError("--minutes", "give exactly one of --minutes M (a wall-clock budget per fold) and "
                                          "--steps S (a fixed number of optimiser steps per fold)")
        check_minutes(self.minutes, what="minutes per fold")
        if self.steps is not None and self.steps < 1:
            raise InputError("--steps", f"got {self.steps}; expected an integer >= 1")
        if self.folds < 2:
            raise InputError("--folds", f"got {self.folds}; expected at least 2 (every case is held out once)")
        if any(not 0 <= i < self.folds for i in self.only_folds) or len(set(self.only_folds)) != len(self.only_folds):
            raise InputError("--only-folds", f"got {','.join(map(str, self.only_folds))}; expected distinct fold "
                                             f"indices from 0 to {self.folds - 1} (--folds {self.folds})")
        for item in self.overrides:
            key = item.partition("=")[0].strip()
            if key in RESERVED or (self.steps is not None and key == "train.epochs"):
                raise InputError(item, f"{key} is set by bench learn (--folds, --minutes/--steps); leave it out")
        object.__setattr__(self, "variants", _variants(self.predict_args, self.compare_tta))

    @property
    def budget_s(self) -> float:
        return round(60.0 * self.minutes, 3) if self.minutes is not None else 0.0


def _variants(predict_args: Sequence[str], compare_tta: bool) -> dict[str, tuple[str, ...]]:
    """The predict settings scored: 'base' (--predict-args), and 'tta' (plus --tta) with --compare-tta."""
    ns = parse_predict_args(predict_args)
    if compare_tta and ns.tta:
        raise InputError("--predict-args", "holds --tta and --compare-tta was given; --compare-tta adds --tta itself")
    base = tuple(predict_args)
    return {"base": base, "tta": (*base, "--tta")} if compare_tta else {"base": base}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print usage and exit; one line instead
        raise InputError("--predict-args", f"{message}; expected `brats-seg predict` options")


def parse_predict_args(args: Sequence[str]) -> argparse.Namespace:
    """`brats-seg predict` options passed through, parsed by predict's own parser; the input,
    output, model, shard and ET threshold are bench learn's to set."""
    from brats_seg.commands.predict import configure

    parser = _Parser(prog="predict", add_help=False)
    configure(parser)
    placeholders = [a for k in ("model", "manifest", "out") for a in (f"--{k}", str(SUBPROCESS_ONLY[k]))]
    ns = parser.parse_args([*placeholders, *args])
    taken = [f"--{k}" for k, unset in SUBPROCESS_ONLY.items() if getattr(ns, k) != unset]
    taken += [flag for flag, set_ in (("--shard", ns.shard != "0/1"), ("--force", ns.force), ("--data-root", ns.data_root),
                                      ("--label-convention", ns.label_convention)) if set_]
    if taken:
        raise InputError("--predict-args", f"sets {', '.join(taken)}, which bench learn sets itself (use --data-root "
                                           "of bench learn); leave them out")
    if ns.et_min_mm3:
        raise InputError("--predict-args", "sets --et-min-mm3; bench learn predicts without it and scores every "
                                           "threshold of --et-grid on the saved masks (the table it prints)")
    if ns.min_component_mm3 or ns.min_component_fraction:
        raise InputError("--predict-args", "sets a component rule (--min-component-mm3/-fraction); bench learn "
                                           "predicts without one and scores every rule of its grid on the saved "
                                           "masks (the component table it prints)")
    _check_values(ns)
    return ns


def _check_values(ns: argparse.Namespace) -> None:
    """predict's own checks of the values (--overlap nan, --uncertainty without --tta, ...), now rather
    than after the first fold has trained; each error line names --predict-args."""
    from brats_seg.commands.predict import check_args

    try:
        check_args(ns)
    except InputError as exc:
        raise InputError("--predict-args", f"{exc}; expected valid `brats-seg predict` options") from None


def parse_only_folds(text: str | None) -> tuple[int, ...]:
    """--only-folds '0,2' -> (0, 2), sorted; None -> () (every fold). Ranges are checked with --folds."""
    if text is None:
        return ()
    items = [t.strip() for t in text.split(",")]
    if not items or not all(t.isdigit() for t in items):  # isdigit: no sign, no blank, no decimal point
        raise InputError("--only-folds", f"{text!r} is not valid; expected fold indices separated by commas, e.g. 0,1")
    return tuple(sorted(int(t) for t in items))


def options_from_args(args: argparse.Namespace) -> LearnOptions:
    """The checked options of `bench learn` (every value checked before anything runs)."""
    from brats_seg.bench.learn_threshold import ET_GRID_MM3, parse_grid

    try:
        predict_args = tuple(shlex.split(args.predict_args or ""))
    except ValueError as exc:
        raise InputError("--predict-args", f"{exc}; expected options as on the predict command line")
    return LearnOptions(config=args.config, data=args.data, out=args.out, folds=args.folds, minutes=args.minutes,
                        steps=args.steps, overrides=tuple(args.overrides), predict_args=predict_args,
                        compare_tta=args.compare_tta, spacing=args.spacing,
                        et_grid=ET_GRID_MM3 if args.et_grid is None else parse_grid(args.et_grid),
                        data_roots=tuple(args.data_root), workers=args.workers,
                        only_folds=parse_only_folds(args.only_folds))


def add_parser(sub: Any, config_default: Path) -> None:
    """The `bench learn` subcommand and its options (registered by commands/bench.py)."""
    p = sub.add_parser("learn", help="K-fold cross-validation of a training recipe: Dice, HD95, ET threshold")
    p.add_argument("--config", type=Path, default=config_default, help="training YAML (default %(default)s)")
    p.add_argument("--data", type=Path, required=True,
                   help="raw.json (brats-seg ingest; preprocessed into OUT/preprocessed at --spacing) or a "
                        "preprocessed.json (its raw manifest, which predict and evaluate read, is found from it)")
    p.add_argument("--folds", type=int, default=4, help="K: folds, each case held out once (default 4)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="wall-clock training budget per fold (train.time_budget_s)")
    budget.add_argument("--steps", type=int, help="fixed optimiser steps per fold (the schedule ends there)")
    p.add_argument("--out", type=Path, required=True, help="study folder (folds, runs, predictions, learn.json)")
    p.add_argument("--predict-args", default="", help='`brats-seg predict` options, e.g. "--tta --threads 2"')
    p.add_argument("--compare-tta", action="store_true", help="also predict with --tta and report both")
    p.add_argument("--spacing", default=None, help=f"with a raw --data: preprocessing spacing (default {DEFAULT_SPACING})")
    p.add_argument("--et-grid", default=None, help="ET thresholds in mm^3 to score (default 0,100,250,500,750,"
                                                 "1000,1500,2000,3000)")
    p.add_argument("--data-root", action="append", type=Path, default=[], metavar="DIR",
                   help="allow raw-manifest roots inside DIR (repeatable), as for preprocess and predict")
    p.add_argument("--workers", type=int, default=2, help="preprocessing workers (default 2)")
    p.add_argument("--only-folds", default=None, metavar="I,J",
                   help="run these folds only (e.g. one per cluster array job) and write OUT/learn_folds_I_J.json; "
                        "`brats-seg bench merge` joins the parts")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for brats-seg train")
