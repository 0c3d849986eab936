"""Step parameters and Kaapana's environment contract: round trips, Kaapana-style values, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field, ValidationError

from cardiofm.contracts.coordinator import SiteJoinParams, SitePseudolabelParams
from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.predict import (
    ExportDicomParams,
    MeasureParams,
    PredictParams,
    SendResultsParams,
    StageSeriesParams,
)
from cardiofm.contracts.selection import SeriesRules
from cardiofm.contracts.steps import (
    STEPS,
    BuildDatasetParams,
    ConvertParams,
    CropHeartParams,
    ImportLabelsParams,
    PrepareReportParams,
    SelectSeriesParams,
    StageStudiesParams,
    StepParams,
    TrainLocalParams,
)
from cardiofm.errors import ConfigError

#: One instance per step with every field away from its default (where it has one).
NON_DEFAULT: dict[str, StepParams] = {
    "select-series": SelectSeriesParams(
        site_config="/site/site.yaml",
        rules=SeriesRules(
            min_slices=20,
            require_axial=False,
            require_image_type=("ORIGINAL",),
            description_exclude=["score", "^mip"],
            kernels_preferred=["Bv36", "I26f"],
            prefer=["most_slices", "thinnest"],
            max_slice_thickness_mm=None,
            preferred_phase_percent=75,
        ),
    ),
    "convert": ConvertParams(name="ct_1", timeout_s=12.5, compress=True),
    "crop-heart": CropHeartParams(
        segmenter="totalsegmentator",
        margin_mm=7.5,
        spacing_mm=1.5,
        segmenter_python="/opt/ts/bin/python",
        device="cuda",
        timeout_s=99.0,
    ),
    "import-labels": ImportLabelsParams(site_config="/site/site.yaml", site_dir="/site"),
    "build-dataset": BuildDatasetParams(
        dataset_dir="/data/ds", site_id="site-07", site_config="/site/site.yaml", test_fraction=0.5, split_seed=3
    ),
    "stage-studies": StageStudiesParams(
        site_config="/site/site.yaml",
        site_dir="/site",
        dicomweb_url="https://pacs.example.org/dicom-web",
        pacs_user="cardiofm",
        pacs_password_env="SITE_PACS_PASSWORD",
        dimse="pacs.example.org:11112",
        dimse_mode="c-move",
        called_ae="PACS",
        calling_ae="CFM",
        move_ae="CFM_MOVE",
        move_port=11113,
        listen_address="10.0.0.5",
    ),
    "prepare-report": PrepareReportParams(
        dataset_dir="/data/ds", steps=["stage", "select"], stage_dir="stage", select_dir="select"
    ),
    "site-pseudolabel": SitePseudolabelParams(
        dataset=Path("/data/ds"), work_dir=Path("/data/work"), teachers_dir=Path("/models"), tasks=("hinge", "calc")
    ),
    "site-join": SiteJoinParams(
        superlink="coordinator.example.org:9443",
        ca_cert=Path("/secrets/ca.pem"),
        private_key=Path("/secrets/site.key"),
        dataset=Path("/data/ds"),
        work_dir=Path("/data/work"),
        pinned_fab_sha256=["ab" * 32, "cd" * 32],
        timeout_s=60.0,
        grace_s=1.5,
        runtime_port=9099,
        node_config={"gpu": True, "site-name": "north", "workers": 2, "scale": 0.5},
        insecure_dev=True,
    ),
    "train-local": TrainLocalParams(
        dataset=Path("/data/ds"),
        out=Path("/data/teachers/teacher-septum.pt"),
        task="septum",
        steps=17,
        run_config={"patch-size-vox": 96, "spacing-mm": 1.5, "teacher-filters": "8,16,32,64"},
    ),
    "stage-series": StageSeriesParams(
        series_uids=["1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"],
        dicom_folder="/data/dicom",
        dicomweb_url="https://pacs.example.org/dicom-web",
        pacs_user="cardiofm",
    ),
    "predict": PredictParams(
        model=["/models/release", "/models/teacher-septum.pt"], native_dir="nifti", min_confidence=0.5, device="cpu"
    ),
    "measure": MeasureParams(native_dir="nifti", non_contrast=True),
    "export-dicom": ExportDicomParams(dicom_dir="dicom", native_dir="nifti"),
    "send-results": SendResultsParams(dimse="pacs.example.org:104", called_ae="PACS", calling_ae="CFM"),
}

#: The smallest valid environment of each step (its required fields only).
REQUIRED_ENV: dict[str, dict[str, str]] = {
    "select-series": {},
    "convert": {},
    "crop-heart": {},
    "import-labels": {"SITE_CONFIG": "/site/site.yaml"},
    "build-dataset": {"DATASET_DIR": "/data/ds"},
    "stage-studies": {"SITE_CONFIG": "/site/site.yaml"},
    "prepare-report": {"DATASET_DIR": "/data/ds"},
    "site-pseudolabel": {"DATASET": "/data/ds", "WORK_DIR": "/data/work"},
    "train-local": {"DATASET": "/data/ds", "OUT": "/data/t.pt", "TASK": "landmarks"},
    "stage-series": {"SERIES_UIDS": str(["1.2.826.0.1.3680043.8.498.1"])},
    "predict": {"MODEL": str(["/models/release"])},
    "measure": {},
    "export-dicom": {},
    "send-results": {},
    "site-join": {
        "SUPERLINK": "coordinator.example.org:9443",
        "DATASET": "/data/ds",
        "WORK_DIR": "/data/work",
        "PINNED_FAB_SHA256": str(["ab" * 32]),
    },
}


def test_every_step_has_a_non_default_example() -> None:
    assert set(NON_DEFAULT) == set(STEPS)
    for step, params in NON_DEFAULT.items():
        assert type(params) is STEPS[step]
        assert params.step == step


@pytest.mark.parametrize("step", sorted(STEPS))
def test_round_trip_through_env(step: str) -> None:
    params = NON_DEFAULT[step]
    env = params.to_env()
    assert all(isinstance(k, str) and k.isupper() and isinstance(v, str) for k, v in env.items())
    assert set(env) == {name.upper() for name in type(params).model_fields}
    assert STEPS[step].from_env(env) == params


@pytest.mark.parametrize("step", sorted(STEPS))
def test_defaults_round_trip_and_unset_vars_keep_defaults(step: str) -> None:
    cls = STEPS[step]
    params = cls.from_env(REQUIRED_ENV[step])
    assert cls.from_env(params.to_env()) == params
    # a container environment holds much more than the step's variables; those are not parameters
    noisy = {**REQUIRED_ENV[step], "PATH": "/usr/bin", "HOME": "/root", "WORKFLOW_DIR": "/data"}
    assert cls.from_env(noisy) == params


def test_none_is_written_as_empty_and_read_back() -> None:
    env = SelectSeriesParams().to_env()
    assert env["SITE_CONFIG"] == ""
    assert SelectSeriesParams.from_env(env).site_config is None


@pytest.mark.parametrize("text", ["", "None", "null", "  "], ids=["empty", "None", "null", "blank"])
def test_kaapana_none_values(text: str) -> None:
    params = CropHeartParams.from_env({"SEGMENTER_PYTHON": text})
    assert params.segmenter_python is None
    assert ImportLabelsParams.from_env({"SITE_CONFIG": "/s.yaml", "SITE_DIR": text}).site_dir is None


def test_rules_as_python_repr_dict() -> None:
    """Kaapana passes UI-form values as ``str(value)``: a dict arrives as its Python repr."""
    value: dict[str, Any] = {
        "min_slices": 24,
        "require_axial": False,
        "description_exclude": ["score", "mip"],
        "require_image_type": ("ORIGINAL", "PRIMARY"),
        "max_slice_thickness_mm": None,
        "contrast": "any",
    }
    text = str(value)
    assert "'" in text
    assert "False" in text
    assert "None" in text
    rules = SelectSeriesParams.from_env({"RULES": text}).rules
    assert rules.min_slices == 24
    assert rules.require_axial is False
    assert rules.description_exclude == ["score", "mip"]
    assert rules.require_image_type == ("ORIGINAL", "PRIMARY")
    assert rules.max_slice_thickness_mm is None
    assert rules.contrast == "any"


def test_rules_as_json_and_as_python_repr_agree() -> None:
    rules = NON_DEFAULT["select-series"].rules  # type: ignore[attr-defined]
    as_json = SelectSeriesParams.from_env({"RULES": SelectSeriesParams(rules=rules).to_env()["RULES"]})
    as_repr = SelectSeriesParams.from_env({"RULES": str(rules.model_dump())})
    assert as_json.rules == as_repr.rules == rules


class _FlagParams(StepParams):
    """A step with the field types Kaapana forms produce (booleans, lists, optional numbers)."""

    step = "flags"
    enabled: bool = False
    names: list[str] = Field(default_factory=list)
    limit: float | None = None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ENABLED": "True"}, {"enabled": True}),
        ({"ENABLED": "False"}, {"enabled": False}),
        ({"ENABLED": "true"}, {"enabled": True}),
        ({"NAMES": str(["a", "b"])}, {"names": ["a", "b"]}),
        ({"NAMES": '["a", "b"]'}, {"names": ["a", "b"]}),
        ({"NAMES": "[]"}, {"names": []}),
        ({"LIMIT": "None"}, {"limit": None}),
        ({"LIMIT": ""}, {"limit": None}),
        ({"LIMIT": "2.5"}, {"limit": 2.5}),
    ],
    ids=["True", "False", "true", "py-list", "json-list", "empty-list", "None", "empty", "number"],
)
def test_kaapana_style_scalars(env: dict[str, str], expected: dict[str, object]) -> None:
    params = _FlagParams.from_env(env)
    for name, value in expected.items():
        assert getattr(params, name) == value


@pytest.mark.parametrize(
    ("cls", "env", "var"),
    [
        (CropHeartParams, {"MARGIN_MM": "-3"}, "MARGIN_MM"),
        (CropHeartParams, {"MARGIN_MM": "wide"}, "MARGIN_MM"),
        (CropHeartParams, {"SEGMENTER": "magic"}, "SEGMENTER"),
        (CropHeartParams, {"SPACING_MM": "0"}, "SPACING_MM"),
        (CropHeartParams, {"DEVICE": "tpu"}, "DEVICE"),
        (ConvertParams, {"NAME": "../image"}, "NAME"),
        (ConvertParams, {"TIMEOUT_S": "0"}, "TIMEOUT_S"),
        (SelectSeriesParams, {"RULES": "{'min_slices': 0}"}, "RULES"),
        (SelectSeriesParams, {"RULES": "{'prefer': ['fastest']}"}, "RULES"),
        (SelectSeriesParams, {"RULES": "{'description_exclude': ['(']}"}, "RULES"),
        (SelectSeriesParams, {"RULES": "{'min_slices': 20"}, "RULES"),
        (SelectSeriesParams, {"RULES": "None"}, "RULES"),
        (ImportLabelsParams, {}, "SITE_CONFIG"),
        (BuildDatasetParams, {"DATASET_DIR": "/d", "SITE_ID": "Site 1"}, "SITE_ID"),
        (BuildDatasetParams, {"DATASET_DIR": "/d", "TEST_FRACTION": "1.5"}, "TEST_FRACTION"),
        (BuildDatasetParams, {"DATASET_DIR": "/d", "SPLIT_SEED": "[1, 2"}, "SPLIT_SEED"),
    ],
    ids=[
        "margin-negative",
        "margin-text",
        "segmenter-unknown",
        "spacing-zero",
        "device-unknown",
        "name-path",
        "timeout-zero",
        "rules-min-slices",
        "rules-prefer",
        "rules-bad-regex",
        "rules-unparsable",
        "rules-None",
        "site-config-missing",
        "site-id-pattern",
        "test-fraction",
        "split-seed-unparsable",
    ],
)
def test_invalid_value_names_the_variable(cls: type[StepParams], env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError) as info:
        cls.from_env(env)
    assert var in str(info.value)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        CropHeartParams(margin_mm=5.0, margn_mm=5.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        CropHeartParams.model_validate({"margn_mm": 5.0})
    with pytest.raises(ValidationError):
        SelectSeriesParams.model_validate({"rules": {"min_slice": 3}})
    with pytest.raises(ConfigError, match="RULES"):
        SelectSeriesParams.from_env({"RULES": "{'min_slice': 3}"})


def test_params_are_frozen() -> None:
    params = CropHeartParams()
    with pytest.raises(ValidationError):
        params.margin_mm = 3.0  # type: ignore[misc]


# --- Kaapana's workflow contract -------------------------------------------------------------------


def _contract(tmp: Path, **overrides: str) -> dict[str, str]:
    env = {
        "WORKFLOW_DIR": str(tmp / "wf"),
        "BATCH_NAME": "batch",
        "OPERATOR_IN_DIR": "select-series",
        "OPERATOR_OUT_DIR": "convert",
        "RUN_ID": "manual__2030-01-01",
        "DAG_ID": "cardiofm-prepare",
        "TASK_ID": "convert",
    }
    env.update(overrides)
    return env


def test_context_from_env_round_trips(tmp_path: Path) -> None:
    env = _contract(tmp_path)
    ctx = KaapanaContext.from_env({**env, "PATH": "/usr/bin"})
    assert ctx.to_env() == env
    assert KaapanaContext.from_env(ctx.to_env()) == ctx
    assert ctx.batch_dir == tmp_path / "wf" / "batch"
    assert ctx.step_dir == tmp_path / "wf" / "convert"


def test_context_optional_variables_have_defaults(tmp_path: Path) -> None:
    env = _contract(tmp_path)
    for name in ("BATCH_NAME", "RUN_ID", "DAG_ID", "TASK_ID"):
        del env[name]
    ctx = KaapanaContext.from_env(env)
    assert ctx.batch_name == "batch"


@pytest.mark.parametrize("var", ["WORKFLOW_DIR", "OPERATOR_IN_DIR", "OPERATOR_OUT_DIR"])
def test_context_missing_variable_is_named(tmp_path: Path, var: str) -> None:
    env = _contract(tmp_path)
    del env[var]
    with pytest.raises(ConfigError) as info:
        KaapanaContext.from_env(env)
    assert var in str(info.value)


@pytest.mark.parametrize("var", ["WORKFLOW_DIR", "OPERATOR_IN_DIR", "OPERATOR_OUT_DIR"])
def test_context_empty_required_variable_is_named(tmp_path: Path, var: str) -> None:
    """An empty WORKFLOW_DIR would silently mean the current folder; it counts as missing."""
    with pytest.raises(ConfigError) as info:
        KaapanaContext.from_env(_contract(tmp_path, **{var: ""}))
    assert var in str(info.value)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("OPERATOR_OUT_DIR", "../x"),
        ("OPERATOR_IN_DIR", "/etc"),
        ("OPERATOR_OUT_DIR", "a/b"),
        ("BATCH_NAME", ".."),
        ("BATCH_NAME", ""),
        ("OPERATOR_IN_DIR", ".hidden"),
    ],
    ids=["out-parent", "in-absolute", "out-nested", "batch-dotdot", "batch-empty", "in-hidden"],
)
def test_context_bad_dir_name_is_rejected(tmp_path: Path, var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        KaapanaContext.from_env(_contract(tmp_path, **{var: value}))
    assert var in str(info.value)


def test_partial_env_validates_a_dags_fixed_settings() -> None:
    """A DAG sets some fields at parse time; a wrong name or value fails then, naming it."""
    env = CropHeartParams.partial_env({"segmenter": "totalsegmentator", "margin_mm": 15})
    assert env == {"SEGMENTER": "totalsegmentator", "MARGIN_MM": "15.0"}
    assert CropHeartParams.from_env(env).margin_mm == 15.0
    with pytest.raises(ConfigError, match=r"no parameter.*margin_cm"):
        CropHeartParams.partial_env({"margin_cm": 2})
    with pytest.raises(ConfigError, match="margin_mm"):
        CropHeartParams.partial_env({"margin_mm": 500})
    with pytest.raises(ConfigError, match="segmenter"):
        CropHeartParams.partial_env({"segmenter": "magic"})
    env = SiteJoinParams.partial_env({"pinned_fab_sha256": ["ab" * 32], "timeout_s": 7200})
    assert env == {"PINNED_FAB_SHA256": json.dumps(["ab" * 32]), "TIMEOUT_S": "7200.0"}


def test_contradictory_pacs_settings_name_option_and_variable() -> None:
    from cardiofm.dicom.pacs import open_source

    both = StageStudiesParams(site_config="s.yaml", dicomweb_url="http://pacs/dicom-web", dimse="pacs:104")
    with pytest.raises(ConfigError, match=r"--dicomweb-url \(DICOMWEB_URL\).*not both"):
        open_source(both, {})
    no_password = StageStudiesParams(site_config="s.yaml", dicomweb_url="http://pacs/dicom-web", pacs_user="u")
    with pytest.raises(ConfigError, match="CARDIOFM_PACS_PASSWORD"):
        open_source(no_password, {})
    assert open_source(StageStudiesParams(site_config="s.yaml"), {}) is None


def test_an_empty_form_field_keeps_the_default_of_a_field_that_cannot_be_none() -> None:
    """Kaapana sends an untouched optional form field as an empty string: the step keeps its default."""
    params = SitePseudolabelParams.from_env({"DATASET": "/d", "WORK_DIR": "/w", "TASKS": ""})
    assert params.tasks == ()
    assert CropHeartParams.from_env({"MARGIN_MM": ""}).margin_mm == 20.0
    # a field that may be None still reads an empty value as None
    assert ImportLabelsParams.from_env({"SITE_CONFIG": "/s.yaml", "SITE_DIR": ""}).site_dir is None
    with pytest.raises(ConfigError, match="SITE_CONFIG"):
        ImportLabelsParams.from_env({"SITE_CONFIG": ""})  # required: empty is still missing
