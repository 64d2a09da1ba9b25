"""Paths on any filesystem: joining, telling local from remote, and a store that fails never read as "not there"
(a resume would pass over a whole checkpoint), without a server (fsspec's in-memory filesystem)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from shared.format.files import exists, join, kind, open_atomic, read_bytes
from shared.format.stores import StoreError, check_store
from train.checkpoint import MARKER, mark_complete, newest_complete, place, read_marker


class FailingFileSystem(MemoryFileSystem):
    """An in-memory store whose every lookup fails as a store past its client's retries does."""

    protocol = "failing"
    store: dict = {}
    pseudo_dirs = [""]

    def info(self, path: str, **kwargs: object) -> dict:
        raise ConnectionError("the store did not answer")

    def _open(self, path: str, mode: str = "rb", **kwargs: object) -> object:
        raise ConnectionError("the store did not answer")


fsspec.register_implementation("failing", FailingFileSystem, clobber=True)


def test_join_leaves_out_empty_parts() -> None:
    assert join("gs://b", "", "x") == "gs://b/x"
    assert join("gs://b/", "/run/", "step-1") == "gs://b/run/step-1"


def test_place_keeps_urls_and_local_paths_apart() -> None:
    assert place(Path("gs://bucket/run")) == "gs://bucket/run"  # a Path folds // into /
    assert place("GS://bucket/run") == "gs://bucket/run"
    assert place("az://container/run") == "az://container/run"  # any scheme, not a local folder "az:"
    assert place("file:///tmp/run") == Path("/tmp/run")
    assert place("C:/runs/one") == Path("C:/runs/one")  # a drive letter is not a scheme
    assert place("runs/one") == Path("runs/one")


def test_a_store_that_fails_is_not_read_as_nothing_there() -> None:
    memory = fsspec.filesystem("memory")
    memory.pipe_file("/files-test/a.bin", b"abc")
    assert kind("memory://files-test/a.bin") == "file" and kind("memory://files-test") == "directory"
    assert kind("memory://files-test/none") is None and not exists("memory://files-test/none")
    with pytest.raises(ConnectionError):
        exists("failing://bucket/run/step-00000003/checkpoint.json")
    with pytest.raises(ConnectionError):
        read_marker("failing://bucket/run/step-00000003")


def test_resume_auto_does_not_pass_over_a_checkpoint_it_cannot_read(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "step-00000003").mkdir(parents=True)
    (run / "step-00000003" / "lit_model.pth").write_bytes(b"weights")
    mark_complete(run / "step-00000003", step=3)
    assert newest_complete(run)[0] == run / "step-00000003"
    memory = fsspec.filesystem("memory")
    memory.put(str(run), "/resume-test/run", recursive=True)
    assert newest_complete("memory://resume-test/run")[0] == "memory://resume-test/run/step-00000003"
    memory.rm("/resume-test/run/step-00000003/" + MARKER)  # torn: skipped, with its reason
    found, skipped = newest_complete("memory://resume-test/run")
    assert found is None and "no checkpoint.json" in skipped[0][1]


def test_open_atomic_on_a_store_writes_the_final_name_once() -> None:
    with open_atomic("memory://atomic-test/data.bin") as handle:
        handle.write(b"whole")
    assert read_bytes("memory://atomic-test/data.bin") == b"whole"
    with pytest.raises(RuntimeError), open_atomic("memory://atomic-test/torn.bin") as handle:
        handle.write(b"part")
        raise RuntimeError("the writer failed")
    assert not exists("memory://atomic-test/torn.bin")  # nothing uploaded
    assert fsspec.filesystem("memory").ls("/atomic-test", detail=False) == ["/atomic-test/data.bin"]


def test_a_scheme_without_its_filesystem_is_one_line() -> None:
    with pytest.raises(StoreError, match=r"--out_dir az://c/run: no filesystem for az://.*cloud extra"):
        check_store("az://c/run", flag="--out_dir", write=True)
