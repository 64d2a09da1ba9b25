"""The Beam job end to end on the DirectRunner: real sample photos and generated clips, odd inputs, formats."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from preprocess.encode import EncodeFn
from preprocess.progress import Progress, read_counts, status_line
from preprocess.run import main, run
from shared.codec.jpeg.profile import JpegProfile
from shared.codec.registry import profile_from_json
from shared.format.shards import document_tokens, load_shard
from shared.format.tokenizer import ByteTokenizer
from shared.samples.clips import sample_clip
from shared.samples.photos import sample_crop
from shared.tools.cli import UsageError

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
SMALL = ["--seq_len", "2047", "--vocab_size", "300", "--val_fraction", "0.25"]


def run_job(output: Path, *args: str) -> dict:
    return run(["--output", str(output), *args])


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def documents_from_shards(folder: Path) -> dict[str, bytes]:
    """source -> stream rebuilt from the shards alone (via documents.parquet placements)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    tokenizer = ByteTokenizer.from_file(folder / "tokenizer.json")
    rows = pq.read_table(folder / "documents.parquet").to_pylist()
    windows = {}
    for shard in manifest["shards"]:
        with open(folder / shard["path"], "rb") as handle:
            windows[(shard["split"], Path(shard["path"]).stem)] = load_shard(handle)
    streams = {}
    for row in rows:
        if not row["complete"]:
            continue
        ids = document_tokens(windows[(row["split"], row["shard"])], row["sequence"], row["offset"], row["tokens"])
        assert ids[0] == manifest["bos_id"] and ids[-1] == manifest["eos_id"]
        assert manifest["bos_id"] not in ids[1:-1] and manifest["eos_id"] not in ids[1:-1]
        streams[row["source"]] = tokenizer.decode(ids)
        assert len(streams[row["source"]]) == row["stream_bytes"]
    return streams


@pytest.fixture(scope="module")
def sample_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("images") / "dataset"
    run_job(output, "--sample_size", "40", *SMALL, *IN_MEMORY)
    return output


def test_manifest_and_totals(sample_dataset: Path) -> None:
    manifest = json.loads((sample_dataset / "manifest.json").read_text())
    totals = manifest["totals"]
    assert totals["inputs"] == totals["encoded"] + totals["rejected"] == 40
    assert totals["encoded"] == totals["documents"] + totals["duplicates"]
    assert totals["tokens"] == totals["sequences"] * 2048 + totals["dropped_tokens"]
    assert manifest["vocab_size"] == 300 and (manifest["bos_id"], manifest["eos_id"]) == (298, 299)
    assert manifest["seq_len"] == 2047 and manifest["dtype"] == "uint16"
    assert profile_from_json(manifest["profile"]) == JpegProfile()
    assert {s["split"] for s in manifest["shards"]} == {"train", "val"}
    for shard in manifest["shards"]:
        data = (sample_dataset / shard["path"]).read_bytes()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
    tokenizer = (sample_dataset / "tokenizer.json").read_bytes()
    assert hashlib.sha256(tokenizer).hexdigest() == manifest["tokenizer"]["sha256"]
    rows = pq.read_table(sample_dataset / "documents.parquet").to_pylist()
    assert len(rows) == totals["documents"] and sum(r["tokens"] for r in rows) == totals["tokens"]
    assert (sample_dataset / "rejected.jsonl").read_text() == ""
    assert not list(sample_dataset.rglob(".*"))  # no temporary or staging files left


def test_sample_crops_of_one_photo_stay_in_one_split(sample_dataset: Path) -> None:
    rows = pq.read_table(sample_dataset / "documents.parquet").to_pylist()
    splits_of_photo: dict[str, set[str]] = {}
    for row in rows:
        photo = row["source"].removeprefix("sample:").split("-")[0]
        splits_of_photo.setdefault(photo, set()).add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of_photo.values()), splits_of_photo
    val_photos = {photo for photo, splits in splits_of_photo.items() if splits == {"val"}}
    assert 0 < len(val_photos) < len(splits_of_photo)


def test_split_group_keeps_each_folder_in_one_split(tmp_path: Path) -> None:
    for index in range(24):
        folder = tmp_path / "in" / f"album{index % 6}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index}.png").write_bytes(sample_crop(index)[1])
    run_job(tmp_path / "out", "--input", str(tmp_path / "in" / "*" / "*.png"), "--split_group", r"/(album\d+)/",
            "--val_fraction", "0.5", *SMALL[:4], *IN_MEMORY)
    rows = pq.read_table(tmp_path / "out" / "documents.parquet").to_pylist()
    splits_of_album: dict[str, set[str]] = {}
    for row in rows:
        splits_of_album.setdefault(Path(row["source"]).parent.name, set()).add(row["split"])
    assert len(rows) == 24 and len(splits_of_album) == 6
    assert all(len(splits) == 1 for splits in splits_of_album.values()), splits_of_album
    assert {split for splits in splits_of_album.values() for split in splits} == {"train", "val"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["arguments"]["split_group"] == r"/(album\d+)/"


def test_shards_read_with_stock_webdataset_and_tar(sample_dataset: Path) -> None:
    manifest = json.loads((sample_dataset / "manifest.json").read_text())
    for shard in manifest["shards"]:
        path = sample_dataset / shard["path"]
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            assert [m.name for m in members] == sorted(m.name for m in members)
            assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
        samples = list(wds.WebDataset(str(path), shardshuffle=False).decode())
        assert len(samples) == shard["sequences"]
        for index, sample in enumerate(samples):
            assert sample["__key__"] == f"{path.stem}-{index:06d}"
            assert sample["npy"].shape == (2048,) and sample["npy"].dtype == np.uint16
            assert sample["npy"].max() < manifest["vocab_size"]
        assert sum(len(s["npy"]) for s in samples) == shard["tokens"]


def test_documents_decode_back_byte_identical(sample_dataset: Path) -> None:
    profile = JpegProfile()
    streams = documents_from_shards(sample_dataset)
    assert len(streams) >= 30  # all but the few cut off at shard ends
    for source, stream in streams.items():
        index = int(source.rsplit("-", 1)[1])
        assert stream == profile.encode(sample_crop(index)[1]), source
        assert profile.decode(stream, strict=True).complete


def test_identical_bytes_with_two_worker_processes(sample_dataset: Path, tmp_path: Path) -> None:
    run_job(tmp_path / "mp", "--sample_size", "40", *SMALL, "--direct_running_mode", "multi_processing",
            "--direct_num_workers", "2")
    assert tree_digest(tmp_path / "mp") == tree_digest(sample_dataset)


def test_given_tokenizer_is_reused(sample_dataset: Path, tmp_path: Path) -> None:
    manifest = run_job(tmp_path / "again", "--sample_size", "40", *SMALL, "--tokenizer",
                       str(sample_dataset / "tokenizer.json"), "--bpe_sample", "3", *IN_MEMORY)
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (sample_dataset / "tokenizer.json").read_bytes()
    assert manifest["arguments"]["tokenizer"] == str(sample_dataset / "tokenizer.json")
    original = json.loads((sample_dataset / "manifest.json").read_text())
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in original["shards"]]


def write_inputs(folder: Path) -> dict[str, str]:
    """A folder of good and bad files; returns the expected rejection reason per bad file."""
    folder.mkdir(parents=True)
    for index in range(6):
        key, png = sample_crop(index)
        (folder / f"{key}.png").write_bytes(png)
    (folder / "copy-of-astronaut.png").write_bytes(sample_crop(0)[1])  # an exact duplicate
    photo = io.BytesIO()
    Image.open(io.BytesIO(sample_crop(7)[1])).convert("RGB").save(photo, "JPEG", quality=90)
    (folder / "photo.jpg").write_bytes(photo.getvalue())
    (folder / "cut.jpg").write_bytes(photo.getvalue()[:1500])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_bytes(b"this is text, not a picture")
    (folder / "caption.json").write_text('{"caption": "sidecar files are not inputs"}')
    (folder / "clip.mp4").write_bytes(b"videos are skipped in an image job")
    return {"cut.jpg": "truncated", "empty.png": "empty", "notes.png": "unreadable"}


def test_bad_inputs_are_rejected_and_accounted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    expected = write_inputs(tmp_path / "in")
    manifest = run_job(tmp_path / "out", "--input", str(tmp_path / "in" / "*"), *SMALL, *IN_MEMORY)
    shown = capsys.readouterr()
    assert "read 11 | encoded 8 | rejected 3 | duplicates 1 | tokenized 7" in shown.err  # the live progress line
    assert "inputs 11 = encoded 8 + rejected 3" in shown.out  # the closing summary
    totals = manifest["totals"]
    assert totals["inputs"] == 11 and totals["rejected"] == 3 and totals["encoded"] == 8
    assert totals["duplicates"] == 1 and totals["documents"] == 7
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert {Path(r["source"]).name: r["reason"] for r in rejected} == expected
    assert all(r["message"] for r in rejected)
    assert manifest["rejection_reasons"] == {"empty": 1, "truncated": 1, "unreadable": 1}
    kept = {r["source"]: r["key"] for r in pq.read_table(tmp_path / "out" / "documents.parquet").to_pylist()}
    assert str(tmp_path / "in" / "astronaut-00000.png") in kept  # the smaller name of the duplicate pair is kept
    # every input by name: the 11 files read (not the sidecar, not the video), each with where it went
    inputs = {Path(r["source"]).name: r for r in pq.read_table(tmp_path / "out" / "inputs.parquet").to_pylist()}
    assert set(inputs) == {p.name for p in (tmp_path / "in").iterdir()} - {"caption.json", "clip.mp4"}
    assert {name: r["reason"] for name, r in inputs.items() if r["outcome"] == "rejected"} == expected
    assert inputs["copy-of-astronaut.png"]["outcome"] == "duplicate"
    assert inputs["copy-of-astronaut.png"]["key"] == kept[str(tmp_path / "in" / "astronaut-00000.png")]
    assert {r["source"]: r["key"] for r in inputs.values() if r["outcome"] == "document"} == kept


def test_webdataset_and_parquet_inputs(tmp_path: Path) -> None:
    tar_path = tmp_path / "in" / "00000.tar"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w") as tar:  # as img2dataset writes them
        for index in range(4):
            for suffix, data in ((".jpg", sample_crop(index)[1]), (".json", b'{"url": "x"}'), (".txt", b"a caption")):
                info = tarfile.TarInfo(f"{index:09d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    images = [sample_crop(index)[1] for index in range(4, 8)]
    struct = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images[:2])] + [None])
    pq.write_table(pa.table({"image": struct}), tmp_path / "in" / "hf.parquet")
    pq.write_table(pa.table({"png": pa.array(images[2:], pa.binary())}), tmp_path / "in" / "plain.parquet")
    manifest = run_job(tmp_path / "out", "--input", str(tmp_path / "in" / "*.tar"), "--input",
                       str(tmp_path / "in" / "hf.parquet"), *SMALL, *IN_MEMORY)
    assert manifest["totals"]["inputs"] == 7 and manifest["totals"]["encoded"] == 6
    assert manifest["rejection_reasons"] == {"empty": 1}
    sources = {r["source"] for r in pq.read_table(tmp_path / "out" / "documents.parquet").to_pylist()}
    tar_members = {f"{tar_path}#{i:09d}.jpg" for i in range(4)}
    parquet_rows = {f"{tmp_path / 'in' / 'hf.parquet'}#{i}" for i in range(2)}
    assert tar_members | parquet_rows == sources
    streams = documents_from_shards(tmp_path / "out")
    for index in range(4):
        if f"{tar_path}#{index:09d}.jpg" in streams:
            assert streams[f"{tar_path}#{index:09d}.jpg"] == JpegProfile().encode(sample_crop(index)[1])
    manifest = run_job(tmp_path / "plain", "--input", str(tmp_path / "in" / "plain.parquet"), "--parquet_column",
                       "png", *SMALL, *IN_MEMORY)
    assert manifest["totals"]["documents"] == 2
    # the first file has the column, a later one lacks it: that file is one rejected input
    manifest = run_job(tmp_path / "mixed", "--input", str(tmp_path / "in" / "*.parquet"), *SMALL, *IN_MEMORY)
    assert manifest["rejection_reasons"] == {"empty": 1, "unreadable-container": 1}
    with pytest.raises(UsageError, match="no column 'image'"):
        run_job(tmp_path / "wrong", "--input", str(tmp_path / "in" / "plain.parquet"), *SMALL, *IN_MEMORY)


def test_video_job_round_trips_streams(tmp_path: Path) -> None:
    manifest = run_job(tmp_path / "out", "--modality", "video", "--sample_size", "3", "--seq_len", "4095",
                       "--vocab_size", "300", "--val_fraction", "0", *IN_MEMORY)
    assert manifest["profile"]["name"] == "avc-256x144-3fps-5s-qp37" and manifest["totals"]["documents"] == 3
    profile = profile_from_json(manifest["profile"])
    streams = documents_from_shards(tmp_path / "out")
    assert streams
    for source, stream in streams.items():
        index = int(source.rsplit("-", 1)[1])
        assert stream == profile.encode(sample_clip(index)[1])
        assert profile.decode(stream, strict=True).complete


def test_rerun_replaces_the_dataset_cleanly(tmp_path: Path) -> None:
    run_job(tmp_path / "out", "--sample_size", "12", *SMALL, "--shard_sequences", "1", *IN_MEMORY)
    many = sorted(p.name for p in (tmp_path / "out" / "train").iterdir())
    # other flags: a dataset made otherwise is replaced only when asked to
    manifest = run_job(tmp_path / "out", "--sample_size", "12", *SMALL, "--overwrite", *IN_MEMORY)
    assert len(many) > 1
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == ["shard-000000.tar"]
    assert [s["path"] for s in manifest["shards"]] == ["train/shard-000000.tar", "val/shard-000000.tar"]


def test_a_job_killed_while_writing_shards_reruns_to_the_same_bytes(tmp_path: Path) -> None:
    """SIGKILL to the whole job (launcher and worker processes) once shards are being written; the same
    command rerun into the same folder gives the bytes of an uninterrupted run and leaves nothing behind."""
    flags = ["--sample_size", "24", *SMALL, "--shard_sequences", "1"]
    run_job(tmp_path / "reference", *flags, *IN_MEMORY)
    output = tmp_path / "killed"
    command = [sys.executable, "-m", "preprocess.run", "--output", str(output), *flags,
               "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while job.poll() is None and not list(output.glob("*/shard-*.tar")):
            assert not (output / "manifest.json").exists()  # never a manifest while shards are missing
            time.sleep(0.005)
        with contextlib.suppress(ProcessLookupError):  # already gone: the assertion below says so
            os.killpg(job.pid, signal.SIGKILL)
    finally:
        job.wait()
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed while writing shards"
    written = list(output.glob("*/shard-*.tar"))  # train or val: whichever split the kill caught first
    assert written and not (output / "manifest.json").exists()
    (written[0].parent / ".shard-000000.tar.tmp-0123456789abcdef").write_bytes(b"half a tar")  # as a cut write leaves
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert tree_digest(output) == tree_digest(tmp_path / "reference")
    assert not [p for p in output.rglob("*") if p.name.startswith(".")]  # no temporary files, no staging


def test_hostile_containers_never_stop_the_job(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        (folder / f"photo{index}").write_bytes(sample_crop(index)[1])  # no extension: an input all the same
    (folder / "log.gz").write_bytes(b"not gzip at all")
    (folder / "notes.xz").write_bytes(b"not xz either")
    (folder / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08 and then garbage")
    good = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array([sample_crop(5)[1]], pa.binary())}), good)
    (folder / "a-corrupt.parquet").write_bytes(good.getvalue()[:100])  # first in order: the flag check skips it
    (folder / "b-good.parquet").write_bytes(good.getvalue())
    links = io.BytesIO()
    with tarfile.open(fileobj=links, mode="w") as tar:
        data = sample_crop(6)[1]
        info = tarfile.TarInfo("000.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("001.png")
        link.type, link.linkname = tarfile.LNKTYPE, "000.png"  # how GNU tar stores a repeated file
        tar.addfile(link)
        plain = tarfile.TarInfo("002")
        plain.size = len(sample_crop(7)[1])
        tar.addfile(plain, io.BytesIO(sample_crop(7)[1]))
    (folder / "links.tar").write_bytes(links.getvalue())
    manifest = run_job(tmp_path / "out", "--input", str(folder / "*"), "--input", str(folder / "." / "photo0"),
                       *SMALL, *IN_MEMORY)
    totals = manifest["totals"]
    assert totals["inputs"] == totals["encoded"] + totals["rejected"]
    assert totals["encoded"] == 6  # photo0-2, the good parquet row, 000.png and 002 from the tar
    assert manifest["rejection_reasons"] == {"unreadable": 2, "unreadable-container": 2, "unsupported-tar-member": 1}


def test_dtype_follows_the_learned_vocabulary(tmp_path: Path) -> None:
    manifest = run_job(tmp_path / "out", "--sample_size", "4", "--vocab_size", "70000", "--seq_len", "1023",
                       "--val_fraction", "0", *IN_MEMORY)
    assert manifest["vocab_size"] < 65536 and manifest["dtype"] == "uint16"
    with open(tmp_path / "out" / manifest["shards"][0]["path"], "rb") as handle:
        assert load_shard(handle).dtype == np.uint16


def test_max_pixels_flag_lifts_pillows_own_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = JpegProfile.from_name("jpeg-64-q25")
    photo = sample_crop(0)[1]  # 232x256
    expected = profile.encode(photo)  # under Pillow's real limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone would refuse anything above 2000
    encode = EncodeFn(profile.to_json(), max_pixels=10**6, progress_dir=None)
    encode.setup()
    outputs = list(encode.process(("big", photo)))
    assert len(outputs) == 1 and outputs[0].stream == expected  # the same stream as without any limit in the way
    assert Image.MAX_IMAGE_PIXELS == 1000  # the flag never changes Pillow's process-wide limit
    # a limit of its own for each call: lower refuses, Pillow's own applies without one
    for fn in (EncodeFn(profile.to_json(), max_pixels=5000, progress_dir=None),
               EncodeFn(profile.to_json(), max_pixels=None, progress_dir=None)):
        fn.setup()
        [rejected] = list(fn.process(("big", photo)))
        assert rejected.value["reason"] == "too-many-pixels"
    assert Image.MAX_IMAGE_PIXELS == 1000


@pytest.mark.parametrize("args, message", [
    (["--seq_len", "0"], "--seq_len must be positive"),
    (["--sample_size", "0"], "--sample_size must be positive"),
    (["--modality", "video", "--profile", "jpeg-256-q25"], "needs a profile for videos"),
    (["--input", "/nonexistent/*.jpg"], "matches no file"),
    (["--vocab_size", "100"], "at least 258"),
    (["--val_fraction", "1.5"], "--val_fraction must be in"),
    (["--split_group", "(unclosed"], "not a regular expression"),
    (["--profile", "jpeg-256"], "not a JPEG profile name"),
    (["--tokenizer", "/nonexistent/tokenizer.json"], "--tokenizer /nonexistent/tokenizer.json: no such file"),
    (["--modality", "audio"], "argument --modality: invalid choice"),
])
def test_bad_flags_fail_before_running(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        run_job(tmp_path / "out", *args, *IN_MEMORY)
    assert not (tmp_path / "out").exists()  # nothing made


def test_output_is_required() -> None:
    with pytest.raises(UsageError, match="--output DIR is required"):
        run(["--sample_size", "1", *IN_MEMORY])


def test_progress_files_are_summed(tmp_path: Path) -> None:
    first, second = Progress(str(tmp_path)), Progress(str(tmp_path))
    first.add("encoded", 3)
    second.add("encoded", 2)
    second.add("rejected")
    first.flush()
    second.flush()
    assert read_counts(str(tmp_path)) == {"encoded": 5, "rejected": 1}
    assert "encoded 5 | rejected 1" in status_line(read_counts(str(tmp_path)), 10.0)


def test_help_lists_the_job_flags_and_beam_options(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--input PATTERN", "--output DIR", "--overwrite", "--modality", "--vocab_size", "--bpe_sample",
                 "--tokenizer", "--seq_len", "--val_fraction", "--seed", "--shard_bytes", "--parquet_column",
                 "--max_pixels", "--runner", "--direct_num_workers", "--project", "--sdk_container_image",
                 "--setup_file", "--dry_run"):
        assert flag in text, flag
    assert "--seq-len" not in text and "--vocab-size" not in text  # the old spellings are not advertised


# sha256 of every file the job wrote with the code before the codec-interface/layout redesign (the manifest
# without its "versions", which name this machine's Python and libraries). Same inputs and flags, same bytes.
# Since then: inputs.parquet (and the manifest's "inputs" entry naming it); the sample crops (at most 256 px,
# mirrored half the time) and the split of the sample dataset by source photo (`split_group` in the manifest).
GOLDEN = {
    "image": {
        "documents.parquet": "4bc651518578849337402cd214666a4ce0c9b3efb0b873d70560149e4bfd265a",
        "inputs.parquet": "c54657dca5cf9eaced0d95d37952ffca24261fad2d10c4511eecb60c33eab625",
        "manifest.json": "123a89c0cf776faa5a47c71dcab4d775fc5c81ceb879cf5268ae3cc46b46e465",
        "rejected.jsonl": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "tokenizer.json": "019d293507ef688bc21423548b2d3bafeaeec1e5c714fa30a68da02bd2157359",
        "train/shard-000000.tar": "4867c6b9e9d54193d0785a9bcbfaa5af2ee8187b00c4f7c6b8c60dcf0f00eb88",
        "val/shard-000000.tar": "3a830b99a9bb416e5a4c94db46d33921fff7f3ab5fb43e78cd0216ad82d65284",
    },
    "video": {
        "documents.parquet": "bd193d6fada158ad96aea974a537b5d20d69d602bd492faf18ed832285966907",
        "inputs.parquet": "74a0bc3f89bd56d3e27c1715015b3c5ed14198f0c2593ee8772e68c99bc20095",
        "manifest.json": "6747b3708b4c75205210d2eb4894c75a47bba44ee3be2d330f24b4e3788b9e66",
        "rejected.jsonl": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "tokenizer.json": "2357eb8c27c07624694b09daabf4392ba4b40ba75f7e130f203c778482b5e5aa",
        "train/shard-000000.tar": "661a0c5d820776f76e055164af97e1f76bf8edc9925085e0ee0e79857beafcd8",
        "val/shard-000000.tar": "a09456dc8ddf466a3e4e8a945c3c98ec03dba2be72edb778a83ffdd8e65467f7",
    },
}


def golden_digests(folder: Path) -> dict[str, str]:
    digests = tree_digest(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("versions")
    digests["manifest.json"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return digests


def test_image_outputs_are_byte_identical_to_the_recorded_ones(sample_dataset: Path) -> None:
    assert golden_digests(sample_dataset) == GOLDEN["image"]


def test_video_outputs_are_byte_identical_to_the_recorded_ones(tmp_path: Path) -> None:
    run_job(tmp_path, "--modality", "video", "--profile", "avc-64x48-3fps-2s-qp37", "--sample_size", "4",
            "--seq_len", "1023", "--val_fraction", "0.4", *IN_MEMORY)
    assert golden_digests(tmp_path) == GOLDEN["video"]
