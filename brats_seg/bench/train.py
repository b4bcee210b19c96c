"""Tables and the loader options of `brats-seg bench train` (the measuring is in
brats_seg/bench/train_step.py and brats_seg/bench/loader_speed.py)."""
from __future__ import annotations

from pathlib import Path

from brats_seg.bench.common import markdown_table

REFERENCES = (("monai", "MONAI loop on our preprocessed arrays"),
              ("monai_tutorial", "MONAI BraTS-tutorial loop (raw NIfTI per sample)"))


def format_table(r: dict) -> str:
    rows = [["pure forward+backward", f"{r['fwd_bwd_s'] * 1000:.0f}", ""],
            ["pure forward+backward, default layout (as the references run)",
             f"{r['reference_fwd_bwd_s'] * 1000:.0f}", ""],
            ["pure forward+backward+optimiser", f"{r['fwd_bwd_opt_s'] * 1000:.0f}", ""],
            ["brats-seg train step (loader + step + bookkeeping)", f"{r['train_step_s'] * 1000:.0f}", f"{r['samples_per_s']:.2f}"]]
    for prefix, label in REFERENCES:
        if f"{prefix}_step_s" in r:
            rows.append([label, f"{r[f'{prefix}_step_s'] * 1000:.0f}", f"{r[f'{prefix}_samples_per_s']:.2f}"])
    table = markdown_table(["side", "ms / step", "samples / s"], rows)
    table += (f"\n\noverhead of data loading and bookkeeping: {100 * r['overhead_vs_fwd_bwd_opt']:+.1f}% vs "
              f"forward+backward+optimiser ({100 * r['overhead_vs_fwd_bwd']:+.1f}% vs forward+backward; target <= 10%)")
    for prefix, label in REFERENCES:
        if f"speedup_vs_{prefix}" in r:
            table += f"; samples/s vs {label}: {r[f'speedup_vs_{prefix}']:.2f}x (target >= 1.5)"
    table += (f"\n\nof that, the memory layout gives {r['layout_speedup']:.2f}x (forward+backward in our layout vs the "
              f"default one); the rest is the data path")
    table += f" — {r['device']}, patch {r['patch_size']}, batch {r['batch_size']}, {r['num_workers']} loader workers"
    return table


LOADER_CHOICES = ("on", "off", "only")


def add_loader_options(p, case: Path, config: Path) -> None:
    """`bench train`'s loader part (brats_seg/bench/loader_speed.py): one real case, one core."""
    p.add_argument("--loader", choices=LOADER_CHOICES, default="on",
                   help="the loader part: samples/s one core draws for --loader-config (only: skip the step part)")
    p.add_argument("--loader-case", type=Path, default=case, help="a BraTS case folder, preprocessed at --loader-spacing")
    p.add_argument("--loader-config", type=Path, default=config, help="the recipe whose patches and augmentation are drawn")
    p.add_argument("--loader-spacing", default="1.0", help="mm, as the recipe wants its data preprocessed")
    p.add_argument("--loader-samples", type=int, default=64, help="timed samples per contender")
    p.add_argument("--loader-override", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of --loader-config (repeatable)")


def loader_report(args) -> tuple[dict | None, str]:
    """(result, Markdown) of the loader part, or (None, "") with --loader off."""
    if args.loader == "off":
        return None, ""
    from brats_seg.bench.loader_speed import bench_loader
    from brats_seg.commands.preprocess import parse_spacing
    from brats_seg.core.paths import refuse_overwrite
    from brats_seg.errors import InputError

    if args.loader_samples < 1:
        raise InputError("--loader-samples", f"got {args.loader_samples}; expected an integer >= 1")
    try:
        spacing = parse_spacing(args.loader_spacing)
    except InputError as err:
        raise InputError("--loader-spacing", err.message) from None
    if not Path(args.loader_case).is_dir():
        raise InputError(args.loader_case, "is not a case folder; expected a BraTS case folder (--loader-case), "
                                           "or --loader off to skip the loader part")
    for out in (args.out, args.out.with_suffix(".md")):
        refuse_overwrite(out, [args.loader_case, args.loader_config], "--out", out_is_folder=False)
    result = bench_loader(args.loader_case, args.loader_config, args.loader_override, spacing, args.loader_samples)
    return result, format_loader_table(result)


def format_loader_table(r: dict) -> str:
    rows = []
    for name, label in (("patches", "brats-seg PatchDataset (clipped box, SimpleITK)"),
                        ("reference", "previous reader (whole box, grid_sample)")):
        s = r[name]
        rows.append([label, f"{s['samples_per_cpu_s']:.2f}", f"{s['cpu_s_per_sample'] * 1000:.0f}",
                     f"{s['warped_cpu_ms']:.0f}", f"{s['max_region_mb']:.0f}", f"{s['samples_per_wall_s']:.2f}"])
    table = markdown_table(["loader, one core", "samples / CPU s", "CPU ms / sample", "CPU ms / rotated or zoomed",
                            "largest region read (MB)", "samples / wall s"], rows, "lrrrrr")
    ok = "meets" if r["patches"]["samples_per_cpu_s"] >= r["target_samples_per_s"] else "misses"
    return (table + f"\n\n{r['speedup']:.2f}x the previous reader; {ok} the target of "
            f">= {r['target_samples_per_s']:g} samples/s per core ({r['workers_for_step']} worker(s) keep a 0.5 s step "
            f"of 2 patches fed) — {r['case']} at {_spacing(r['spacing'])}, patch {r['patch_size']}, {r['samples']} samples each "
            f"({100 * r['patches']['warped_fraction']:.0f}% rotated or zoomed); largest difference "
            f"{r['max_image_difference']:.1e}, labels differing {100 * r['label_disagreement']:.3f}%")


def _spacing(spacing) -> str:
    return spacing if isinstance(spacing, str) else "x".join(f"{v:g}" for v in spacing) + " mm"
