"""Bad DICOM folders given to predict (and ingest): one `error:` line naming the folder or file, exit 2,
nothing written. Series are written with tests.unit.test_dicom.write_series."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_dicom import series_uid, volume, write_case, write_series


def one_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def empty(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def not_dicom(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not an image")
    return folder


def non_image_sop(folder: Path) -> Path:
    return write_series(folder, volume((8, 8, 3)), sop_class="1.2.840.10008.5.1.4.1.1.66", modality="OT")


def mixed_sizes(folder: Path) -> Path:
    write_series(folder, volume())
    return write_series(folder, volume((16, 18, 2)), origin=(0.0, 0.0, 20.0), name="B")  # same UID, other size


def missing_slice(folder: Path) -> Path:
    return write_series(folder, volume(), skip=(6,))


def duplicate_slice(folder: Path) -> Path:
    write_series(folder, volume())
    return write_series(folder, volume((20, 18, 1)), origin=(0.0, 0.0, 3.0), name="DUP")


def single_slice(folder: Path) -> Path:
    return write_series(folder, volume((20, 18, 1)))


CASES = {
    empty: "is an empty folder; expected a DICOM series folder",
    not_dicom: "holds 1 file(s) but none is DICOM",
    non_image_sop: "holds 3 DICOM file(s) but no image series (IM0000.dcm: SOP class 1.2.840.10008.5.1.4.1.1.66",
    mixed_sizes: f"series {series_uid(1)} mixes slice sizes 16x18 (2 files), 20x18 (14 files)",
    missing_slice: f"series {series_uid(1)} has uneven slice spacing: 2 mm between IM0005.dcm and IM0007.dcm, 1 mm",
    duplicate_slice: f"series {series_uid(1)} has two slices at the same position",
    single_slice: "is a single 2D slice; expected a 3D series",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.run_fixtures import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("run") / "run")


@pytest.mark.parametrize("make", list(CASES), ids=[f.__name__ for f in CASES])
def test_bad_series_is_one_line_and_writes_nothing(tmp_path, run_cli, run, make):
    paths = write_case(tmp_path / "P17")
    bad = make(tmp_path / "bad_t2")
    paths["t2"] = bad
    before = sorted((p.name, p.stat().st_size) for p in bad.iterdir())
    code, _, err = run_cli("predict", "--model", run, *(a for c, p in paths.items() for a in (f"--{c}", p)),
                           "--out", tmp_path / "out")
    line = one_line(code, err)
    assert CASES[make] in line, line
    assert line.startswith(f"error: {bad}") and not (tmp_path / "out").exists()
    assert sorted((p.name, p.stat().st_size) for p in bad.iterdir()) == before


def test_series_on_another_grid_names_register(tmp_path, run_cli, run):
    paths = write_case(tmp_path / "P17")
    write_series(tmp_path / "t2b", volume(), spacing=(1.0, 1.0, 2.0), uid=series_uid(77))
    paths["t2"] = tmp_path / "t2b"
    code, _, err = run_cli("predict", "--model", run, *(a for c, p in paths.items() for a in (f"--{c}", p)),
                           "--out", tmp_path / "out")
    line = one_line(code, err)
    assert line.startswith(f"error: {tmp_path / 't2b'}: spacing ") and "--register" in line


def test_ingest_of_a_case_with_a_broken_series_is_one_line(tmp_path, run_cli):
    write_case(tmp_path / "data" / "P17")
    t2 = tmp_path / "data" / "P17" / "t2"
    sorted(t2.iterdir())[5].unlink()  # a slice lost in transfer
    code, _, err = run_cli("ingest", tmp_path / "data", "--out", tmp_path / "raw.json")
    assert "uneven slice spacing" in one_line(code, err) and not (tmp_path / "raw.json").exists()


def test_register_bounds_are_checked_where_they_enter(tmp_path, run_cli):
    base = ["predict", "--model", tmp_path / "none", "--t1", "a", "--t1ce", "b", "--t2", "c", "--flair", "d",
            "--out", tmp_path / "o"]
    for flags, where in ((["--register", "--register-max-rotation", "-1"], "--register-max-rotation"),
                         (["--register", "--register-max-shift", "nan"], "--register-max-shift"),
                         (["--register", "--register-sampling", "0"], "--register-sampling"),
                         (["--register-max-shift", "5"], "--register-max-shift")):
        line = one_line(*run_cli(*base, *flags)[::2])
        assert line.startswith(f"error: {where}: "), line
