"""k-fold split by case, deterministic from the seed and independent of manifest order."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from brats_seg.errors import InputError


def kfold_split(case_ids: Sequence[str], folds: int, fold: int, seed: int) -> dict:
    """{'folds', 'fold', 'seed', 'train': [...], 'val': [...]}; fold -1 puts every case in train.

    Cases are sorted, shuffled with the seed and dealt round-robin into folds, so fold sizes differ
    by at most one and the same ids + seed always give the same folds.
    """
    order = sorted(case_ids)
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0x5B17])).permutation(len(order))
    fold_of = {order[int(j)]: i % folds for i, j in enumerate(perm)}
    if fold < 0:
        train, val = order, []
    else:
        val = [c for c in order if fold_of[c] == fold]
        train = [c for c in order if fold_of[c] != fold]
        if not val:
            raise InputError("--fold", f"fold {fold} of {folds} has no validation case ({len(order)} labelled "
                                       f"cases); use fewer folds (data.folds) or fold -1 to train on all")
    if not train:
        raise InputError("--fold", f"no training case left for fold {fold} ({len(order)} labelled cases)")
    return {"folds": folds, "fold": fold, "seed": seed, "train": train, "val": val}
