"""The preprocessing half on object stores: the Beam job, codec-shards and the Beam verify against a GCS
emulator and moto's S3 server (tests/stores.py), each behind a proxy that counts requests and injects faults.

A dataset written to a bucket must be byte for byte the one the same job writes to a local folder from the
same inputs, with faults or without; a store that keeps failing must end the job with one line and no
manifest; every slip (credentials, bucket, permissions, a bucket's root) is one line before any input is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from stores import Store, Traffic, start_store

from preprocess.run import run
from preprocess.verify import main as verify_on_beam
from shared.samples.photos import sample_crop
from shared.tools.codec_shards import main as codec_shards

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = 8
FLAGS = ["--profile", "jpeg-64-q25", "--seq_len", "1023", "--vocab_size", "300", "--val_fraction", "0.25",
         "--shard_sequences", "4"]
TWO_WORKERS = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
COMMAND_TIMEOUT = 240


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Store]]:
    """Both stores, running for the module, their clients' settings in this process's environment (the two
    sets do not overlap), a bucket in each holding the same photos and one file that is not an image."""
    folder = tmp_path_factory.mktemp("stores")
    started: dict[str, Store] = {}
    with pytest.MonkeyPatch.context() as env:
        try:
            for scheme in ("gs", "s3"):
                started[scheme] = start_store(scheme, folder / scheme, seed=7)
                for name, value in started[scheme].env.items():
                    env.setenv(name, value)
            for scheme in started:
                filesystem = fsspec.filesystem(scheme)
                filesystem.mkdir("bucket")
                for index in range(PHOTOS):
                    filesystem.pipe_file(f"bucket/photos/{index:02d}.jpg", sample_crop(index)[1])
                filesystem.pipe_file("bucket/photos/notes.jpg", b"not a JPEG at all")
            yield started
        finally:
            for store in started.values():
                store.stop()


def digests(root: str) -> dict[str, str]:
    """sha256 of every file under ``root`` (local or remote), by path relative to it."""
    filesystem, path = fsspec.core.url_to_fs(root)
    inside = path.rstrip("/") + "/"
    return {found.removeprefix(inside): hashlib.sha256(filesystem.cat_file(found)).hexdigest()
            for found in sorted(filesystem.find(path))}


@pytest.fixture(scope="module")
def local_reference(stores: dict[str, Store], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Per store: the dataset the job writes to a local folder from the bucket's photos (in one process: the job
    writes the same bytes on every runner and worker count, tests/test_preprocess.py)."""
    references = {}
    for scheme in stores:
        output = tmp_path_factory.mktemp(f"local-{scheme}") / "dataset"
        run(["--input", f"{scheme}://bucket/photos/*", "--output", str(output), *FLAGS, *IN_MEMORY])
        references[scheme] = digests(str(output))
    return references


@pytest.fixture(scope="module")
def remote_datasets(stores: dict[str, Store], local_reference: dict[str, dict[str, str]]) -> dict[str, Traffic]:
    """Per store: the same job writing to ``bucket/dataset``, and the requests it made (through the proxy)."""
    traffic = {}
    for scheme, store in stores.items():
        store.proxy.reset()
        manifest = run(["--input", f"{scheme}://bucket/photos/*", "--output", f"{scheme}://bucket/dataset", *FLAGS,
                        *TWO_WORKERS])
        assert manifest is not None and manifest["totals"]["inputs"] == PHOTOS + 1
        traffic[scheme] = store.proxy.reset()
    return traffic


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_a_bucket_dataset_is_byte_identical_to_a_local_one(scheme: str, remote_datasets: dict[str, Traffic],
                                                            local_reference: dict[str, dict[str, str]]) -> None:
    written = digests(f"{scheme}://bucket/dataset")
    assert written == local_reference[scheme]
    assert {"manifest.json", "documents.parquet", "inputs.parquet", "tokenizer.json", "rejected.jsonl"} <= set(written)
    assert len([name for name in written if name.endswith(".tar")]) >= 2


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_objects_are_written_once_to_their_final_names(scheme: str, remote_datasets: dict[str, Traffic]) -> None:
    """No temporary names and no server-side copies or moves: each file of the dataset is one upload, of
    its final name, and the job's own staging objects are all it writes besides."""
    traffic = remote_datasets[scheme]
    uploads = [name.removeprefix("bucket/dataset/") for method, _, name in traffic.paths
               if method in ("PUT", "POST") and name.startswith("bucket/dataset/")]
    assert not [path for _, path, _ in traffic.paths if any(word in path for word in ("moveTo", "rewriteTo", "copyTo"))]
    assert not [name for name in uploads if ".tmp-" in name]
    final = set(digests(f"{scheme}://bucket/dataset"))
    assert sorted(name for name in uploads if name in final) == sorted(final)  # each exactly once
    extra = [name for name in uploads if name not in final]
    assert all(name.startswith((".staging/", ".write-check-")) for name in extra), extra
    print(f"\n{scheme}: {traffic.total} requests {traffic.requests}, {traffic.sent:,} bytes sent, "
          f"{traffic.received:,} received; {len(uploads)} uploads for {len(final)} files")


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_codec_shards_and_the_beam_verify_read_a_bucket(scheme: str, remote_datasets: dict[str, Traffic],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = f"{scheme}://bucket/dataset"
    assert codec_shards(["summary", dataset]) == 0
    assert "documents" in capsys.readouterr().out
    assert codec_shards(["show", dataset, "--shard", "train/shard-000000", "--index", "0"]) == 0
    assert capsys.readouterr().out.strip()
    assert codec_shards(["decode", dataset, "--out", str(tmp_path / "decoded"), "--limit", "3"]) == 0
    assert len(list((tmp_path / "decoded").rglob("*.jpg"))) == 3
    assert codec_shards(["sheet", dataset, "--out", str(tmp_path / "sheet.png"), "--num-documents", "4"]) == 0
    assert (tmp_path / "sheet.png").stat().st_size > 0
    assert codec_shards(["trace", dataset, f"{scheme}://bucket/photos/notes.jpg",
                         f"{scheme}://bucket/photos/00.jpg"]) == 0
    traced = capsys.readouterr().out
    assert "rejected" in traced and "document" in traced
    assert codec_shards(["verify", dataset]) == 0
    assert "every document decodes strictly" in capsys.readouterr().out
    assert verify_on_beam([dataset, "--direct_running_mode", "in_memory"]) == 0


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_faults_change_no_byte(scheme: str, stores: dict[str, Store],
                               local_reference: dict[str, dict[str, str]], capsys: pytest.CaptureFixture) -> None:
    """A seeded tenth of all requests fails (503, 429, a reset connection, or answers late): the clients'
    retries absorb them, and the dataset and verify's verdict are what they are without faults."""
    store = stores[scheme]
    store.proxy.reset(fail_share=0.1, seed=11)
    output = f"{scheme}://bucket/faults"
    try:
        run(["--input", f"{scheme}://bucket/photos/*", "--output", output, *FLAGS, *IN_MEMORY])
        assert codec_shards(["verify", output, "--no-decode"]) == 0
    finally:
        traffic = store.proxy.reset()
    assert sum(traffic.faults.values()) >= 5, traffic.faults
    assert digests(output) == local_reference[scheme]
    capsys.readouterr()


def job(store: Store, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **store.env, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "preprocess.run", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def finished(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, err


def test_a_store_that_keeps_failing_ends_the_job_with_one_line_and_no_manifest(stores: dict[str, Store]) -> None:
    """From the first shard on, every request fails. On S3, since botocore can be told to give up sooner
    (AWS_MAX_ATTEMPTS; gcsfs always backs off about 30 s: tests/test_cloud_train.py runs out its retries)."""
    store = stores["s3"]
    store.proxy.reset(fail_from="shard-")
    try:
        status, err = finished(job(store, "--input", "s3://bucket/photos/*", "--output", "s3://bucket/failing",
                                   *FLAGS, *IN_MEMORY, env={"AWS_MAX_ATTEMPTS": "2"}))
    finally:
        traffic = store.proxy.reset()
    assert traffic.faults.get("503", 0) >= 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 1, err[-3000:]
    # Beam's worker logs the failed bundle's traceback; what the command says is one line, last
    assert lines[-1].startswith("python -m preprocess.run: error: the job failed: OSError:"), err[-3000:]
    assert "injected fault" in lines[-1]
    assert not fsspec.filesystem("s3").exists("bucket/failing/manifest.json")


def test_a_job_killed_while_writing_to_a_bucket_reruns_to_the_same_bytes(
        stores: dict[str, Store], local_reference: dict[str, dict[str, str]]) -> None:
    """SIGKILL to the job's process group once its first shard is in the bucket (GCS: the mechanism, objects
    written once at their final names, is the same on S3)."""
    scheme = "gs"
    store = stores[scheme]
    filesystem = fsspec.filesystem(scheme)
    output = f"{scheme}://bucket/killed"
    arguments = ["--input", f"{scheme}://bucket/photos/*", "--output", output, *FLAGS, *TWO_WORKERS]
    store.proxy.reset()
    process = job(store, *arguments)
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            filesystem.invalidate_cache()
            if filesystem.glob("bucket/killed/*/shard-*.tar"):
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the job ended before it could be killed while writing shards"
    filesystem.invalidate_cache()
    assert not filesystem.exists("bucket/killed/manifest.json")
    status, err = finished(job(store, *arguments))
    assert status == 0, err[-3000:]
    filesystem.invalidate_cache()
    assert digests(output) == local_reference[scheme]


SLIPS = {
    "no credentials": ("--output {s}://bucket/x", "no {who} credentials found"),
    "no bucket": ("--output {s}://no-such-bucket/x", "bucket no-such-bucket does not exist"),
    "read-only": ("--output {s}://bucket/ro/x", "these credentials may not write there"),
    "bucket root": ("--output {s}://bucket", "is a bucket's root; name a folder in it, e.g. {s}://bucket/dataset"),
}


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_slips_are_one_line_before_any_input_is_read(scheme: str, stores: dict[str, Store]) -> None:
    store = stores[scheme]
    store.proxy.reset()
    store.proxy.read_only_prefix = "bucket/ro/"  # the emulators model no permissions: the proxy refuses writes
    processes = {}
    for slip, (output, _) in SLIPS.items():
        env = {**os.environ, **store.env, "NO_GCE_CHECK": "True", "AWS_EC2_METADATA_DISABLED": "true"}
        if slip == "no credentials":
            for name in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "AWS_ACCESS_KEY_ID",
                         "AWS_SECRET_ACCESS_KEY"):
                env.pop(name, None)
            env["CLOUDSDK_CONFIG"] = str(store.folder / "no-gcloud")  # no gcloud login to fall back on
        command = [sys.executable, "-m", "preprocess.run", "--input", f"{scheme}://bucket/photos/*",
                   *output.format(s=scheme).split(), *FLAGS]
        processes[slip] = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE)
    try:
        for slip, process in processes.items():
            status, err = finished(process)
            expected = SLIPS[slip][1].format(s=scheme, who="Google Cloud" if scheme == "gs" else "AWS")
            assert status == 2 and len(err.strip().splitlines()) == 1 and expected in err, (slip, err[-3000:])
            assert err.startswith("python -m preprocess.run: error: --output"), (slip, err)
    finally:
        traffic = store.proxy.reset()
    photo_reads = [name for method, _, name in traffic.paths if method == "GET" and name.endswith(".jpg")]
    assert not photo_reads  # no input was read
