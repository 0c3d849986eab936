"""Tests of the annotation readers/writers (MITK, Slicer, CSV, landmarks.json) and of label mapping."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pytest

from cardiofm.constants import LANDMARK_NAMES
from cardiofm.contracts.landmarks import Point3
from cardiofm.errors import LabelError
from cardiofm.labels.formats import (
    CSV_LAYOUTS,
    CsvLayout,
    ImportResult,
    RawPoint,
    apply_label_map,
    import_annotation,
    read_csv,
    read_landmarks_json,
    read_mps,
    read_mrk_json,
    write_csv,
    write_landmarks_json,
    write_mps,
    write_mrk_json,
)
from cardiofm.labels.labelmap import CONVENTIONS, LabelMap, site_names

#: Canonical points, LPS mm, with awkward decimals so formatting bugs show up.
POINTS: dict[str, Point3] = {
    "RCC": (12.345678901234, -98.7654321, 1234.5),
    "LCC": (-0.000001, 0.1, -7.25),
    "NCC": (1e-7, 3.0e2, -1e3),
    "RCO": (33.3333333333, 44.4444444444, -55.5555555555),
    "LCO": (-120.125, 80.0625, 600.03125),
    "MS1": (0.0, -0.0, 1.0),
    "MS2": (2.718281828459045, 3.141592653589793, -1.4142135623730951),
}
CONVENTION_IDS = sorted(CONVENTIONS)
PRIVATE_DIR = "patient-Jane-Doe-1970"


def site_points(convention: str) -> dict[str, Point3]:
    """``POINTS`` keyed by the convention's site labels."""
    names = site_names(convention)
    return {names[canonical]: xyz for canonical, xyz in POINTS.items()}


def assert_close(actual: Mapping[str, Point3], expected: Mapping[str, Point3], tol: float = 1e-6) -> None:
    assert list(actual) == list(expected)
    for name, xyz in expected.items():
        assert all(abs(a - e) <= tol for a, e in zip(actual[name], xyz, strict=True)), (name, actual[name], xyz)


def assert_clean_import(result: ImportResult) -> None:
    assert result.problems == []
    assert result.missing == ()
    assert_close(result.points, POINTS)


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    """A folder whose name must never appear in error messages."""
    folder = tmp_path / PRIVATE_DIR
    folder.mkdir()
    return folder


# --- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["numeric", "zero_based"], ids=["numeric", "zero-based"])
def test_mps_round_trip_numeric_ids(tmp_path: Path, convention: str) -> None:
    path = write_mps(tmp_path / "points.mps", site_points(convention))
    raw = read_mps(path)
    assert [label for label, _ in raw] == list(site_names(convention).values())
    assert_clean_import(apply_label_map(raw, CONVENTIONS[convention]))


@pytest.mark.parametrize("convention", CONVENTION_IDS, ids=CONVENTION_IDS)
def test_mps_round_trip_with_explicit_ids(tmp_path: Path, convention: str) -> None:
    names = site_names(convention)
    id_of = {names[c]: 10 + i for i, c in enumerate(LANDMARK_NAMES)}
    path = write_mps(tmp_path / "points.mps", site_points(convention), id_of=id_of)
    id_map = LabelMap(aliases={str(10 + i): c for i, c in enumerate(LANDMARK_NAMES)})
    assert_clean_import(apply_label_map(read_mps(path), id_map))


@pytest.mark.parametrize("system", ["LPS", "RAS"], ids=["lps", "ras"])
@pytest.mark.parametrize("convention", CONVENTION_IDS, ids=CONVENTION_IDS)
def test_mrk_json_round_trip(tmp_path: Path, convention: str, system: str) -> None:
    path = write_mrk_json(tmp_path / "points.mrk.json", site_points(convention), coordinate_system=system)  # type: ignore[arg-type]
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["markups"][0]["coordinateSystem"] == system
    assert document["@schema"].endswith("markups-schema-v1.0.3.json#")
    assert_clean_import(apply_label_map(read_mrk_json(path), CONVENTIONS[convention]))


@pytest.mark.parametrize("layout_name", sorted(CSV_LAYOUTS), ids=sorted(CSV_LAYOUTS))
@pytest.mark.parametrize("convention", CONVENTION_IDS, ids=CONVENTION_IDS)
def test_csv_round_trip(tmp_path: Path, convention: str, layout_name: str) -> None:
    layout = CSV_LAYOUTS[layout_name]
    case = "case-0001" if layout.case_column else ""
    path = write_csv(tmp_path / "points.csv", {case: site_points(convention)}, layout)
    by_case = read_csv(path, layout)
    assert list(by_case) == [case]
    assert_clean_import(apply_label_map(by_case[case], CONVENTIONS[convention]))


def test_site_wide_csv_keeps_cases_apart(tmp_path: Path) -> None:
    layout = CSV_LAYOUTS["german"]
    shifted = {name: (x + 1.0, y, z) for name, (x, y, z) in site_points("german").items()}
    path = write_csv(tmp_path / "site.csv", {"A": site_points("german"), "B": shifted}, layout)
    by_case = read_csv(path, layout)
    assert list(by_case) == ["A", "B"]
    assert_clean_import(apply_label_map(by_case["A"], CONVENTIONS["german"]))
    b = apply_label_map(by_case["B"], CONVENTIONS["german"]).points
    assert b["RCC"][0] == pytest.approx(POINTS["RCC"][0] + 1.0, abs=1e-9)


def test_landmarks_json_round_trip(tmp_path: Path) -> None:
    path = write_landmarks_json(tmp_path / "landmarks.json", dict(reversed(list(POINTS.items()))))
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["coordinate_system"] == "LPS"
    assert list(document["points"]) == list(LANDMARK_NAMES)
    assert_close(read_landmarks_json(path), POINTS, tol=0.0)


@pytest.mark.parametrize(
    ("file_name", "writer"),
    [
        ("a.mps", "mps"),
        ("a.mrk.json", "slicer"),
        ("a.csv", "csv"),
        ("landmarks.json", "canonical"),
    ],
    ids=["mps", "slicer", "csv", "landmarks-json"],
)
def test_import_annotation_dispatches_on_file_name(tmp_path: Path, file_name: str, writer: str) -> None:
    path = tmp_path / file_name
    layout = CSV_LAYOUTS["default"]
    if writer == "mps":
        write_mps(path, site_points("numeric"))
        label_map = CONVENTIONS["numeric"]
    elif writer == "slicer":
        write_mrk_json(path, site_points("verbose"), coordinate_system="RAS")
        label_map = CONVENTIONS["verbose"]
    elif writer == "csv":
        write_csv(path, {"": site_points("reference")}, layout)
        label_map = CONVENTIONS["reference"]
    else:
        write_landmarks_json(path, POINTS)
        label_map = LabelMap.identity()
    assert_clean_import(import_annotation(path, label_map, csv_layout=layout))


# --- LPS / RAS, hand-computed ------------------------------------------------------------------------------------


def test_ras_slicer_point_reads_as_flipped_lps(tmp_path: Path) -> None:
    path = tmp_path / "ras.mrk.json"
    markup = {"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [{"label": "RCC", "position": [1, 2, 3]}]}
    path.write_text(json.dumps({"markups": [markup]}), encoding="utf-8")
    assert read_mrk_json(path) == [("RCC", (-1.0, -2.0, 3.0))]


def test_lps_slicer_point_reads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "lps.mrk.json"
    markup = {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [{"label": "RCC", "position": [1, 2, 3]}]}
    path.write_text(json.dumps({"markups": [markup]}), encoding="utf-8")
    assert read_mrk_json(path) == [("RCC", (1.0, 2.0, 3.0))]


def test_ras_slicer_writer_stores_flipped_coordinates(tmp_path: Path) -> None:
    path = write_mrk_json(tmp_path / "ras.mrk.json", {"RCC": (-1.0, -2.0, 3.0)}, coordinate_system="RAS")
    control_point = json.loads(path.read_text(encoding="utf-8"))["markups"][0]["controlPoints"][0]
    assert control_point["position"] == [1.0, 2.0, 3.0]
    assert control_point["positionStatus"] == "defined"


def test_ras_csv_reads_as_flipped_lps(tmp_path: Path) -> None:
    path = tmp_path / "ras.tsv"
    path.write_text("name\tr\ta\ts\nRCC\t1\t2\t3\n", encoding="utf-8")
    assert read_csv(path, CSV_LAYOUTS["ras_tsv"]) == {"": [("RCC", (-1.0, -2.0, 3.0))]}


def test_german_csv_hand_written(tmp_path: Path) -> None:
    path = tmp_path / "Landmarken.csv"
    text = "\ufeffFall;Landmarke;X;Y;Z\r\n4711;MS oben;-12,5;3,25;1e-3\r\n\r\n4711;AKS;1;2;3\r\n"
    path.write_bytes(text.encode("utf-8"))
    layout = CSV_LAYOUTS["german"].model_copy(update={"encoding": "utf-8"})
    assert read_csv(path, layout) == {"4711": [("MS oben", (-12.5, 3.25, 0.001)), ("AKS", (1.0, 2.0, 3.0))]}


def test_german_csv_is_written_with_semicolons_and_decimal_commas(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "site.csv", {"7": {"MS oben": (-12.5, 3.25, 2.0)}}, CSV_LAYOUTS["german"])
    assert path.read_bytes().decode("cp1252") == "Fall;Landmarke;X;Y;Z\n7;MS oben;-12,5;3,25;2,0\n"


def test_mitk_file_as_mitk_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "mitk.mps"
    path.write_text(_mps_document(_MPS_POINTS), encoding="utf-8")
    assert read_mps(path) == [("0", (1.5, -2.25, 3.0)), ("3", (-10.0, 20.0, -30.125))]


def test_mitk_geometry_is_applied(tmp_path: Path) -> None:
    geometry = (
        '<Geometry3D ImageGeometry="false" FrameOfReferenceID="0">'
        '<IndexToWorld type="Matrix3x3" m_0_0="2" m_0_1="0" m_0_2="0" m_1_0="0" m_1_1="1" m_1_2="0" '
        'm_2_0="0" m_2_1="0" m_2_2="1"/><Offset type="Vector3D" x="10" y="0" z="-1"/></Geometry3D>'
    )
    path = tmp_path / "moved.mps"
    path.write_text(_mps_document(geometry + _MPS_POINTS), encoding="utf-8")
    assert read_mps(path) == [("0", (13.0, -2.25, 2.0)), ("3", (-10.0, 20.0, -31.125))]


def test_mitk_legacy_file_without_time_series(tmp_path: Path) -> None:
    path = tmp_path / "legacy.mps"
    path.write_text(f"<point_set_file><point_set>{_MPS_POINTS}</point_set></point_set_file>", encoding="utf-8")
    assert [label for label, _ in read_mps(path)] == ["0", "3"]


def test_empty_mitk_point_set(tmp_path: Path) -> None:
    path = write_mps(tmp_path / "empty.mps", {})
    assert read_mps(path) == []


# --- problems: reported, the rest still imports -----------------------------------------------------------------


def _kinds(result: ImportResult) -> list[tuple[str, str]]:
    return [(p.kind, p.label) for p in result.problems]


def test_unknown_label_is_reported_and_others_import() -> None:
    raw: list[RawPoint] = [*site_points("canonical").items(), ("XYZ", (1.0, 2.0, 3.0))]
    result = apply_label_map(raw, LabelMap.identity())
    assert _kinds(result) == [("unknown-id", "XYZ")]
    assert "label 'XYZ' is not in the site label map; add it to the site's label map" in result.problems[0].message
    assert result.problems[0].canonical is None
    assert_close(result.points, POINTS)


def test_empty_label_is_reported() -> None:
    result = apply_label_map([("", (1.0, 2.0, 3.0))], LabelMap.identity())
    assert _kinds(result) == [("unknown-id", "")]
    assert "an entry without a label" in result.problems[0].message


@pytest.mark.parametrize(
    ("raw", "expected_labels"),
    [
        ([("RCC", (1.0, 1.0, 1.0)), ("LCC", (2.0, 2.0, 2.0)), ("RCC", (3.0, 3.0, 3.0))], ["RCC", "RCC"]),
        ([("RCC", (1.0, 1.0, 1.0)), ("LCC", (2.0, 2.0, 2.0)), ("rcc ", (3.0, 3.0, 3.0))], ["RCC", "rcc "]),
    ],
    ids=["same-label-twice", "two-aliases"],
)
def test_duplicates_are_reported_and_neither_used(raw: list[RawPoint], expected_labels: list[str]) -> None:
    result = apply_label_map(raw, LabelMap.identity())
    assert _kinds(result) == [("duplicate", label) for label in expected_labels]
    assert all("none is used" in p.message and "RCC is annotated 2 times" in p.message for p in result.problems)
    assert result.points == {"LCC": (2.0, 2.0, 2.0)}
    assert "RCC" in result.missing


def test_duplicate_via_two_site_aliases() -> None:
    label_map = LabelMap(aliases={"ACC": "NCC", "NCC": "NCC", "RCC": "RCC"})
    result = apply_label_map([("ACC", (1.0, 0.0, 0.0)), ("RCC", (0.0, 0.0, 0.0)), ("NCC", (2.0, 0.0, 0.0))], label_map)
    assert _kinds(result) == [("duplicate", "ACC"), ("duplicate", "NCC")]
    assert result.points == {"RCC": (0.0, 0.0, 0.0)}


@pytest.mark.parametrize(
    ("xyz", "kind", "fragment"),
    [
        (None, "missing-position", "has no position; place the point"),
        ((math.nan, 0.0, 0.0), "non-finite", "non-finite coordinate"),
        ((0.0, math.inf, 0.0), "non-finite", "non-finite coordinate"),
    ],
    ids=["missing", "nan", "inf"],
)
def test_unusable_positions_are_reported(xyz: Point3 | None, kind: str, fragment: str) -> None:
    raw: list[RawPoint] = [("RCC", xyz), ("LCC", (1.0, 2.0, 3.0))]
    result = apply_label_map(raw, LabelMap.identity())
    assert _kinds(result) == [(kind, "RCC")]
    assert fragment in result.problems[0].message
    assert result.problems[0].canonical == "RCC"
    assert result.points == {"LCC": (1.0, 2.0, 3.0)}


def test_unplaced_point_does_not_make_a_placed_one_ambiguous() -> None:
    result = apply_label_map([("RCC", None), ("RCC", (1.0, 2.0, 3.0))], LabelMap.identity())
    assert _kinds(result) == [("missing-position", "RCC")]
    assert result.points == {"RCC": (1.0, 2.0, 3.0)}


def test_undefined_slicer_point_is_missing_not_origin(tmp_path: Path) -> None:
    path = write_mrk_json(tmp_path / "p.mrk.json", [("RCC", None), ("LCC", (1.0, 2.0, 3.0))])
    stored = json.loads(path.read_text(encoding="utf-8"))["markups"][0]["controlPoints"][0]
    assert stored["positionStatus"] == "undefined"
    assert stored["position"] == [0.0, 0.0, 0.0]
    raw = read_mrk_json(path)
    assert raw == [("RCC", None), ("LCC", (1.0, 2.0, 3.0))]
    result = apply_label_map(raw, LabelMap.identity())
    assert _kinds(result) == [("missing-position", "RCC")]
    assert result.points == {"LCC": (1.0, 2.0, 3.0)}


@pytest.mark.parametrize("status", ["undefined", "missing", "preview"], ids=["undefined", "missing", "preview"])
def test_slicer_position_status_other_than_defined_is_missing(tmp_path: Path, status: str) -> None:
    path = tmp_path / "s.mrk.json"
    cp = {"label": "MS1", "position": [0.0, 0.0, 0.0], "positionStatus": status}
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [cp]}]}))
    assert read_mrk_json(path) == [("MS1", None)]


def test_slicer_non_fiducial_markups_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.mrk.json"
    line = {"type": "Line", "coordinateSystem": "LPS", "controlPoints": [{"label": "L-1", "position": [0, 0, 0]}]}
    points = {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [{"label": "RCC", "position": [1, 2, 3]}]}
    path.write_text(json.dumps({"markups": [line, points]}), encoding="utf-8")
    assert read_mrk_json(path) == [("RCC", (1.0, 2.0, 3.0))]
    assert "skipping markup #1 of type 'Line'" in caplog.text


def test_empty_csv_cells_are_missing_position(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", {"": [("RCC", None), ("LCC", (1.0, 2.0, 3.0))]}, CSV_LAYOUTS["default"])
    assert path.read_text(encoding="utf-8") == "label,x,y,z\nRCC,,,\nLCC,1.0,2.0,3.0\n"
    assert read_csv(path, CSV_LAYOUTS["default"]) == {"": [("RCC", None), ("LCC", (1.0, 2.0, 3.0))]}


@pytest.mark.parametrize("fmt", ["mps", "slicer", "csv"], ids=["mps", "slicer", "csv"])
def test_readers_preserve_repeated_labels(tmp_path: Path, fmt: str) -> None:
    pairs: list[tuple[str, Point3 | None]] = [("1", (1.0, 0.0, 0.0)), ("2", (2.0, 0.0, 0.0)), ("1", (3.0, 0.0, 0.0))]
    if fmt == "mps":
        path = tmp_path / "dup.mps"
        path.write_text(_mps_document("".join(_mps_point(int(label), xyz) for label, xyz in pairs)), encoding="utf-8")
        raw = read_mps(path)
    elif fmt == "slicer":
        raw = read_mrk_json(write_mrk_json(tmp_path / "dup.mrk.json", pairs))
    else:
        raw = read_csv(write_csv(tmp_path / "dup.csv", {"": pairs}, CSV_LAYOUTS["default"]), CSV_LAYOUTS["default"])[""]
    assert raw == pairs
    result = apply_label_map(raw, CONVENTIONS["numeric"])
    assert _kinds(result) == [("duplicate", "1"), ("duplicate", "1")]
    assert result.points == {"LCC": (2.0, 0.0, 0.0)}


def test_raise_for_problems() -> None:
    result = apply_label_map([("XYZ", (0.0, 0.0, 0.0))], LabelMap.identity())
    with pytest.raises(LabelError, match=r"case\.mps: 1 entry could not be imported: label 'XYZ'"):
        result.raise_for_problems("case.mps")
    apply_label_map([], LabelMap.identity()).raise_for_problems()


def test_mapping_input_is_accepted() -> None:
    result = apply_label_map(site_points("german"), CONVENTIONS["german"])
    assert_clean_import(result)


# --- malformed files ---------------------------------------------------------------------------------------------

_MPS_POINTS = (
    "<point><id>0</id><specification>0</specification><x>1.5</x><y>-2.25</y><z>3</z></point>"
    "<point><id>3</id><specification>0</specification><x>-10</x><y>20</y><z>-30.125</z></point>"
)


def _mps_point(pid: int, xyz: Point3 | None) -> str:
    assert xyz is not None
    return f"<point><id>{pid}</id><x>{xyz[0]}</x><y>{xyz[1]}</y><z>{xyz[2]}</z></point>"


def _mps_document(body: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<point_set_file><file_version>0.1</file_version><point_set>'
        f"<time_series><time_series_id>0</time_series_id>{body}</time_series></point_set></point_set_file>\n"
    )


_BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>\n'
    "<point_set_file><point_set><time_series><point><id>&lol2;</id></point></time_series></point_set>"
    "</point_set_file>"
)

MALFORMED = {
    "mps-doctype": ("a.mps", _BILLION_LAUGHS, "DOCTYPE/ENTITY declaration"),
    "mps-not-xml": ("a.mps", "<point_set_file><point_set>", "not well-formed XML"),
    "mps-wrong-root": ("a.mps", "<markups/>", "not a MITK point set"),
    "mps-no-id": ("a.mps", _mps_document("<point><x>1</x><y>2</y><z>3</z></point>"), "point #1 has no <id>"),
    "mps-bad-id": ("a.mps", _mps_document("<point><id>a</id><x>1</x><y>2</y><z>3</z></point>"), "non-integer id"),
    "mps-bad-x": ("a.mps", _mps_document("<point><id>0</id><x>1,5</x><y>2</y><z>3</z></point>"), "non-numeric"),
    "mps-two-time-steps": (
        "a.mps",
        "<point_set_file><point_set>"
        + "".join(f"<time_series><time_series_id>{t}</time_series_id>{_MPS_POINTS}</time_series>" for t in (0, 1))
        + "</point_set></point_set_file>",
        "points in 2 time steps",
    ),
    "mps-bad-geometry": (
        "a.mps",
        _mps_document('<Geometry3D><IndexToWorld m_0_0="1"/><Offset x="0" y="0" z="0"/></Geometry3D>' + _MPS_POINTS),
        "incomplete <Geometry3D>",
    ),
    "slicer-not-json": ("a.mrk.json", "{markups: [", "not valid JSON"),
    "slicer-no-markups": ("a.mrk.json", '{"points": []}', "not a Slicer markups file"),
    "slicer-no-coordinate-system": (
        "a.mrk.json",
        '{"markups": [{"type": "Fiducial", "controlPoints": []}]}',
        "re-save it from 3D Slicer ≥ 4.11",
    ),
    "slicer-bad-coordinate-system": (
        "a.mrk.json",
        '{"markups": [{"type": "Fiducial", "coordinateSystem": "XYZ", "controlPoints": []}]}',
        "unknown coordinateSystem",
    ),
    "slicer-units": (
        "a.mrk.json",
        '{"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "um", "controlPoints": []}]}',
        "coordinateUnits 'um'",
    ),
    "slicer-bad-position": (
        "a.mrk.json",
        (
            '{"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", '
            '"controlPoints": [{"label": "RCC", "position": [1, "2", 3]}]}]}'
        ),
        "not three numbers",
    ),
    "landmarks-not-json": ("landmarks.json", "{", "not valid JSON"),
    "landmarks-unknown-name": ("landmarks.json", '{"points": {"XYZ": [1, 2, 3]}}', "unknown landmark name"),
    "landmarks-ras": ("landmarks.json", '{"coordinate_system": "RAS", "points": {}}', "does not match"),
    "landmarks-duplicate-key": (
        "landmarks.json",
        '{"points": {"RCC": [1, 2, 3], "RCC": [4, 5, 6]}}',
        "repeats the key 'RCC'",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED), ids=sorted(MALFORMED))
def test_malformed_files_raise_label_error_naming_only_the_file(private_dir: Path, case: str) -> None:
    file_name, content, fragment = MALFORMED[case]
    path = private_dir / file_name
    path.write_text(content, encoding="utf-8")
    reader = {"mps": read_mps, "mrk.json": read_mrk_json}.get(file_name.split(".", 1)[1], read_landmarks_json)
    with pytest.raises(LabelError) as info:
        reader(path)
    message = str(info.value)
    assert f"'{file_name}'" in message
    assert fragment in message
    assert PRIVATE_DIR not in message


MALFORMED_CSV = {
    "missing-column": ("label,x,y\nRCC,1,2\n", CSV_LAYOUTS["default"], "has no column(s) ['z']"),
    "wrong-delimiter": ("label;x;y;z\nRCC;1;2;3\n", CSV_LAYOUTS["default"], "has no column(s)"),
    "non-numeric": ("label,x,y,z\nRCC,1,two,3\n", CSV_LAYOUTS["default"], "non-numeric coordinate 'two' in row 2"),
    "decimal-comma-in-dot-layout": (
        'label,x,y,z\nRCC,"1,5",2,3\n',
        CSV_LAYOUTS["default"],
        "set the layout's decimal to ','",
    ),
    "dot-in-comma-layout": ("Fall;Landmarke;X;Y;Z\n1;RKS;1.5;2;3\n", CSV_LAYOUTS["german"], "thousands separators"),
    "short-row": ("label,x,y,z\nRCC,1,2\n", CSV_LAYOUTS["default"], "has 3 fields in row 2 but 4"),
    "empty-case": ("Fall;Landmarke;X;Y;Z\n;RKS;1;2;3\n", CSV_LAYOUTS["german"], "empty case id in row 2"),
    "empty-file": ("\n\n", CSV_LAYOUTS["default"], "is empty"),
    "bad-quoting": ('label,x,y,z\n"RCC"x,1,2,3\n', CSV_LAYOUTS["default"], "not a valid table"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_CSV), ids=sorted(MALFORMED_CSV))
def test_malformed_csv_raises_label_error_naming_only_the_file(private_dir: Path, case: str) -> None:
    content, layout, fragment = MALFORMED_CSV[case]
    path = private_dir / "site.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LabelError) as info:
        read_csv(path, layout)
    message = str(info.value)
    assert "'site.csv'" in message
    assert fragment in message
    assert PRIVATE_DIR not in message


def test_non_utf8_csv_is_refused(private_dir: Path) -> None:
    path = private_dir / "site.csv"
    path.write_bytes("label,x,y,z\nRKS ä,1,2,3\n".encode("cp1252"))
    with pytest.raises(LabelError, match=r"'site\.csv' is not utf-8 text"):
        read_csv(path, CSV_LAYOUTS["default"])


def test_missing_file_is_a_label_error(private_dir: Path) -> None:
    with pytest.raises(LabelError, match=r"'absent\.mps' cannot be read") as info:
        read_mps(private_dir / "absent.mps")
    assert PRIVATE_DIR not in str(info.value)


def test_import_annotation_refuses_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "points.fcsv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(LabelError, match="unknown annotation format"):
        import_annotation(path, LabelMap.identity())


# --- writer argument checks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "id_of", "fragment"),
    [
        ({"1": None}, None, "without a position"),
        ({"RCC": (0.0, 0.0, 0.0)}, None, "pass id_of"),
        ({"RCC": (0.0, 0.0, 0.0)}, {}, "no MITK point id"),
        ({"a": (0.0, 0.0, 0.0), "b": (1.0, 0.0, 0.0)}, {"a": 1, "b": 1}, "unique"),
        ({"-1": (0.0, 0.0, 0.0)}, None, "non-negative"),
    ],
    ids=["no-position", "non-integer-label", "label-without-id", "duplicate-id", "negative-id"],
)
def test_write_mps_rejects_unrepresentable_input(
    tmp_path: Path, points: dict[str, Point3 | None], id_of: dict[str, int] | None, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        write_mps(tmp_path / "x.mps", points, id_of=id_of)


def test_write_csv_without_case_column_takes_one_case(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one case"):
        write_csv(tmp_path / "x.csv", {"a": {}, "b": {}}, CSV_LAYOUTS["default"])


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"delimiter": ",", "decimal": ","}, "decimal comma needs"),
        ({"x_column": "label"}, "column names must differ"),
        ({"case_column": " "}, "must not be empty"),
        ({"delimiter": "|"}, "delimiter"),
    ],
    ids=["comma-comma", "same-column-twice", "blank-case-column", "unsupported-delimiter"],
)
def test_csv_layout_validation(fields: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        CsvLayout.model_validate(fields)


def test_write_landmarks_json_rejects_non_canonical_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown landmark name"):
        write_landmarks_json(tmp_path / "landmarks.json", {"ACC": (0.0, 0.0, 0.0)})


def test_utf16_doctype_cannot_sneak_past_the_check(private_dir: Path) -> None:
    path = private_dir / "a.mps"
    path.write_bytes(
        _BILLION_LAUGHS.replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>').encode("utf-16")
    )
    with pytest.raises(LabelError, match="not UTF-8"):
        read_mps(path)
