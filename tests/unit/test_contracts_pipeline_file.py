"""Pipeline files (`brats-seg run`): the shape and value types (contracts/pipeline_file.py), and every
stage's options checked against its command (pipeline/stages.py) before any stage runs."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brats_seg.contracts.pipeline_file import parse_pipeline
from brats_seg.errors import InputError
from brats_seg.pipeline.runner import load_pipeline, plan_pipeline, run_pipeline

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FILE = Path("/somewhere/study.yaml")

scalars = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(min_size=1, max_size=20))
values = st.one_of(scalars, st.lists(scalars, min_size=1, max_size=4))
option_names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(lambda k: k != "stage")
hostile = st.sampled_from([None, "", {"a": 1}, [], [[1]], [None], math.nan, math.inf, -math.inf])


@FAST
@given(options=st.dictionaries(option_names, values, max_size=5), name=st.text(min_size=1, max_size=12))
def test_property_well_typed_stages_parse_with_their_options(options, name):
    spec = parse_pipeline(FILE, {"stages": [{"stage": name, **options}], "vars": {"v": 1}})
    assert spec.stages[0].stage == name and spec.stages[0].options == options
    assert spec.variables() == {"v": "1"}


@FAST
@given(key=option_names, bad=hostile, index=st.integers(0, 2))
def test_property_a_value_no_flag_takes_is_one_line_naming_the_stage_and_option(key, bad, index):
    stages = [{"stage": "synth", "out": "d"} for _ in range(3)]
    stages[index][key] = bad
    with pytest.raises(InputError) as err:
        parse_pipeline(FILE, {"stages": stages})
    line = err.value.line()
    assert line.startswith(f"error: {FILE}: stages/{index}/{key}") and "\n" not in line


@pytest.mark.parametrize("document, field", [
    (None, "(top)"), ([1, 2], "(top)"), ({"stages": []}, "stages"), ({"stage": []}, "stages"),
    ({"stages": [{"out": "x"}]}, "stages/0/stage"), ({"stages": [{"stage": 3}]}, "stages/0/stage"),
    ({"stages": [{"stage": "synth", "a-b": 1}]}, "stages/0"), ({"stages": [{"stage": "s"}], "vars": {"a b": 1}}, "vars"),
    ({"stages": [{"stage": "s"}], "vars": {"a": [1]}}, "vars/a"), ({"stages": [{"stage": "s"}], "workdir": ""}, "workdir"),
    ({"stages": [{"stage": "s"}], "extra": 1}, "extra")])
def test_a_badly_shaped_file_is_one_line_naming_the_field(document, field):
    with pytest.raises(InputError) as err:
        parse_pipeline(FILE, document)
    assert err.value.line().startswith(f"error: {FILE}: {field}")


def _plan(tmp_path: Path, stages: list[dict]):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}))
    return plan_pipeline(path, load_pipeline(path, {})["stages"], tmp_path / "w")


@pytest.mark.parametrize("stage, message", [
    ({"stage": "teleport", "out": "x"}, "unknown stage 'teleport'"),
    ({"stage": "synth", "out": "d", "colour": "red"}, "unknown option 'colour'"),
    ({"stage": "synth", "out": "d", "cases": "many"}, "invalid int value: 'many'"),
    ({"stage": "predict", "out": "p"}, "required: --model"),
    ({"stage": "predict", "out": "p", "model": "m", "manifest": "r.json", "tta": "maybe"}, "expected true or false"),
    ({"stage": "predict", "out": "p", "model": "m", "manifest": "r.json", "device": "tpu"}, "invalid choice"),
    ({"stage": "predict", "out": "p", "model": "m", "manifest": "r.json", "tta": True, "tta_axes": "0,7"},
     "--tta-axes"),
    ({"stage": "predict", "out": "p", "model": "m", "manifest": "r.json", "min_component_fraction": 2},
     "--min-component-fraction"),
    ({"stage": "predict", "out": "p", "model": "m", "manifest": "r.json", "max_voxels": -1}, "--max-voxels"),
    ({"stage": "report", "eval": "e", "out": "o", "overrides": ["a=1"]}, "takes no KEY=VALUE"),
    ({"stage": "train", "data": "d.json", "out": "t", "overrides": ["epochs"]}, "is not KEY=VALUE"),
    ({"stage": "synth", "cases": 1}, "missing 'out:'")])
def test_options_are_checked_against_the_command_before_anything_runs(tmp_path: Path, stage: dict, message: str):
    first = {"stage": "synth", "out": "data", "cases": 1}
    with pytest.raises(InputError, match=message) as err:
        _plan(tmp_path, [first, stage])
    assert str(tmp_path / "p.yaml") in err.value.line() and "stages/1" in err.value.line()
    assert not (tmp_path / "w").exists()


def test_paths_follow_the_workdir_and_switches_and_lists_take_their_forms(tmp_path: Path):
    plan = _plan(tmp_path, [
        {"stage": "synth", "out": "data", "shape": [32, 32, 24]},
        {"stage": "ingest", "sources": ["data"], "out": "raw.json"},
        {"stage": "predict", "model": "run", "manifest": "raw.json", "out": "pred", "qa": True, "tta": "false"}])
    work = (tmp_path / "w").resolve()
    assert plan[0].ctx.argv == ["synth", "--out", str(work / "data"), "--shape", "32,32,24"]
    predict = plan[2].ctx.argv
    assert "--qa" in predict and "--tta" not in predict
    assert predict[predict.index("--data-root") + 1] == str(work / "data")  # the ingest source, passed on
    assert plan[2].ctx.inputs == [work / "raw.json", work / "run"]


def test_the_workdir_may_not_be_an_input_folder(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("mine")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"stage": "ingest", "sources": [str(src)], "out": "raw.json"}]}))
    with pytest.raises(InputError, match="--workdir"):
        run_pipeline(path, src)
    assert sorted(p.name for p in src.iterdir()) == ["keep.txt"]


def test_a_stage_output_may_not_be_the_pipeline_file(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"stage": "synth", "out": str(tmp_path / "p.yaml")}]}))
    before = path.read_text()
    with pytest.raises(InputError, match="is one of"):
        run_pipeline(path, tmp_path / "w")
    assert path.read_text() == before
