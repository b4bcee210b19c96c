"""Table for `brats-seg bench train` (the measuring is in brats_seg/train/bench.py)."""
from __future__ import annotations

from brats_seg.bench.common import markdown_table


def format_table(r: dict) -> str:
    rows = [["pure forward+backward", f"{r['fwd_bwd_s'] * 1000:.0f}", ""],
            ["pure forward+backward+optimiser", f"{r['fwd_bwd_opt_s'] * 1000:.0f}", ""],
            ["brats-seg train step (loader + step + bookkeeping)", f"{r['train_step_s'] * 1000:.0f}", f"{r['samples_per_s']:.2f}"]]
    if "monai_step_s" in r:
        rows.append(["MONAI reference loop (same model and step)", f"{r['monai_step_s'] * 1000:.0f}", f"{r['monai_samples_per_s']:.2f}"])
    table = markdown_table(["side", "ms / step", "samples / s"], rows)
    table += (f"\n\noverhead of data loading and bookkeeping: {100 * r['overhead_vs_fwd_bwd_opt']:+.1f}% vs "
              f"forward+backward+optimiser ({100 * r['overhead_vs_fwd_bwd']:+.1f}% vs forward+backward; target <= 10%)")
    if "speedup_vs_monai" in r:
        table += f"; samples/s vs MONAI: {r['speedup_vs_monai']:.2f}x (target >= 1.5)"
    table += f" — {r['device']}, patch {r['patch_size']}, batch {r['batch_size']}, {r['num_workers']} loader workers"
    return table
