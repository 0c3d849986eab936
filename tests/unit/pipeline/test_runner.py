"""``run_batch``: one step over a Kaapana batch with a toy case function (no imaging involved)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest

from cardiofm import __version__
from cardiofm.contracts.dataset import CaseRecord
from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.steps import StepParams
from cardiofm.errors import EXIT_OK, EXIT_SKIP, InputDataError, LabelError
from cardiofm.pipeline.runner import (
    CASE_RECORD,
    QUARANTINE_MARKER,
    StepSummary,
    case_dirs,
    params_sha256,
    run_batch,
)


class ToyParams(StepParams):
    """Parameters of the toy step: a suffix appended to each case's value."""

    step: ClassVar[str] = "toy"
    suffix: str = "!"


class OtherParams(ToyParams):
    """A second step with the same work, to chain steps."""

    step: ClassVar[str] = "toy-2"


def toy(in_dir: Path, out_dir: Path, params: ToyParams) -> list[str]:
    """Copy ``value.txt`` with a suffix; 'bad*' values are input errors, 'bug' a programming error."""
    value = (in_dir / "value.txt").read_text()
    (out_dir / "partial.txt").write_text("written before any check")
    if value.startswith("bad"):
        raise InputDataError(f"value {value!r} is unusable")
    if value == "label":
        raise LabelError("label 'X9' is not in the site label map")
    if value == "bug":
        raise ZeroDivisionError("a bug, not a data problem")
    (out_dir / "value.txt").write_text(value + params.suffix)
    (out_dir / "sub").mkdir()
    (out_dir / "sub" / "a.txt").write_text("a")
    (out_dir / "sub" / "b.txt").write_text("b")
    return [f"read {value}"]


def make_batch(root: Path, values: dict[str, str], in_dir: str = "in") -> KaapanaContext:
    """A workflow folder with one case per entry of ``values``; returns the context in → out."""
    for case, value in values.items():
        d = root / "batch" / case / in_dir
        d.mkdir(parents=True)
        (d / "value.txt").write_text(value)
    (root / "batch").mkdir(parents=True, exist_ok=True)
    return KaapanaContext(workflow_dir=root, operator_in_dir=in_dir, operator_out_dir="out", task_id="toy")


def read_summary(ctx: KaapanaContext) -> dict[str, object]:
    return json.loads((ctx.step_dir / "summary.json").read_text())


def test_all_cases_done(tmp_path: Path) -> None:
    ctx = make_batch(tmp_path, {"c1": "a", "c2": "b"})
    seen: list[str] = []
    summary = run_batch(ctx, ToyParams(), toy, on_case=seen.append)
    assert summary.done == ["c1", "c2"]
    assert summary.quarantined == {}
    assert seen == ["c1", "c2"]
    assert (ctx.batch_dir / "c1" / "out" / "value.txt").read_text() == "a!"
    assert StepSummary.from_json(read_summary(ctx)).done == summary.done
    assert read_summary(ctx) == {
        "step": "toy",
        "in": 2,
        "done": 2,
        "done_cases": ["c1", "c2"],
        "quarantined": [],
        "seconds": pytest.approx(0, abs=5),
    }


def test_one_bad_case_is_quarantined_and_the_batch_goes_on(tmp_path: Path) -> None:
    ctx = make_batch(tmp_path, {"c1": "a", "c2": "bad-value", "c3": "label", "c4": "d"})
    summary = run_batch(ctx, ToyParams(), toy)
    assert summary.done == ["c1", "c4"]
    assert set(summary.quarantined) == {"c2", "c3"}
    assert summary.total == 4 == len(summary.done) + len(summary.quarantined)

    out = ctx.batch_dir / "c2" / "out"
    marker = json.loads((out / QUARANTINE_MARKER).read_text())
    assert marker["step"] == "toy"
    assert marker["error"] == "InputDataError"
    assert "'bad-value' is unusable" in marker["reason"]
    # what the step wrote before it failed is kept for the operator; its result is not there
    assert (out / "partial.txt").is_file()
    assert not (out / "value.txt").exists()
    assert json.loads((ctx.batch_dir / "c3" / "out" / QUARANTINE_MARKER).read_text())["error"] == "LabelError"

    written = read_summary(ctx)
    assert written["in"] == 4
    assert written["done"] == 2
    assert written["quarantined"] == [
        {"case": "c2", "reason": "value 'bad-value' is unusable"},
        {"case": "c3", "reason": "label 'X9' is not in the site label map"},
    ]
    # a quarantined case gets no provenance record for the step
    assert not (ctx.batch_dir / "c2" / CASE_RECORD).exists()


def test_later_steps_skip_quarantined_cases(tmp_path: Path) -> None:
    ctx = make_batch(tmp_path, {"c1": "a", "c2": "bad", "c3": "c"})
    run_batch(ctx, ToyParams(), toy)
    nxt = KaapanaContext(workflow_dir=tmp_path, operator_in_dir="out", operator_out_dir="out2")
    assert [d.name for d in case_dirs(nxt)] == ["c1", "c3"]
    summary = run_batch(nxt, OtherParams(suffix="?"), toy)
    assert summary.done == ["c1", "c3"]
    assert summary.total == 2
    assert (ctx.batch_dir / "c1" / "out2" / "value.txt").read_text() == "a!?"
    assert not (ctx.batch_dir / "c2" / "out2").exists()


def test_cases_without_the_input_folder_are_not_counted(tmp_path: Path) -> None:
    ctx = make_batch(tmp_path, {"c1": "a"})
    (ctx.batch_dir / "c2").mkdir()  # no in/ folder: not a case of this step
    (ctx.batch_dir / "stray.txt").write_text("not a case folder")
    summary = run_batch(ctx, ToyParams(), toy)
    assert summary.done == ["c1"]
    assert summary.total == 1


def test_programming_errors_are_not_swallowed(tmp_path: Path) -> None:
    ctx = make_batch(tmp_path, {"c1": "a", "c2": "bug"})
    with pytest.raises(ZeroDivisionError):
        run_batch(ctx, ToyParams(), toy)
    assert not (ctx.batch_dir / "c2" / "out" / QUARANTINE_MARKER).exists()


@pytest.mark.parametrize(
    ("values", "code"),
    [
        ({"c1": "a", "c2": "b"}, EXIT_OK),
        ({"c1": "a", "c2": "bad"}, EXIT_OK),
        ({}, EXIT_SKIP),
        ({"c1": "bad", "c2": "bad2"}, InputDataError.exit_code),
    ],
    ids=["all-done", "some-done", "empty", "all-failed"],
)
def test_exit_codes(tmp_path: Path, values: dict[str, str], code: int) -> None:
    ctx = make_batch(tmp_path, values)
    summary = run_batch(ctx, ToyParams(), toy)
    assert summary.exit_code() == code
    assert (ctx.step_dir / "summary.json").is_file()


def test_missing_batch_folder_is_an_empty_batch(tmp_path: Path) -> None:
    ctx = KaapanaContext(workflow_dir=tmp_path / "nothing", operator_in_dir="in", operator_out_dir="out")
    summary = run_batch(ctx, ToyParams(), toy)
    assert summary.total == 0
    assert summary.exit_code() == EXIT_SKIP
    assert read_summary(ctx)["in"] == 0


def test_exit_code_values() -> None:
    assert (EXIT_OK, EXIT_SKIP, InputDataError.exit_code) == (0, 126, 3)
    assert StepSummary("s", quarantined={"c": "why"}).exit_code() == 3


def test_provenance_one_record_per_step(tmp_path: Path) -> None:
    ctx = make_batch(tmp_path, {"c1": "a"})
    first, second = ToyParams(), OtherParams(suffix="?")
    run_batch(ctx, first, toy)
    run_batch(KaapanaContext(workflow_dir=tmp_path, operator_in_dir="out", operator_out_dir="out2"), second, toy)
    record = CaseRecord.model_validate_json((ctx.batch_dir / "c1" / CASE_RECORD).read_text())
    assert record.case_id == "c1"
    assert [s.step for s in record.steps] == ["toy", "toy-2"]
    toy_rec, other_rec = record.steps
    assert toy_rec.version == __version__
    assert toy_rec.params_sha256 == params_sha256(first)
    assert other_rec.params_sha256 == params_sha256(second)
    assert toy_rec.params_sha256 != other_rec.params_sha256
    assert toy_rec.notes == ["read a"]
    assert other_rec.notes == ["read a!"]
    assert toy_rec.outputs == ["out/partial.txt", "out/sub/ (2 files)", "out/value.txt"]
    assert "out2/value.txt" in other_rec.outputs
    assert toy_rec.seconds >= 0


def test_params_hash_is_stable_and_sensitive() -> None:
    assert params_sha256(ToyParams()) == params_sha256(ToyParams(suffix="!"))
    assert params_sha256(ToyParams()) != params_sha256(ToyParams(suffix="?"))
    assert len(params_sha256(ToyParams())) == 16


def test_rerun_replaces_the_output_folder_and_the_step_record(tmp_path: Path) -> None:
    ctx = make_batch(tmp_path, {"c1": "a"})
    run_batch(ctx, ToyParams(), toy)
    out = ctx.batch_dir / "c1" / "out"
    (out / "stale.txt").write_text("from an earlier run")
    run_batch(ctx, ToyParams(suffix="#"), toy)
    assert not (out / "stale.txt").exists()
    assert (out / "value.txt").read_text() == "a#"
    record = CaseRecord.model_validate_json((ctx.batch_dir / "c1" / CASE_RECORD).read_text())
    assert [s.step for s in record.steps] == ["toy"]
    assert record.steps[0].params_sha256 == params_sha256(ToyParams(suffix="#"))


def test_rerun_after_a_fix_lifts_the_quarantine(tmp_path: Path) -> None:
    ctx = make_batch(tmp_path, {"c1": "bad"})
    assert run_batch(ctx, ToyParams(), toy).quarantined
    (ctx.batch_dir / "c1" / "in" / "value.txt").write_text("fixed")
    summary = run_batch(ctx, ToyParams(), toy)
    assert summary.done == ["c1"]
    assert not (ctx.batch_dir / "c1" / "out" / QUARANTINE_MARKER).exists()
    assert read_summary(ctx)["quarantined"] == []


def test_upstream_quarantine_marker_skips_the_case(tmp_path: Path) -> None:
    ctx = make_batch(tmp_path, {"c1": "a", "c2": "b"})
    (ctx.batch_dir / "c2" / "in" / QUARANTINE_MARKER).write_text("{}")
    summary = run_batch(ctx, ToyParams(), toy)
    assert summary.done == ["c1"]
    assert summary.total == 1
    assert not (ctx.batch_dir / "c2" / "out").exists()
