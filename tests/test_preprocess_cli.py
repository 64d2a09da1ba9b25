"""`python -m preprocess.run` as a command: Beam-style flags, its errors and exit statuses, what it refuses
before any work (an unquoted glob, an unwritable or occupied --output), --overwrite, and --dry_run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from preprocess.options import RENAMED, renamed_flags
from preprocess.output_folder import is_own_file
from preprocess.run import PROG, main, run
from shared.samples.photos import sample_crop

ROOT = Path(__file__).resolve().parents[1]
IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
# the smallest job: 4 sample crops at 64x64, short sequences
TINY = ["--profile", "jpeg-64-q25", "--sample_size", "4", "--seq_len", "255", "--vocab_size", "270",
        "--val_fraction", "0", *IN_MEMORY]


def fails(capsys: pytest.CaptureFixture, argv: list[str], status: int = 2) -> str:
    """The one-line error of a command line that fails with ``status``."""
    assert main(argv) == status
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"{PROG}: error: ")]
    assert len(errors) == 1, err
    return errors[0].removeprefix(f"{PROG}: error: ")


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- flags ---------------------------------------------------------------------------------------
def test_old_spellings_still_work_and_warn_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    old = ["--profile", "jpeg-64-q25", "--sample-size", "4", "--seq-len=255", "--vocab-size", "270",
           "--val-fraction", "0", *IN_MEMORY]
    manifest = run(["--output", str(tmp_path / "old"), *old])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "is deprecated" in line]
    assert sorted(warnings) == sorted(f"{PROG}: warning: {flag} is deprecated and goes in the next release; use "
                                      f"{RENAMED[flag]}" for flag in ("--sample-size", "--seq-len", "--vocab-size",
                                                                      "--val-fraction")), err
    assert manifest["seq_len"] == 255 and manifest["arguments"]["vocab_size"] == 270
    # the same job spelled the new way: the same dataset, and a rerun into the old one is "the same flags"
    run(["--output", str(tmp_path / "new"), *TINY])
    assert "deprecated" not in capsys.readouterr().err
    assert digests(tmp_path / "old") == digests(tmp_path / "new")
    run(["--output", str(tmp_path / "old"), *TINY])


def test_renaming_touches_only_the_old_flag_names() -> None:
    argv = ["--seq-len", "9", "--split_group", "--seq-len", "--input", "a--seq-len", "--max-pixels=5"]
    assert renamed_flags(argv, PROG) == ["--seq_len", "9", "--split_group", "--seq_len", "--input", "a--seq-len",
                                         "--max_pixels=5"]
    assert set(RENAMED.values()) == {"--vocab_size", "--bpe_sample", "--seq_len", "--val_fraction", "--split_group",
                                     "--shard_bytes", "--shard_sequences", "--parquet_column", "--sample_size",
                                     "--max_pixels"}


def test_the_old_spelling_warns_once_in_a_multi_process_run(tmp_path: Path) -> None:
    """Beam parses the options again in every worker process: the warning is still printed once."""
    done = subprocess.run([sys.executable, "-m", "preprocess.run", "--output", str(tmp_path / "out"), *TINY[:2],
                           "--sample-size", "4", *TINY[4:-4], "--direct_running_mode", "multi_processing",
                           "--direct_num_workers", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("--sample-size is deprecated") == 1, done.stderr
    assert (tmp_path / "out" / "manifest.json").exists()


def test_an_unquoted_glob_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--input /data/*.jpg` unquoted: the shell passes --input a.jpg b.jpg c.jpg; Beam alone would read a.jpg."""
    files = []
    for index in range(3):
        files.append(tmp_path / f"{index}.png")
        files[-1].write_bytes(sample_crop(index)[1])
    message = fails(capsys, ["--input", *map(str, files), "--output", str(tmp_path / "out"), *IN_MEMORY])
    assert message == (f"2 arguments that no flag takes (first: {files[1]}): the shell probably expanded an unquoted "
                       f"--input glob; quote it (--input '{tmp_path}/*.png') so the job matches it")
    assert not (tmp_path / "out").exists()


def test_unknown_flags_and_bad_values_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["--output", str(tmp_path / "out")]
    assert fails(capsys, [*out, "--vocab_sise", "300"]) == (
        "unrecognized arguments: --vocab_sise (did you mean --vocab_size?)")
    assert fails(capsys, [*out, "--seq_len", "many"]) == "argument --seq_len: invalid int value: 'many'"
    assert fails(capsys, [*out, "--runner", "NoSuchRunner"]).startswith(
        "--runner NoSuchRunner: Unexpected pipeline runner: NoSuchRunner.")
    assert not (tmp_path / "out").exists()


def test_beam_options_still_pass_through() -> None:
    from apache_beam.options.pipeline_options import GoogleCloudOptions, WorkerOptions

    from preprocess.runner import checked_pipeline_options
    options, leftovers, _ = checked_pipeline_options(
        ["--output", "x", "--project=my-project", "--region", "us-central1", "--num_workers", "3",
         "--experiments", "a", "--experiments=b", "--no_use_public_ips", "--flink_master", "localhost:8081"])
    assert leftovers == []
    assert options.view_as(GoogleCloudOptions).project == "my-project"
    assert options.view_as(WorkerOptions).num_workers == 3


# ---- paths checked before any work ---------------------------------------------------------------
def test_an_unwritable_output_fails_first(capsys: pytest.CaptureFixture) -> None:
    assert fails(capsys, ["--input", "/nonexistent-too/*.jpg", "--output", "/proc/nope/ds"]).startswith(
        "--input '/nonexistent-too/*.jpg' matches no file")  # a missing input is named first
    assert fails(capsys, ["--output", "/proc/nope/ds", *TINY]) == (
        "--output /proc/nope/ds: cannot be written (No such file or directory)")


def test_a_missing_input_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["--output", str(tmp_path / "out")]
    assert fails(capsys, ["--input", str(tmp_path / "photo.jpg"), *out]) == (
        f"--input {tmp_path}/photo.jpg: no such file")
    assert fails(capsys, ["--input", str(tmp_path / "*.jpg"), *out]) == f"--input '{tmp_path}/*.jpg' matches no file"


def test_a_failing_job_is_one_line_and_status_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"not a picture")
    message = fails(capsys, ["--input", str(tmp_path / "in" / "*"), "--output", str(tmp_path / "out"), *IN_MEMORY],
                    status=1)
    assert message.startswith("the job failed: none of the 1 inputs could be encoded; see ")
    assert not (tmp_path / "out" / "manifest.json").exists()


# ---- --output that holds something ----------------------------------------------------------------
def test_a_dataset_made_otherwise_is_refused_and_overwrite_replaces_only_its_own_files(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    run(["--output", str(out), *TINY, "--shard_sequences", "1"])
    before = digests(out)
    message = fails(capsys, ["--output", str(out), *TINY, "--seq_len", "511", "--seed", "3"])
    assert message.startswith(f"--output {out} holds a dataset made with other inputs or flags (--seq_len: 255 there, "
                              "511 now; --seed: 0 there, 3 now; ")
    assert message.endswith("pass --overwrite to replace it, or choose another --output")
    assert digests(out) == before  # refused before anything was touched
    # --overwrite: the dataset is replaced; what the job did not write stays, byte for byte
    (out / "notes.txt").write_text("mine")
    (out / "train" / "shard-mine.tar").write_bytes(b"not the job's")
    (out / "train" / "my-photo.png").write_bytes(sample_crop(0)[1])
    foreign = {name: digest for name, digest in digests(out).items() if not is_own_file(name)}
    assert sorted(foreign) == ["notes.txt", "train/my-photo.png", "train/shard-mine.tar"]
    manifest = run(["--output", str(out), *TINY, "--seq_len", "511", "--overwrite"])
    assert manifest["seq_len"] == 511
    after = digests(out)
    assert {name: after[name] for name in foreign} == foreign
    assert sorted(set(after) - set(foreign)) == sorted(
        ["manifest.json", "tokenizer.json", "documents.parquet", "inputs.parquet", "rejected.jsonl"]
        + [s["path"] for s in manifest["shards"]])  # the old run's other shards are gone, and nothing of ours
    # the same inputs and flags again: goes on as a rerun, beside the foreign files, without --overwrite
    assert main(["--output", str(out), *TINY, "--seq_len", "511"]) == 0
    assert digests(out) == after


def test_a_folder_that_is_not_a_dataset_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"a cat")
    assert fails(capsys, ["--output", str(photos), *TINY]) == (
        f"--output {photos} is not a dataset and holds 1 file this job does not write (first: cat.jpg); choose a new "
        "or empty folder, or pass --overwrite to write the dataset beside them (they are kept)")
    assert [p.name for p in photos.iterdir()] == ["cat.jpg"]
    (tmp_path / "empty").mkdir()
    assert main(["--output", str(tmp_path / "empty"), *TINY]) == 0  # an empty folder is fine


def test_an_unreadable_manifest_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text("{cut")
    assert "holds a manifest.json whose inputs and flags cannot be read" in fails(
        capsys, ["--output", str(tmp_path / "out"), *TINY])
    assert main(["--output", str(tmp_path / "out"), *TINY, "--overwrite"]) == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["seq_len"] == 255


# ---- --dry_run ----------------------------------------------------------------------------------------
def test_a_dry_run_writes_nothing_and_says_what_would_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "in").mkdir()
    for index in range(3):
        (tmp_path / "in" / f"{index}.png").write_bytes(sample_crop(index)[1])
    output = tmp_path / "new" / "ds"
    assert main(["--input", str(tmp_path / "in" / "*.png"), "--output", str(output), "--dry_run=True",
                 "--profile", "jpeg-64-q25", *IN_MEMORY]) == 0
    shown = capsys.readouterr()
    assert shown.out.strip().splitlines()[-1] == (
        f"dry run: would read 3 files matched by 1 --input pattern and write {output} on DirectRunner: "
        "profile jpeg-64-q25, vocab 320, seq_len 12288; nothing was written")
    assert not (tmp_path / "new").exists()  # the writability check made the folder and removed it
    assert "Traceback" not in shown.err
    # a dry run checks the output folder as the job would
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("x")
    assert "is not a dataset" in fails(capsys, ["--output", str(tmp_path / "taken"), "--dry_run=True", *TINY])


def test_a_dataflow_dry_run_translates_the_job_offline() -> None:
    """The DataflowRunner's --dry_run translates the job and submits nothing (no credentials, no network):
    the command ends with the summary and status 0, not a missing manifest.json."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOOGLE")}
    done = subprocess.run([sys.executable, "-m", "preprocess.run", "--runner=DataflowRunner", "--dry_run=True",
                           "--project", "my-project", "--region", "us-central1",
                           "--temp_location", "gs://my-bucket/tmp", "--output", "gs://my-bucket/out"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == (
        "dry run: would read the embedded sample dataset (300 images) and write gs://my-bucket/out on "
        "DataflowRunner: profile jpeg-256-q25, vocab 320, seq_len 12288; nothing was written")
    assert "Traceback" not in done.stderr
    # Dataflow's own checks of its options are usage errors too, in one line
    done = subprocess.run([sys.executable, "-m", "preprocess.run", "--runner=DataflowRunner", "--dry_run=True",
                           "--project", "P", "--region", "us-central1", "--temp_location", "gs://my-bucket/tmp",
                           "--output", "gs://my-bucket/out"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"{PROG}: error: Invalid Project ID (P). Please make sure you specified the Project ID, not project "
        "description."), done.stderr
