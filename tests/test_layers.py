"""The architecture as an import rule: the contract (shared/) at the bottom, each half above it, on its own.

shared/ imports nothing from preprocess/, train/ or bench/ (its tools included); neither half imports the
other. Static imports are read from the source (AST), including those inside functions.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"shared": {"preprocess", "train", "bench"}, "preprocess": {"train", "bench"},
             "train": {"preprocess", "bench"}}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_is_below_it(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in files
             for line, name in sorted(imported_packages(path)) if name in FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)


def test_the_rule_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("def f():\n    from preprocess.verify import x\n    import train.data\n")
    assert imported_packages(source) == {(2, "preprocess"), (3, "train")}
