"""`brats-seg bench {preprocess,train,infer,2d,contracts}`: speed measured side by side against a reference;
`brats-seg bench learn`: a training recipe judged by K-fold cross-validation (bench/learn.py);
`brats-seg bench paired A B`: two such studies compared case by case (bench/paired.py);
`brats-seg bench merge PART...`: the parts of one study (bench learn --only-folds) joined (bench/learn_merge.py).

Each prints a Markdown table and writes JSON + Markdown under --out (default runs/bench/).
"""
from __future__ import annotations

import argparse
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
SHARED_BRATS = SHARED / "brats2018_deepbrainseg"
PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
GPU_CASE = "Brats18_CBICA_AQN_1"  # `bench gpu`'s predict case when the shared data are there


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    pre = sub.add_parser("preprocess", help="preprocess vs decode floor vs MONAI chain")
    pre.add_argument("--data", type=Path, default=SHARED_BRATS, help="BraTS case folders")
    pre.add_argument("--workers", type=int, default=2)
    pre.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    pre.add_argument("--out", type=Path, default=Path("runs/bench/preprocess.json"))
    tr = sub.add_parser("train", help="train step vs pure forward+backward, and vs a MONAI loop")
    tr.add_argument("--data", type=Path, default=SHARED_BRATS, help="BraTS case folders (preprocessed at --spacing)")
    tr.add_argument("--config", type=Path, default=PIPELINES / "train" / "train_cpu.yaml")
    tr.add_argument("--spacing", default="2.0")
    tr.add_argument("--steps", type=int, default=10)
    tr.add_argument("--out", type=Path, default=Path("runs/bench/train.json"))
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    from brats_seg.bench.train import add_loader_options  # light: argparse only

    add_loader_options(tr, SHARED_BRATS / "Brats18_CBICA_AQN_1", PIPELINES / "train" / "train_gpu_brats.yaml")
    inf = sub.add_parser("infer", help="predict vs MONAI sliding_window_inference, same model")
    inf.add_argument("--model", type=Path, required=True, help="training run folder or checkpoint")
    inf.add_argument("--case", type=Path, default=SHARED_BRATS / "Brats18_CBICA_AQN_1", help="a BraTS case folder")
    inf.add_argument("--threads", type=int, default=2)
    inf.add_argument("--out", type=Path, default=Path("runs/bench/infer.json"))
    two = sub.add_parser("2d", help="2D fp32 vs int8: latency and mIoU")
    two.add_argument("--model", type=Path, default=None, help="2D run or checkpoint (default: train one for 300 s)")
    two.add_argument("--data", type=Path, default=SHARED / "camvid_segnet_samples")
    two.add_argument("--threads", type=int, default=2)
    two.add_argument("--train-seconds", type=float, default=300.0, help="training time when no --model is given")
    two.add_argument("--out", type=Path, default=Path("runs/bench/2d"))
    con = sub.add_parser("contracts", help="manifest models vs fastjsonschema on a large raw manifest")
    con.add_argument("--cases", type=int, default=1000, help="cases in the generated raw manifest")
    con.add_argument("--rounds", type=int, default=5, help="alternating rounds; best-round medians are reported")
    con.add_argument("--out", type=Path, default=Path("runs/bench/contracts.json"))
    from brats_seg.bench.learn_options import add_parser as add_learn  # light: argparse and errors only

    add_learn(sub, PIPELINES / "train" / "train_cpu.yaml")
    paired = sub.add_parser("paired", help="two bench learn studies compared case by case (B against A)")
    paired.add_argument("a", type=Path, help="the baseline study: a bench learn folder or its learn.json")
    paired.add_argument("b", type=Path, help="the study judged against it")
    paired.add_argument("--variant", default="base", help="which predict variant to pair (default base; e.g. tta)")
    paired.add_argument("--out", type=Path, default=Path("runs/bench/paired.json"))
    merge = sub.add_parser("merge", help="the parts of one bench learn study (--only-folds) joined into one report")
    merge.add_argument("parts", type=Path, nargs="+", help="learn_folds_*.json files of one study")
    merge.add_argument("--out", type=Path, required=True, help="the joined report, e.g. runs/cv/NAME/learn.json")
    _add_gpu(sub)


def _add_gpu(sub) -> None:
    gpu = sub.add_parser("gpu", help="the GPU check: AMP train steps/s, 2-GPU NCCL run, predict on CUDA vs CPU")
    gpu.add_argument("--config", type=Path, default=PIPELINES / "train" / "train_gpu_brats.yaml")
    gpu.add_argument("--steps", type=int, default=20, help="timed training steps per precision")
    gpu.add_argument("--case", type=Path, default=None,
                     help=f"a BraTS case folder for predict (default: {SHARED_BRATS.name}/{GPU_CASE}, else a phantom)")
    gpu.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                     help="cpu: a smoke test of the same code on the CPU (give tiny sizes as overrides)")
    gpu.add_argument("--ddp", choices=("auto", "always", "never"), default="auto",
                     help="the 2-rank torchrun run: auto = when two GPUs are present")
    gpu.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    gpu.add_argument("--out", type=Path, default=Path("runs/bench/gpu.json"))
    gpu.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of --config")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    return {"preprocess": _preprocess, "train": _train, "infer": _infer, "2d": _two_d,
            "contracts": _contracts, "learn": _learn, "gpu": _gpu, "paired": _paired,
            "merge": _merge}[args.bench](args)


def _check_args(args: argparse.Namespace) -> None:
    """Counts are >= 1, the training time a positive number, and no report replaces an input."""
    import math

    from brats_seg.core.flags import check_count
    from brats_seg.core.paths import refuse_overwrite
    from brats_seg.errors import InputError

    for name in ("workers", "rounds", "steps", "cases"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise InputError(f"--{name}", f"got {value}; expected an integer >= 1")
    check_count(getattr(args, "threads", None), "--threads")
    seconds = getattr(args, "train_seconds", None)
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise InputError("--train-seconds", f"got {seconds}; expected a positive number of seconds")
    inputs = [getattr(args, k) for k in ("data", "config", "model", "case", "loader_case", "loader_config", "a", "b")
              if getattr(args, k, None) is not None]
    inputs += list(getattr(args, "parts", None) or [])
    if args.bench == "paired":  # a study folder's learn.json is what it reads
        inputs += [Path(p) / "learn.json" for p in (args.a, args.b) if Path(p).is_dir()]
    folder = args.bench in ("2d", "learn")
    if not folder and Path(args.out).is_dir():
        raise InputError(args.out, "--out is a folder; expected the report's file name, e.g. runs/bench/report.json")
    if not folder:
        from brats_seg.bench.common import check_report_path

        check_report_path(args.out)
    for out in [args.out] if folder else [args.out, args.out.with_suffix(".md")]:
        refuse_overwrite(out, inputs, "--out", out_is_folder=folder)


def _raw_manifest(data: Path, folder: Path, workers: int = 2) -> Path:
    from brats_seg.errors import InputError
    from brats_seg.ingest.stage import ingest

    if not Path(data).is_dir():
        raise InputError(data, "benchmark data folder not found; expected BraTS case folders (see --data)")
    raw = folder / "raw.json"
    ingest([data], raw, workers=workers)
    return raw


def _preprocess(args) -> int:
    import tempfile

    from brats_seg.bench.preprocess import bench_preprocess

    with tempfile.TemporaryDirectory() as tmp:
        bench_preprocess(_raw_manifest(args.data, Path(tmp), args.workers), args.workers, args.out, args.rounds,
                         (args.data,))
    return 0


def _train(args) -> int:
    import tempfile

    from brats_seg.bench.common import save_report
    from brats_seg.commands.preprocess import parse_spacing
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import run_preprocess
    from brats_seg.bench.train import format_table, loader_report
    from brats_seg.bench.train_step import bench_train

    loader, loader_table = loader_report(args)  # --loader: one core's samples/s for the GPU recipe
    if args.loader == "only":
        save_report(args.out, {"loader": loader}, loader_table)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        raw = _raw_manifest(args.data, Path(tmp))
        run_preprocess(raw, Path(tmp) / "pp", PreprocessConfig(spacing=parse_spacing(args.spacing)), workers=2,
                       data_roots=(args.data,))
        result = bench_train(Path(tmp) / "pp" / "preprocessed.json", args.config, args.overrides, steps=args.steps,
                             data_roots=(args.data,))
    table = format_table(result)
    if loader is not None:
        result["loader"], table = loader, f"{table}\n\n{loader_table}"
    save_report(args.out, result, table)
    return 0


def _infer(args) -> int:
    from brats_seg.bench.infer import bench_infer

    bench_infer(args.model, args.case, args.threads, args.out)
    return 0


def _two_d(args) -> int:
    from brats_seg.bench.seg2d import bench_2d

    _, table = bench_2d(args.out, model=args.model, data=args.data, threads=args.threads,
                        train_seconds=args.train_seconds)
    print(table)
    return 0


def _contracts(args) -> int:
    from brats_seg.bench.common import save_report
    from brats_seg.bench.contracts import format_contracts_table, run_contracts_bench

    report = run_contracts_bench(args.cases, args.rounds)
    save_report(args.out, report, format_contracts_table(report))
    return 0


def _learn(args) -> int:
    from brats_seg.bench.learn import run_learn

    return run_learn(args)


def _paired(args) -> int:
    from brats_seg.bench.common import save_report
    from brats_seg.bench.paired import format_paired, paired_report

    report = paired_report(args.a, args.b, args.variant)
    save_report(args.out, report, format_paired(report))
    return 0


def _merge(args) -> int:
    from brats_seg.bench.common import save_report
    from brats_seg.bench.learn_merge import merge_parts
    from brats_seg.bench.learn_report import format_report

    report = merge_parts(args.parts, args.out)
    save_report(args.out, report, format_report(report))
    return 0


def _gpu(args) -> int:
    from brats_seg.bench.gpu import bench_gpu

    shared = SHARED_BRATS / GPU_CASE
    case = args.case if args.case is not None else (shared if shared.is_dir() else None)  # None: a phantom
    bench_gpu(args.config, args.overrides, args.out, args.device, args.steps, case, args.ddp, args.threads)
    return 0
