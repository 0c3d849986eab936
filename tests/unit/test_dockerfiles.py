"""The container images in ``docker/``, checked offline from the Dockerfiles' text (no Docker engine needed).

Every image: base images pinned (digest, or an exact major.minor.patch tag; never ``latest``), a numeric
non-root ``USER`` in the final stage, Kaapana's ``IMAGE``/``VERSION``/``BUILD_IGNORE`` labels, an exec-form
``ENTRYPOINT`` whose command exists in the real ``cardiofm`` command line, ``pip install`` of pinned things
only, ``COPY`` sources that exist and that the root ``.dockerignore`` lets into the build context. Per profile:
the processing image gets no torch, the segmenter reads mounted TotalSegmentator weights and downloads
nothing, and every image the Kaapana operator (or a chart) names has its Dockerfile.

Each check returns a list of problems; the ``BAD`` cases below show that each one rejects what it should.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, get_args

import click
import pytest
import typer
import yaml

import cardiofm
from cardiofm.cli.main import app
from cardiofm.contracts.env import ImageProfile
from cardiofm.contracts.steps import STEPS

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
OPERATOR = REPO / "operators" / "cardiofm_operators" / "kaapana_step_operator.py"
PROFILES = ("processing", "segmenter", "trainer", "coordinator")
#: The images Kaapana's step operator runs steps in (``cardiofm step``, the step named by $CARDIOFM_STEP).
STEP_PROFILES: tuple[str, ...] = get_args(ImageProfile)
#: The command path after the console script, per image.
ENTRYPOINT_PATH = {**dict.fromkeys(STEP_PROFILES, ("step",)), "coordinator": ("coordinator", "serve")}
#: Distributions an image must (or must not) install, normalised names.
NEEDS = {
    "processing": {"numpy", "pydicom", "dcm2niix", "highdicom"},
    "segmenter": {"totalsegmentator", "torch", "nnunetv2", "highdicom"},
    "trainer": {"torch", "monai", "flwr", "simpleitk"},
    "coordinator": {"torch", "monai", "flwr", "cryptography"},
}
FORBIDS = {"processing": {"torch", "torchvision", "monai", "flwr", "totalsegmentator", "nnunetv2"}}
TOTALSEG_WEIGHTS = "/models/total_segmentator_v2"
#: Build steps that fetch model weights or other files (pip's own index traffic is checked separately).
DOWNLOADS = re.compile(
    r"\b(curl|wget|totalseg_download_weights|totalseg_import_weights|download_pretrained_weights|"
    r"huggingface-cli|hf\s+download|git\s+clone)\b|https?://(?!download\.pytorch\.org/whl/)",
    re.IGNORECASE,
)
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?===?(?P<version>[A-Za-z0-9.+!_-]+)$")
PROJECT_REF = re.compile(r"^\.(/)?(\[(?P<extras>[^\]]*)\])?$")
EXACT_TAG = re.compile(r"\d+\.\d+\.\d+")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
#: pip options that take a value as the next word.
PIP_VALUE_OPTIONS = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--platform",
    "--python-version",
    "--implementation",
    "--abi",
    "--only-binary",
    "--no-binary",
    "--progress-bar",
    "--report",
    "--src",
    "--upgrade-strategy",
    "--cache-dir",
    "--log",
    "--timeout",
    "--retries",
    "--trusted-host",
    "--proxy",
    "-C",
    "--config-settings",
}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}


# --- parsing --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def __str__(self) -> str:
        return f"line {self.line}: {self.keyword} {self.args}"


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    parent: Stage | None
    instructions: tuple[Instruction, ...]

    def chain(self) -> list[Instruction]:
        """This stage's instructions after those of the earlier stage it is built FROM (if any)."""
        return [*(self.parent.chain() if self.parent else []), *self.instructions]


def parse(text: str) -> list[Instruction]:
    """Logical instructions: continuations joined; comment and empty lines (also inside a continuation) dropped."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    if parts:
        raise ValueError(f"line {start}: continuation at the end of the file")
    return out


def stages(instructions: list[Instruction]) -> list[Stage]:
    """The build stages; a stage built FROM an earlier stage's name gets it as its parent."""
    heads: list[tuple[str, str | None]] = []
    bodies: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            parts = [w for w in ins.args.split() if not w.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else None
            heads.append((parts[0] if parts else "", name))
            bodies.append([])
        elif bodies:
            bodies[-1].append(ins)
    found: list[Stage] = []
    for (base, name), body in zip(heads, bodies, strict=True):
        parent = next((s for s in reversed(found) if s.name and s.name.lower() == base.lower()), None)
        found.append(Stage(base, name, parent, tuple(body)))
    return found


def words(ins: Instruction) -> list[str]:
    """The instruction's arguments as words (exec/JSON form or shell-like form)."""
    if ins.args.startswith("["):
        try:
            value = json.loads(ins.args)
        except json.JSONDecodeError:
            return shlex.split(ins.args)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return shlex.split(ins.args)


def key_values(chain: list[Instruction], keyword: str) -> dict[str, str]:
    """LABEL or ENV settings of a stage chain (``k=v ...``, or the legacy ``ENV k v``); later ones win."""
    values: dict[str, str] = {}
    for ins in chain:
        if ins.keyword != keyword:
            continue
        tokens = shlex.split(ins.args)
        if tokens and "=" not in tokens[0] and len(tokens) >= 2:
            values[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            k, sep, v = token.partition("=")
            if sep:
                values[k] = v
    return values


def shell_segments(command: str) -> list[list[str]]:
    """A RUN command split into simple commands (at ``&&``, ``||``, ``;``, ``|``), redirections dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    tokens = iter(lexer)
    for token in tokens:
        if token in SHELL_OPERATORS:
            segments.append([])
        elif set(token) <= set("<>&"):
            next(tokens, None)
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def run_commands(chain: list[Instruction]) -> list[tuple[Instruction, list[str]]]:
    out: list[tuple[Instruction, list[str]]] = []
    for ins in chain:
        if ins.keyword == "RUN":
            command = shlex.join(words(ins)) if ins.args.startswith("[") else ins.args
            out.extend((ins, segment) for segment in shell_segments(command))
    return out


@dataclass(frozen=True)
class PipInstall:
    ins: Instruction
    files: tuple[str, ...]
    requirements: tuple[str, ...]
    no_deps: bool


def pip_installs(chain: list[Instruction]) -> list[PipInstall]:
    found = []
    for ins, segment in run_commands(chain):
        args = None
        for i, word in enumerate(segment):
            pip = re.fullmatch(r"pip(3(\.\d+)?)?", os.path.basename(word))
            if pip and segment[i + 1 : i + 2] == ["install"]:
                args = segment[i + 2 :]
            elif word == "-m" and segment[i + 1 : i + 3] == ["pip", "install"]:
                args = segment[i + 3 :]
            if args is not None:
                break
        if args is None:
            continue
        files, reqs = [], []
        it = iter(args)
        for token in it:
            if token in ("-r", "--requirement", "-c", "--constraint"):
                files.append(next(it, ""))
            elif token.startswith(("--requirement=", "--constraint=")):
                files.append(token.partition("=")[2])
            elif token in ("-e", "--editable"):
                reqs.append(next(it, ""))
            elif token.startswith("-"):
                if "=" not in token and token in PIP_VALUE_OPTIONS:
                    next(it, None)
            else:
                reqs.append(token)
        found.append(PipInstall(ins, tuple(files), tuple(reqs), "--no-deps" in args))
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0])


def public_version(version: str) -> str:
    return version.partition("+")[0]


@cache
def pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def project_requirements(extras: tuple[str, ...]) -> list[str]:
    project = pyproject()["project"]
    optional = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(r for e in extras for r in optional.get(e, []))]


def file_requirements(path: Path) -> list[str]:
    lines = (line.partition("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


@cache
def pinned_versions() -> dict[str, str]:
    """Every exact pin of pyproject (core and all extras): name → public version (without a local label)."""
    pins: dict[str, str] = {}
    optional = pyproject()["project"].get("optional-dependencies", {})
    for requirement in project_requirements(tuple(optional)):
        m = PIN.match(requirement.partition(";")[0].strip())
        if m:
            pins.setdefault(normalise(m["name"]), public_version(m["version"]))
    return pins


# --- dockerignore ---------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        c = pattern[i]
        out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
        i += 1
    return re.compile(out)


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(``!``-negated, pattern) in file order; Docker cleans each pattern like Go's ``filepath.Clean``."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negated, _glob_regex(pattern)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether ``path`` (relative to the context) is left out: the last rule matching it or a parent decides."""
    parts = Path(os.path.normpath(path)).parts
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    result = False
    for negated, rx in rules:
        if any(rx.fullmatch(c) for c in candidates):
            result = not negated
    return result


@cache
def repo_rules() -> list[tuple[bool, re.Pattern[str]]]:
    return dockerignore_rules((REPO / ".dockerignore").read_text())


# --- the cardiofm command line ---------------------------------------------------------------------------


@cache
def cli() -> click.Command:
    return typer.main.get_command(app)


def resolve(path: tuple[str, ...]) -> click.Command | None:
    command = cli()
    for word in path:
        if not isinstance(command, click.Group) or word not in command.commands:
            return None
        command = command.commands[word]
    return command


def option_names(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}


# --- checks: each returns the problems it finds ----------------------------------------------------------


def check_bases(found: list[Stage]) -> list[str]:
    problems = []
    names: set[str] = set()
    for stage in found:
        ref = stage.base
        if ref.lower() in names:
            pass
        elif "$" in ref:
            problems.append(f"FROM {ref}: base image written with a variable; write the pinned reference")
        elif "@" in ref:
            if not DIGEST.search(ref):
                problems.append(f"FROM {ref}: digest is not sha256:<64 hex digits>")
        else:
            _, sep, tag = ref.rpartition(":")
            if not sep or "/" in tag:
                problems.append(f"FROM {ref}: no tag (a floating `latest`); pin an exact version tag or a digest")
            elif tag.lower() == "latest" or "latest" in tag.lower().split("-"):
                problems.append(f"FROM {ref}: `latest` is not a pinned version")
            elif not EXACT_TAG.search(tag):
                problems.append(f"FROM {ref}: tag {tag!r} is not an exact version (major.minor.patch)")
        if stage.name:
            names.add(stage.name.lower())
    return problems


def check_user(final: Stage) -> list[str]:
    users = [i for i in final.chain() if i.keyword == "USER"]
    if not users:
        return ["final stage has no USER: the image would run as root"]
    value = users[-1].args.strip()
    uid = value.partition(":")[0]
    if not uid.isdigit():
        return [f"{users[-1]}: USER must be a numeric uid (Kubernetes' runAsNonRoot cannot check a name)"]
    if int(uid) == 0:
        return [f"{users[-1]}: uid 0 is root"]
    return []


def check_labels(profile: str, final: Stage) -> list[str]:
    labels = key_values(final.chain(), "LABEL")
    want = {"IMAGE": f"cardiofm-{profile}", "VERSION": cardiofm.__version__, "BUILD_IGNORE": "False"}
    return [f"LABEL {k}={labels.get(k)!r}, expected {v!r}" for k, v in want.items() if labels.get(k) != v]


def check_kaapana_label_lines(profile: str, text: str) -> list[str]:
    """The labels as Kaapana's build tooling reads them: raw lines ``LABEL KEY=value``, one label per line."""
    want = {"IMAGE": f"cardiofm-{profile}", "VERSION": cardiofm.__version__, "BUILD_IGNORE": "False"}
    problems = []
    for key, value in want.items():
        lines = [line.strip() for line in text.splitlines() if line.strip().startswith(f"LABEL {key}=")]
        values = [line.split("=", 1)[1].strip().strip('"').strip("'") for line in lines]
        if values != [value]:
            problems.append(f'want exactly one line `LABEL {key}="{value}"` (Kaapana reads lines), found {lines}')
    return problems


def check_env(final: Stage) -> list[str]:
    env = key_values(final.chain(), "ENV")
    want = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    return [f"ENV {k}={env.get(k)!r}, expected {v!r}" for k, v in want.items() if env.get(k) != v]


def check_entrypoint(profile: str, final: Stage) -> list[str]:
    chain = final.chain()
    entrypoints = [i for i in chain if i.keyword == "ENTRYPOINT"]
    if not entrypoints:
        return ["no ENTRYPOINT"]
    ins = entrypoints[-1]
    try:
        argv = json.loads(ins.args)
    except json.JSONDecodeError:
        argv = None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return [f"{ins}: ENTRYPOINT must be the JSON (exec) form, so that signals reach cardiofm"]
    scripts = pyproject()["project"].get("scripts", {})
    if argv[0] not in scripts:
        return [f"{ins}: {argv[0]!r} is not a console script of pyproject [project.scripts] ({', '.join(scripts)})"]
    path = tuple(a for a in argv[1:] if not a.startswith("-"))
    command = resolve(path)
    if command is None:
        return [f"{ins}: `{' '.join(argv)}` is not a command of the cardiofm command line"]
    problems = []
    expected = ENTRYPOINT_PATH.get(profile)
    if expected is not None and path != expected:
        problems.append(f"{ins}: the {profile} image must run `{argv[0]} {' '.join(expected)}`")
    if profile in STEP_PROFILES and isinstance(command, click.Group):
        missing = [s for s in STEPS if s not in command.commands]
        if missing:
            problems.append(f"{ins}: steps without a sub-command: {', '.join(missing)}")
        if not any(p.image == profile for p in STEPS.values()):
            problems.append(f"no step runs in the {profile} image (cardiofm.contracts.steps)")
    cmds = [i for i in chain if i.keyword == "CMD"]
    if cmds:
        cmd = words(cmds[-1])
        if not cmds[-1].args.startswith("["):
            problems.append(f"{cmds[-1]}: CMD must be the JSON form (arguments of the ENTRYPOINT)")
        unknown = [
            a.partition("=")[0] for a in cmd if a.startswith("-") and a.partition("=")[0] not in option_names(command)
        ]
        if unknown:
            problems.append(f"{cmds[-1]}: `{' '.join(path)}` has no option {', '.join(unknown)}")
    return problems


def installed(found: list[Stage]) -> tuple[list[str], list[str]]:
    """(problems, names of everything the pip installs of all stages ask for, expanded from files/extras)."""
    problems: list[str] = []
    names: list[str] = []
    project_installed = False
    optional = pyproject()["project"].get("optional-dependencies", {})
    pins = pinned_versions()
    for stage in found:
        for pip in pip_installs(list(stage.instructions)):
            if not pip.files and not pip.requirements:
                problems.append(f"{pip.ins}: pip install of nothing")
            for name in pip.files:
                path = REPO / name
                if not path.is_file():
                    problems.append(f"{pip.ins}: requirements file {name} is not in the repository")
                    continue
                for requirement in file_requirements(path):
                    if not PIN.match(requirement.partition(";")[0].strip()):
                        problems.append(f"{pip.ins}: {name} has an unpinned requirement {requirement!r}")
                    names.append(requirement_name(requirement))
            for requirement in pip.requirements:
                ref = PROJECT_REF.match(requirement)
                if ref:
                    project_installed = True
                    extras = tuple(e.strip() for e in (ref["extras"] or "").split(",") if e.strip())
                    unknown = [e for e in extras if e not in optional]
                    if unknown:
                        problems.append(f"{pip.ins}: pyproject has no extra {', '.join(unknown)}")
                    for dep in project_requirements(extras):
                        if not PIN.match(dep.partition(";")[0].strip()):
                            problems.append(f"{pip.ins}: pyproject requirement {dep!r} is not pinned")
                        if not pip.no_deps:
                            names.append(requirement_name(dep))
                    names.append("cardiofm")
                    continue
                m = PIN.match(requirement)
                if not m:
                    problems.append(f"{pip.ins}: {requirement!r} is not pinned (name==version, a pinned file, or .)")
                    continue
                name, version = normalise(m["name"]), public_version(m["version"])
                if name in pins and pins[name] != version:
                    problems.append(f"{pip.ins}: {requirement} disagrees with the project's pin {name}=={pins[name]}")
                names.append(name)
    if not project_installed:
        problems.append("no stage installs the cardiofm project (pip install .)")
    return problems, names


def check_pip(profile: str, found: list[Stage]) -> list[str]:
    problems, names = installed(found)
    missing = sorted(NEEDS.get(profile, set()) - set(names))
    if missing:
        problems.append(f"the {profile} image installs no {', '.join(missing)}")
    forbidden = sorted(FORBIDS.get(profile, set()) & set(names))
    if forbidden:
        problems.append(f"the {profile} image must not install {', '.join(forbidden)}")
    if profile == "processing":
        for stage in found:
            for pip in pip_installs(list(stage.instructions)):
                text = " ".join((*pip.files, *pip.requirements)).lower()
                if "torch" in text or "train" in text or any("[" in r for r in pip.requirements):
                    problems.append(f"{pip.ins}: the processing image installs the core package only (no extras)")
    return problems


def check_downloads(found: list[Stage]) -> list[str]:
    problems = []
    for stage in found:
        for ins in stage.instructions:
            if ins.keyword in ("RUN", "ADD") and DOWNLOADS.search(ins.args):
                problems.append(f"{ins}: downloads at build time (weights are mounted under /models)")
    return problems


def check_segmenter(final: Stage) -> list[str]:
    env = key_values(final.chain(), "ENV")
    if env.get("TOTALSEG_WEIGHTS_PATH") != TOTALSEG_WEIGHTS:
        return [f"ENV TOTALSEG_WEIGHTS_PATH={env.get('TOTALSEG_WEIGHTS_PATH')!r}, expected {TOTALSEG_WEIGHTS!r}"]
    return []


def check_copies(
    found: list[Stage], repo: Path = REPO, rules: list[tuple[bool, re.Pattern[str]]] | None = None
) -> list[str]:
    rules = repo_rules() if rules is None else rules
    problems = []
    for stage in found:
        for ins in stage.instructions:
            if ins.keyword not in ("COPY", "ADD"):
                continue
            tokens = words(ins)
            if any(t.startswith("--from") for t in tokens):
                continue
            sources = [t for t in tokens if not t.startswith("--")][:-1]
            if not sources:
                problems.append(f"{ins}: no source")
            for source in sources:
                path = repo / source
                if not path.exists():
                    problems.append(f"{ins}: {source} is not in the repository (the build context)")
                elif excluded(source, rules):
                    problems.append(f"{ins}: {source} is excluded from the build context by .dockerignore")
                elif path.is_dir() and not any(
                    f.is_file() and not excluded(f.relative_to(repo).as_posix(), rules) for f in path.rglob("*")
                ):
                    problems.append(f"{ins}: nothing under {source} enters the build context")
    return problems


def dockerfile_problems(profile: str, text: str) -> list[str]:
    """Every problem of a Dockerfile text for ``profile`` (what the tests below assert, all at once)."""
    found = stages(parse(text))
    if not found:
        return ["no FROM"]
    final = found[-1]
    problems = [
        *check_bases(found),
        *check_user(final),
        *check_labels(profile, final),
        *check_kaapana_label_lines(profile, text),
        *check_env(final),
        *check_entrypoint(profile, final),
        *check_pip(profile, found),
        *check_downloads(found),
        *check_copies(found),
    ]
    if profile == "segmenter":
        problems.extend(check_segmenter(final))
    return problems


def dockerfile(profile: str) -> str:
    return (DOCKER / f"{profile}.Dockerfile").read_text()


def image_label(profile: str) -> str | None:
    return key_values(stages(parse(dockerfile(profile)))[-1].chain(), "LABEL").get("IMAGE")


# --- the real Dockerfiles ---------------------------------------------------------------------------------


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_base_images_pinned(profile: str) -> None:
    assert check_bases(stages(parse(dockerfile(profile)))) == []


def test_final_stage_non_root(profile: str) -> None:
    assert check_user(stages(parse(dockerfile(profile)))[-1]) == []


def test_kaapana_labels_and_python_env(profile: str) -> None:
    final = stages(parse(dockerfile(profile)))[-1]
    assert check_labels(profile, final) == []
    assert check_kaapana_label_lines(profile, dockerfile(profile)) == []
    assert check_env(final) == []


def test_entrypoint_resolves(profile: str) -> None:
    assert check_entrypoint(profile, stages(parse(dockerfile(profile)))[-1]) == []


def test_pip_installs_pinned(profile: str) -> None:
    assert check_pip(profile, stages(parse(dockerfile(profile)))) == []


def test_no_build_time_downloads(profile: str) -> None:
    assert check_downloads(stages(parse(dockerfile(profile)))) == []


def test_copy_sources_in_context(profile: str) -> None:
    assert check_copies(stages(parse(dockerfile(profile)))) == []


def test_segmenter_reads_mounted_weights() -> None:
    assert check_segmenter(stages(parse(dockerfile("segmenter")))[-1]) == []


def test_step_images_run_their_steps() -> None:
    """Each step's image profile has a Dockerfile whose entrypoint is ``cardiofm step``."""
    for name, params in STEPS.items():
        assert params.image in STEP_PROFILES, name
        assert (DOCKER / f"{params.image}.Dockerfile").is_file(), name
    step = resolve(("step",))
    assert isinstance(step, click.Group)
    assert set(STEPS) <= set(step.commands)


def test_operator_images_have_dockerfiles() -> None:
    names = re.findall(
        r'image=f"\{DEFAULT_REGISTRY\}/cardiofm-([a-z0-9-]+):\{KAAPANA_BUILD_VERSION\}"', OPERATOR.read_text()
    )
    assert names, f'no image=f"{{DEFAULT_REGISTRY}}/cardiofm-<name>:{{KAAPANA_BUILD_VERSION}}" in {OPERATOR}'
    assert set(STEP_PROFILES) <= set(names)
    for name in names:
        assert (DOCKER / f"{name}.Dockerfile").is_file(), name
        assert image_label(name) == f"cardiofm-{name}"


def test_chart_images_have_dockerfiles() -> None:
    """``image.repository`` of every chart names an image built here (after any registry prefix)."""
    for values_file in sorted((REPO / "charts").glob("*/values.yaml")):
        image = (yaml.safe_load(values_file.read_text()) or {}).get("image") or {}
        repository = str(image.get("repository", ""))
        if not repository.rpartition("/")[2].startswith("cardiofm-"):
            continue
        name = repository.rpartition("/")[2].removeprefix("cardiofm-")
        assert (DOCKER / f"{name}.Dockerfile").is_file(), values_file
        assert image_label(name) == f"cardiofm-{name}", values_file


def test_dockerignore_keeps_context_small() -> None:
    rules = repo_rules()
    for path in (".venv", ".venvs/segmenter/bin/python", ".git/config", "demo-output/x", "tests/unit", "x.egg-info"):
        assert excluded(path, rules), path
    for path in ("cardiofm/__pycache__/cli.cpython-311.pyc", "cardiofm.egg-info/PKG-INFO", "cardiofm/x.pem"):
        assert excluded(path, rules), path
    for path in ("pyproject.toml", "README.md", "cardiofm/cli/main.py", "requirements/segmenter.txt", "dags"):
        assert not excluded(path, rules), path


def test_coordinator_serve_defaults_to_state() -> None:
    final = stages(parse(dockerfile("coordinator")))[-1]
    cmd = [i for i in final.chain() if i.keyword == "CMD"]
    assert cmd
    assert json.loads(cmd[-1].args) == ["--dir", "/state"]


# --- every check can fail ---------------------------------------------------------------------------------

GOOD = f"""\
# a minimal image that passes every check (the BAD cases each break one thing)
FROM python:3.11.11-slim-bookworm AS build
COPY pyproject.toml README.md ./
COPY cardiofm ./cardiofm
RUN python -m venv /opt/venv \\
    # a comment inside a continuation
    && /opt/venv/bin/pip install --no-cache-dir . \\
    && /opt/venv/bin/pip check
FROM python:3.11.11-slim-bookworm
LABEL IMAGE="cardiofm-processing"
LABEL VERSION="{cardiofm.__version__}"
LABEL BUILD_IGNORE="False"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
USER 10001
ENTRYPOINT ["cardiofm", "step"]
"""

_FROM = "FROM python:3.11.11-slim-bookworm AS build"
_PIP = "/opt/venv/bin/pip install --no-cache-dir ."

BAD = {
    "minor-only tag": (GOOD.replace(_FROM, "FROM python:3.12 AS build"), "not an exact version"),
    "latest": (GOOD.replace(_FROM, "FROM x:latest AS build"), "`latest`"),
    "untagged": (GOOD.replace(_FROM, "FROM python AS build"), "no tag"),
    "variable": (GOOD.replace(_FROM, "FROM ${BASE} AS build"), "variable"),
    "short digest": (GOOD.replace(_FROM, "FROM python@sha256:abc AS build"), "digest"),
    "unknown stage": (GOOD.replace("FROM python:3.11.11-slim-bookworm\n", "FROM builder\n"), "no tag"),
    "root": (GOOD.replace("USER 10001", "USER root"), "numeric uid"),
    "uid 0": (GOOD.replace("USER 10001", "USER 0:0"), "uid 0 is root"),
    "no user": (GOOD.replace("USER 10001\n", ""), "no USER"),
    "user only in build stage": (
        GOOD.replace("USER 10001\n", "").replace("COPY cardiofm", "USER 10001\nCOPY cardiofm"),
        "no USER",
    ),
    "wrong image label": (GOOD.replace('IMAGE="cardiofm-processing"', 'IMAGE="cardiofm-trainer"'), "LABEL IMAGE"),
    "no build ignore": (GOOD.replace('LABEL BUILD_IGNORE="False"\n', ""), "LABEL BUILD_IGNORE"),
    "labels on one line": (
        GOOD.replace('"\nLABEL VERSION=', '" \\\n      VERSION='),
        "want exactly one line `LABEL VERSION=",
    ),
    "buffered": (GOOD.replace(" PYTHONUNBUFFERED=1", ""), "PYTHONUNBUFFERED"),
    "shell entrypoint": (GOOD.replace('["cardiofm", "step"]', "cardiofm step"), "JSON (exec) form"),
    "unknown script": (GOOD.replace('["cardiofm", "step"]', '["cardiofm-x", "step"]'), "not a console script"),
    "unknown command": (GOOD.replace('["cardiofm", "step"]', '["cardiofm", "steps"]'), "not a command"),
    "wrong command": (GOOD.replace('["cardiofm", "step"]', '["cardiofm", "phantoms"]'), "must run `cardiofm step`"),
    "unknown option": (GOOD + 'CMD ["--no-such-option"]\n', "has no option --no-such-option"),
    "shell cmd": (GOOD + "CMD convert\n", "CMD must be the JSON form"),
    "unpinned package": (GOOD.replace(_PIP, f"{_PIP} requests"), "'requests' is not pinned"),
    "range": (GOOD.replace(_PIP, f"{_PIP} 'numpy>=2'"), "'numpy>=2' is not pinned"),
    "pin disagrees": (GOOD.replace(_PIP, f"{_PIP} numpy==1.26.4"), "disagrees with the project's pin"),
    "torch in processing": (GOOD.replace(_PIP, f"{_PIP} torch==2.13.0"), "must not install torch"),
    "train extra in processing": (GOOD.replace(_PIP, _PIP.replace(" .", ' ".[train]"')), "core package only"),
    "unknown extra": (GOOD.replace(_PIP, _PIP.replace(" .", ' ".[gpu]"')), "no extra gpu"),
    "missing requirements file": (GOOD.replace(_PIP, f"{_PIP} -r requirements/nope.txt"), "not in the repository"),
    "project not installed": (GOOD.replace(_PIP, "/opt/venv/bin/pip install pydicom==3.0.2"), "installs the cardiofm"),
    "curl": (GOOD.replace("&& /opt/venv/bin/pip check", "&& curl -fsSLO https://example.org/w.zip"), "downloads"),
    "weights download": (GOOD + "RUN totalseg_download_weights -t total\n", "downloads"),
    "add url": (GOOD + "ADD https://example.org/weights.zip /models/\n", "downloads"),
    "missing copy source": (GOOD.replace("COPY cardiofm ./cardiofm", "COPY nope ./nope"), "not in the repository"),
    "ignored copy source": (GOOD.replace("COPY cardiofm ./cardiofm", "COPY tests ./tests"), "excluded"),
}


def test_good_sample_passes() -> None:
    assert dockerfile_problems("processing", GOOD) == []


@pytest.mark.parametrize("case", sorted(BAD))
def test_checks_reject(case: str) -> None:
    text, expected = BAD[case]
    problems = dockerfile_problems("processing", text)
    assert any(expected in p for p in problems), problems


def test_digest_and_stage_references_accepted() -> None:
    text = GOOD.replace(_FROM, "FROM python@sha256:" + "a" * 64 + " AS build").replace(
        "FROM python:3.11.11-slim-bookworm\n", "FROM build AS final\n"
    )
    assert check_bases(stages(parse(text))) == []


def test_segmenter_checks_reject() -> None:
    good = dockerfile("segmenter")
    assert dockerfile_problems("segmenter", good) == []
    unset = good.replace(f"TOTALSEG_WEIGHTS_PATH={TOTALSEG_WEIGHTS}", "TOTALSEG_WEIGHTS_PATH=/root/.totalsegmentator")
    assert any("TOTALSEG_WEIGHTS_PATH" in p for p in dockerfile_problems("segmenter", unset))
    no_seg = good.replace("-r requirements/segmenter.txt", "")
    assert any("installs no" in p and "totalsegmentator" in p for p in dockerfile_problems("segmenter", no_seg))
    # cardiofm without its dependencies: the DICOM libraries `cardiofm step` imports are missing
    no_deps = good.replace("-r requirements/segmenter.txt .", "--no-deps .")
    assert no_deps != good
    assert any("installs no highdicom" in p for p in dockerfile_problems("segmenter", no_deps))


def test_coordinator_checks_reject() -> None:
    good = dockerfile("coordinator")
    assert dockerfile_problems("coordinator", good) == []
    bad = good.replace('["cardiofm", "coordinator", "serve"]', '["cardiofm", "coordinator", "serv"]')
    assert any("not a command" in p for p in dockerfile_problems("coordinator", bad))
    cpu = good.replace("torch==2.13.0+cpu", "torch==2.12.0+cpu")
    assert any("disagrees" in p for p in dockerfile_problems("coordinator", cpu))


def test_parser_joins_continuations() -> None:
    ins = parse("RUN a \\\n  # note\n\n  && b \\\n  c\nUSER 1\n")
    assert [(i.keyword, i.args, i.line) for i in ins] == [("RUN", "a && b c", 1), ("USER", "1", 6)]
    assert [s for _, s in run_commands(ins)] == [["a"], ["b", "c"]]
    with pytest.raises(ValueError, match="continuation"):
        parse("RUN a \\\n")


def test_dockerignore_matcher() -> None:
    rules = dockerignore_rules("*\n!src/\n**/__pycache__\n/build\n")
    assert excluded("other.txt", rules)
    assert not excluded("src/a/b.py", rules)
    assert excluded("src/a/__pycache__/b.pyc", rules)
    assert excluded("build", rules)
