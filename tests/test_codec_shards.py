"""codec-shards on a dataset the pipeline made: every subcommand, and every corruption verify must catch."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from preprocess.run import run
from preprocess.verify import main as verify_on_beam
from shared.codec.jpeg.profile import JpegProfile
from shared.codec.registry import profile_from_json
from shared.format import shards
from shared.format.dataset import Dataset
from shared.format.files import arrow_source, safe_file_name
from shared.samples.clips import sample_clip
from shared.samples.photos import sample_crop
from shared.tools.codec_shards import main

ROOT = Path(__file__).resolve().parents[1]
IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("shards") / "dataset"
    run(["--output", str(output), "--sample_size", "24", "--seq_len", "1023", "--vocab_size", "300",
         "--val_fraction", "0.25", *IN_MEMORY])
    return output


def rows_of(folder: Path) -> list[dict]:
    return pq.read_table(folder / "documents.parquet").to_pylist()


def test_summary(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["summary", str(dataset), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert summary["totals"] == manifest["totals"]
    assert sum(s["documents"] for s in summary["splits"].values()) == manifest["totals"]["documents"] == 24
    assert sum(s["sequences"] for s in summary["splits"].values()) == manifest["totals"]["sequences"]
    per = summary["tokens_per_document"]
    assert per["p50"] <= per["p95"] <= per["max"] and per["mean"] > 1000
    assert 0.5 < summary["vocabulary"]["share_used"] <= 1.0
    assert summary["vocabulary"]["top"][0]["count"] >= summary["vocabulary"]["top"][-1]["count"]
    assert 15 < summary["compression_vs_raw_pixels"] < 100
    assert main(["summary", str(dataset)]) == 0
    text = capsys.readouterr().out
    assert "tokens per document" in text and "compression vs raw pixels" in text and "ids used" in text


def test_show_marks_document_boundaries(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    starts = [r for r in rows_of(dataset) if r["split"] == "train" and r["sequence"] > 0]
    row = starts[0]
    assert main(["show", str(dataset), "--shard", f"train/{row['shard']}", "--index", str(row["sequence"]),
                 "--bytes"]) == 0
    text = capsys.readouterr().out
    assert f"BOS at {row['offset']}: document {row['key']}" in text
    assert "continues a document from the previous sequence" in text
    assert " ff d" in text  # the hex view shows restart markers
    assert main(["show", str(dataset), "--shard", f"train/{row['shard']}", "--index", "99999"]) == 2  # a wrong flag
    assert main(["show", str(dataset), "--shard", "train/shard-999999", "--index", "0"]) == 2


def test_decode_rebuilds_files_byte_identical(dataset: Path, tmp_path: Path) -> None:
    assert main(["decode", str(dataset), "--out", str(tmp_path / "out")]) == 0
    profile = JpegProfile()
    rows = [r for r in rows_of(dataset) if r["complete"]]
    assert any(r["offset"] + r["tokens"] > 1024 for r in rows)  # documents that span sequences are included
    for row in rows:
        index = int(row["source"].rsplit("-", 1)[1])
        expected = profile.restore(profile.encode(sample_crop(index)[1]))
        assert (tmp_path / "out" / f"{row['key']}.jpg").read_bytes() == expected
    assert len(list((tmp_path / "out").iterdir())) == len(rows)
    key = rows[0]["key"]
    assert main(["decode", str(dataset), "--out", str(tmp_path / "one"), "--key", key[:10]]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == [f"{key}.jpg"]
    assert main(["decode", str(dataset), "--out", str(tmp_path / "none"), "--key", "zzzz"]) == 2


def test_file_names_stay_inside_the_output_folder() -> None:
    for hostile in ("../../etc/passwd", "a/b\\c", ".hidden", "", "x" * 500, "ok-key_1.2"):
        name = safe_file_name(hostile, ".jpg")
        assert "/" not in name and "\\" not in name and not name.startswith(".") and len(name) <= 154


def test_sheet(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sheet", str(dataset), "--out", str(tmp_path / "sheet.png"), "--num-documents", "10"]) == 0
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.width > 8 * 128 and sheet.height > 128
    assert main(["sheet", str(dataset), "--out", str(tmp_path / "old.png"), "--n", "10"]) == 0  # the old spelling
    assert "codec-shards sheet: warning: --n is deprecated and goes in the next release; use --num-documents" in (
        capsys.readouterr().err)
    assert (tmp_path / "old.png").read_bytes() == (tmp_path / "sheet.png").read_bytes()


def test_outputs_are_checked_before_any_work(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    assert main(["decode", str(dataset), "--out", str(tmp_path / "file" / "docs")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"codec-shards: error: --out {tmp_path / 'file' / 'docs'}: "
                                                      "cannot be written")
    assert main(["sheet", str(dataset), "--out", "/proc/nope/sheet.png"]) == 2
    assert capsys.readouterr().err.strip() == ("codec-shards: error: --out /proc/nope/sheet.png: cannot be written "
                                               "(No such file or directory)")


def test_verify_passes_on_a_sound_dataset(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["verify", str(dataset)]) == 0
    assert "every document decodes strictly" in capsys.readouterr().out


def flip_a_byte(folder: Path) -> None:
    shard = folder / "train" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0x01  # inside the first sample's ids
    shard.write_bytes(bytes(data))


def truncate(folder: Path) -> None:
    shard = folder / "train" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])


def remove(folder: Path) -> None:
    (folder / "train" / "shard-000000.tar").unlink()


def add_unknown(folder: Path) -> None:
    (folder / "train" / "notes.txt").write_text("who put this here?")


def wrong_totals(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["totals"]["documents"] += 1
    manifest["shards"][0]["sequences"] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))


def wrong_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").write_text((folder / "tokenizer.json").read_text().replace('"<|eos|>"', '"<|eos|>" '))


def shard_is_a_folder(folder: Path) -> None:
    (folder / "train" / "shard-000000.tar").unlink()
    (folder / "train" / "shard-000000.tar").mkdir()


def rewrite_inputs(folder: Path, change) -> None:
    table = pq.read_table(folder / "inputs.parquet")
    pq.write_table(pa.Table.from_pylist(change(table.to_pylist()), schema=table.schema), folder / "inputs.parquet")


def lose_an_input(folder: Path) -> None:
    rewrite_inputs(folder, lambda rows: rows[1:])


def rename_an_input(folder: Path) -> None:
    rewrite_inputs(folder, lambda rows: [rows[0] | {"source": "sample:someone-else"}] + rows[1:])


def orphan_duplicate(folder: Path) -> None:
    rewrite_inputs(folder, lambda rows: [rows[0] | {"outcome": "duplicate", "key": "0" * 32}] + rows[1:])


@pytest.mark.parametrize("corrupt, expected", [
    (flip_a_byte, "sha256 differs"),
    (truncate, "not a readable tar"),
    (remove, "train/shard-000000.tar: missing"),
    (add_unknown, "train/notes.txt: unknown file"),
    (wrong_totals, "totals.documents is"),
    (wrong_tokenizer, "tokenizer.json: sha256 differs"),
    (shard_is_a_folder, "train/shard-000000.tar: cannot be checked (IsADirectoryError"),
    (lose_an_input, "inputs.parquet: 23 inputs, the manifest counts 24"),
    (rename_an_input, "inputs.parquet: its documents differ from documents.parquet's"),
    (orphan_duplicate, "1 duplicates name a document that does not exist"),
])
def test_verify_catches_corruption(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, corrupt,
                                   expected: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    corrupt(copy)
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert expected in out and "problems found" in out


def test_verify_on_every_core_and_on_a_beam_runner_agree(dataset: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    flip_a_byte(copy)
    wrong_totals(copy)
    reports = []
    for flags in (["--workers", "1"], ["--workers", "2"]):
        assert main(["verify", str(copy), *flags]) == 1
        reports.append(capsys.readouterr().out)
    assert verify_on_beam([str(copy), "--runner", "DirectRunner", "--direct_num_workers", "2",
                           "--direct_running_mode", "multi_processing"]) == 1
    reports.append(capsys.readouterr().out)
    assert reports[0] == reports[1] == reports[2]
    assert "sha256 differs" in reports[0] and "totals.documents" in reports[0]
    assert verify_on_beam([str(dataset), "--runner", "DirectRunner", "--direct_running_mode", "in_memory"]) == 0
    assert "every document decodes strictly" in capsys.readouterr().out
    assert verify_on_beam(["--direct_running_mode", "in_memory", str(dataset), "--no_decode"]) == 0  # DIR anywhere
    assert capsys.readouterr().out.startswith(f"OK: {dataset}:")
    report = tmp_path / "report.json"
    assert verify_on_beam([str(copy), "--report", str(report), *IN_MEMORY]) == 1
    assert any(r["problems"] for r in json.loads(report.read_text()))
    with pytest.raises(SystemExit):
        main(["verify", str(dataset), "--project", "p"])  # a Beam option: the Beam verify's
    assert "python -m preprocess.verify" in capsys.readouterr().err


def test_beam_verify_usage_errors(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def error(argv: list[str]) -> str:
        assert verify_on_beam(argv) == 2
        return capsys.readouterr().err.strip()
    assert error([str(tmp_path / "none")]) == (
        f"python -m preprocess.verify: error: dataset {tmp_path / 'none'}: no such folder")
    assert error([]) == "python -m preprocess.verify: error: DIR is required (the dataset folder to verify)"
    assert error([str(dataset), str(dataset)]).startswith("python -m preprocess.verify: error: one dataset at a time")
    assert error([str(dataset), "--direct_num_worker", "2"]) == (
        "python -m preprocess.verify: error: unrecognized arguments: --direct_num_worker (did you mean "
        "--direct_num_workers?)")
    # the runner's own checks of its options (offline: --dry_run keeps Beam from asking GCS about the bucket)
    assert error([str(dataset), "--runner", "DataflowRunner", "--project", "P", "--region", "us-central1",
                  "--temp_location", "gs://my-bucket/tmp", "--dry_run=True"]) == (
        "python -m preprocess.verify: error: Invalid Project ID (P). Please make sure you specified the Project ID, "
        "not project description.")
    assert verify_on_beam([str(tmp_path)]) == 1  # a folder, not a dataset: the work failed
    assert "not a codec-LM dataset: no manifest.json" in capsys.readouterr().err


def test_verify_with_runner_still_works_for_one_release(dataset: Path, tmp_path: Path) -> None:
    """`codec-shards verify --runner …` runs `python -m preprocess.verify` with the same arguments."""
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    flip_a_byte(copy)
    command = [sys.executable, "-m", "shared.tools.codec_shards", "verify"]
    done = subprocess.run([*command, str(copy), "--runner", "DirectRunner", *IN_MEMORY[:2], "--no-decode"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 1, done.stderr[-3000:]
    assert "sha256 differs" in done.stdout and "problems found" in done.stdout
    assert done.stderr.count("codec-shards: warning: verify --runner is deprecated") == 1


def test_trace_says_what_happened_to_each_input(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "INPUTS_PER_BUCKET", 2)  # 5 inputs in 3 row groups, as 23M are in 23
    monkeypatch.chdir(tmp_path)  # --input given relative: sources are recorded as "in/…"
    inputs = Path("in")
    inputs.mkdir()
    for index in range(3):
        (inputs / f"photo-{index}.png").write_bytes(sample_crop(index)[1])
    (inputs / "photo-0-again.png").write_bytes(sample_crop(0)[1])
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    run(["--output", "out", "--input", "in/*", "--seq_len", "1023", "--vocab_size", "300", "--val_fraction", "0",
         *IN_MEMORY])
    keys = {r["source"]: r["key"] for r in rows_of(Path("out"))}
    capsys.readouterr()  # the job's own summary
    # as recorded, absolute, or by the end of the path
    assert main(["trace", "out", "in/photo-1.png", str(tmp_path / "in" / "photo-2.png"), "broken.jpg"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"in/photo-1.png: document {keys['in/photo-1.png']} in train/shard-")
    assert lines[1].startswith(f"in/photo-2.png: document {keys['in/photo-2.png']} in train/shard-")
    assert lines[2].startswith("in/broken.jpg: rejected (")
    kept, duplicate = "photo-0-again.png", "photo-0.png"  # the smaller name keeps the stream
    assert main(["trace", "out", duplicate]) == 0
    assert capsys.readouterr().out.strip() == (f"in/{duplicate}: duplicate: the same stream as document "
                                               f"{keys['in/' + kept]}, kept from in/{kept}")
    assert main(["trace", "out", "never-seen.png", "photo-1.png"]) == 1  # every name answered, then exit 1
    shown = capsys.readouterr()
    assert "never-seen.png: no input of that name" in shown.out and "in/photo-1.png: document" in shown.out
    assert "1 names matched no input" in shown.err
    assert main(["summary", "out"]) == 0
    assert "every input (inputs.parquet): 3 documents (60.0%), 1 duplicates (20.0%), 1 rejected (20.0%)" in (
        capsys.readouterr().out)
    records = pq.ParquetFile("out/inputs.parquet")
    assert records.num_row_groups == 3 and records.metadata.num_rows == 5
    assert main(["verify", "out", "--workers", "1"]) == 0
    groups = [records.read_row_group(i) for i in range(3)]
    with pq.ParquetWriter("out/inputs.parquet", groups[0].schema) as writer:
        for group in groups[::-1]:  # each row now in another bucket's row group: lookups would miss it
            writer.write_table(group)
    assert main(["verify", "out", "--workers", "1"]) == 1
    assert "rows outside their source's row group" in capsys.readouterr().out
    Path("out/inputs.parquet").unlink()
    assert main(["trace", "out", "photo-1.png"]) == 1  # a dataset that cannot answer: the work failed
    assert "inputs.parquet cannot be read" in capsys.readouterr().err


def test_a_dataset_on_another_filesystem_reads_the_same(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    memory = fsspec.filesystem("memory")
    for path in dataset.rglob("*"):
        if path.is_file():
            memory.pipe(f"/copy/{path.relative_to(dataset)}", path.read_bytes())
    local, remote = Dataset.open(str(dataset)), Dataset.open("memory://copy")
    assert remote.rows([("split", "=", "val")]) == local.rows([("split", "=", "val")])
    source = local.rows(limit=1)[0]["source"]
    assert remote.find_inputs(source) == local.find_inputs(source) != []
    assert main(["verify", "memory://copy", "--workers", "1"]) == 0
    assert "every document decodes strictly" in capsys.readouterr().out
    # gs:// is read by Arrow's own client, by byte range (no network needed to see which)
    filesystem, target = arrow_source("gs://bucket/data/documents.parquet")
    assert type(filesystem).__name__ == "GcsFileSystem" and target == "bucket/data/documents.parquet"


def test_flipped_byte_is_caught_without_the_checksum(dataset: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Even when someone 'fixes' the manifest's checksum, the data checks notice the change."""
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    shard = copy / "train" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[2000:2002] = (9999).to_bytes(2, "little")  # an id beyond the vocabulary
    shard.write_bytes(bytes(data))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(copy)]) == 1
    assert ">= vocab_size 300" in capsys.readouterr().out


def test_not_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["summary", str(tmp_path / "none")]) == 2  # a missing folder is a usage error, named first
    assert capsys.readouterr().err.strip() == f"codec-shards: error: dataset {tmp_path / 'none'}: no such folder"
    assert main(["decode", str(tmp_path / "none"), "--out", "/proc/nope"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["summary", str(tmp_path)]) == 1  # a folder that is not a dataset: the work failed
    assert capsys.readouterr().err.strip() == (f"codec-shards: error: {tmp_path} is not a codec-LM dataset: no "
                                               "manifest.json (a run that has not finished, or crashed, has no "
                                               "manifest yet)")
    (tmp_path / "manifest.json").write_text("{broken")
    assert main(["verify", str(tmp_path)]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_video_dataset_decodes_to_mp4_and_raw_streams(tmp_path: Path) -> None:
    run(["--output", str(tmp_path / "videos"), "--modality", "video", "--sample_size", "2", "--seq_len", "2047",
         "--vocab_size", "300", "--val_fraction", "0", *IN_MEMORY])
    assert main(["verify", str(tmp_path / "videos")]) == 0
    assert main(["decode", str(tmp_path / "videos"), "--out", str(tmp_path / "raw"), "--raw"]) == 0
    assert main(["decode", str(tmp_path / "videos"), "--out", str(tmp_path / "mp4")]) == 0
    manifest = json.loads((tmp_path / "videos" / "manifest.json").read_text())
    profile = profile_from_json(manifest["profile"])
    for row in rows_of(tmp_path / "videos"):
        if not row["complete"]:
            continue
        stream = profile.encode(sample_clip(int(row["source"].rsplit("-", 1)[1]))[1])
        assert (tmp_path / "raw" / f"{row['key']}.h264").read_bytes() == profile.restore(stream)
        assert (tmp_path / "mp4" / f"{row['key']}.mp4").read_bytes() == profile.to_mp4(stream)
    assert main(["sheet", str(tmp_path / "videos"), "--out", str(tmp_path / "sheet.png"),
                 "--num-documents", "2"]) == 0


def test_hostile_manifests_and_shards_get_clear_errors(dataset: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(dataset, outside)
    manifest = json.loads((outside / "manifest.json").read_text())
    manifest["shards"][0]["path"] = "../elsewhere/shard-000000.tar"
    (outside / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(outside)]) == 1
    assert "outside the dataset folder" in capsys.readouterr().err
    extra = tmp_path / "extra"
    shutil.copytree(dataset, extra)
    with tarfile.open(extra / "train" / "shard-000000.tar", "a") as tar:
        info = tarfile.TarInfo("README.txt")
        tar.addfile(info, io.BytesIO(b""))
    assert main(["show", str(extra), "--shard", "train/shard-000000", "--index", "0"]) == 1
    assert "cannot be read as a shard" in capsys.readouterr().err
