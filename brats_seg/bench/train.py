"""Table for `brats-seg bench train` (the measuring is in brats_seg/bench/train_step.py)."""
from __future__ import annotations

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
