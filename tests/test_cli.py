"""Every command follows docs/cli.md: a wrong flag and a missing path are one-line errors, ``PROG: error: …``,
with exit status 2, found before any work; a module with a ``__main__`` block is a command and is listed here."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MISSING = "/no/such/place"

# module -> (what the user types, arguments naming a missing path; None: the command takes no path)
COMMANDS: dict[str, tuple[str, list[str] | None]] = {
    "preprocess.run": ("python -m preprocess.run", ["--input", f"{MISSING}/*.jpg", "--output", "{tmp}/out"]),
    "preprocess.verify": ("python -m preprocess.verify", [MISSING, "--runner", "DirectRunner"]),
    "shared.tools.codec_shards": ("codec-shards", ["summary", MISSING]),
    "shared.tools.roundtrip": ("python -m shared.tools.roundtrip", ["--images", f"{MISSING}/*.jpg", "--out", "{tmp}"]),
    "train.pretrain": ("python -m train.pretrain", ["--config", f"{MISSING}.yaml"]),
    "train.generate": ("python -m train.generate", ["--checkpoint", MISSING, "--unconditional", "1", "--out", "{tmp}"]),
    "train.evaluate": ("python -m train.evaluate", ["--checkpoint", MISSING, "--images", "{tmp}", "--out", "{tmp}/e"]),
    "train.export": ("python -m train.export", ["--checkpoint", MISSING, "--out", "{tmp}/hf"]),
    "train.estimate": ("python -m train.estimate", ["--config", f"{MISSING}.yaml"]),
    "train.consolidate": ("python -m train.consolidate", ["--checkpoint", MISSING]),
    "train.plot": ("python -m train.plot", [MISSING]),
    "bench.codec": ("python -m bench.codec", None),
    "bench.pipeline": ("python -m bench.pipeline", None),
    "bench.verify": ("python -m bench.verify", None),
    "bench.avc_check": ("python -m bench.avc_check", None),
    "bench.grammar": ("python -m bench.grammar", None),
    "bench.avc_grammar": ("python -m bench.avc_grammar", ["--dataset", MISSING]),
    "bench.loader": ("python -m bench.loader", ["--dataset", MISSING]),
    "bench.generate": ("python -m bench.generate", ["--checkpoint", MISSING]),
    "bench.evaluate": ("python -m bench.evaluate", ["--checkpoint", MISSING]),
    "bench.train_gpu": ("python -m bench.train_gpu", ["--config", f"{MISSING}.yaml"]),
}

# train.pretrain checks its files before its flags (jsonargparse reads the config first): give it a real one
WRONG_FLAG_WITH = {"train.pretrain": ["--config", str(ROOT / "train" / "jpeg-tiny.yaml")]}


def run_main(module: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    main = importlib.import_module(module).main
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        status = exit_.code
    return status, capsys.readouterr().err


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1] if stderr.strip() else ""


def test_every_command_is_listed() -> None:
    found = {".".join(path.relative_to(ROOT).with_suffix("").parts)
             for folder in ("shared", "preprocess", "train", "bench") for path in (ROOT / folder).rglob("*.py")
             if re.search(r'^if __name__ == "__main__":', path.read_text(), re.MULTILINE)}
    assert found == set(COMMANDS)


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_a_wrong_flag_is_a_usage_error(module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog, argv = COMMANDS[module]  # the flag comes with what else the command requires: it is the one fault found
    argv = WRONG_FLAG_WITH.get(module, [a.replace("{tmp}", str(tmp_path)) for a in argv or []]) + ["--no-such-flag"]
    status, stderr = run_main(module, argv, capsys)
    assert status == 2, stderr
    assert last_line(stderr).startswith(f"{prog}: error: ") and "--no-such-flag" in last_line(stderr), stderr


@pytest.mark.parametrize("module", sorted(m for m, (_, argv) in COMMANDS.items() if argv is not None))
def test_a_missing_path_is_named_first(module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog, argv = COMMANDS[module]
    status, stderr = run_main(module, [a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert status == 2, stderr
    assert last_line(stderr).startswith(f"{prog}: error: ") and MISSING in last_line(stderr), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # one line, no traceback, no usage dump


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "train.generate", "--checkpoint", MISSING, "--unconditional", "1", "--out", "x"],
    ["codec-shards", "summary", MISSING],
])
def test_the_status_reaches_the_shell(command: list[str]) -> None:
    if command[0] == "codec-shards":
        command = [str(Path(sys.executable).with_name("codec-shards")), *command[1:]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert MISSING in last_line(result.stderr) and ": error: " in last_line(result.stderr)
