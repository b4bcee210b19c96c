"""Outputs never replace inputs: the one check every command runs before it writes anything.

A command refuses an output path that is one of its input files or folders (also through a
symlink or a hard link), and an output folder that directly holds one of its input files (its
outputs would land among, and could take the names of, the user's own files). "Holds" counts the
folder an input is named in (a symlink placed there is the user's file too), the folder its real
file lives in, and a hard link of it under the same name. A new file written beside the inputs,
or an output folder that merely contains the inputs' folders, stays allowed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from brats_seg.errors import InputError


def _real(path: Path) -> Path:
    """The absolute path with every symlink followed (a symlink loop stays as written)."""
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or folder (equal real paths, or one inode)."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet), or cannot be looked at
        return False


def _folders_holding(given: Path) -> list[Path]:
    """The folders an input file is directly in: where it is named, and where its real file lives."""
    named_in = _real(given.parent)
    lives_in = _real(given).parent
    return [named_in] if named_in == lives_in else [named_in, lives_in]


def _holds(folder: Path, given: Path) -> bool:
    if any(_same(folder, parent) for parent in _folders_holding(given)):
        return True
    return _same(folder / given.name, given)  # a hard link (or symlink) of it under the same name


def refuse_overwrite(out: Path | str, inputs: Iterable[Path | str], option: str = "--out",
                     out_is_folder: bool | None = None) -> None:
    """InputError (exit 2) when writing to `out` could replace one of `inputs`; nothing is written.

    inputs: the files (and folders) the command reads; pass the files a folder argument lists
    when the command writes among them. out_is_folder: whether the command writes files inside
    `out`; None guesses (an existing folder, or a name without a suffix).
    """
    target = Path(out).expanduser().absolute()
    if out_is_folder is None:
        out_is_folder = target.is_dir() or not target.suffix
    for item in inputs:
        given = Path(item).expanduser().absolute()
        if _same(target, given):
            raise InputError(out, f"{option} is one of the command's inputs ({item}); choose a new path, "
                                  "outputs never replace inputs")
        if out_is_folder and given.is_file() and _holds(target, given):
            raise InputError(out, f"{option} folder holds the command's input {item}; write outputs to "
                                  "another folder, outputs never go among the inputs")
