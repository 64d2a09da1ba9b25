"""`python -m train.pretrain` with its data and its checkpoints on a bucket: a GCS emulator and moto's S3 server
(tests/stores.py), each behind a proxy that counts requests and injects seeded faults.

Each store is started once for the module and gets the same tiny dataset (48 photos, 15 train sequences in 5
shards of at most 4, 2 val ones). Every run trains the tiny config for 2 optimizer steps of 4 sequences on CPU
in fp32; a one-process run trains in this process, a two-process run (FSDP2 over gloo) in a subprocess bounded
in time. What is checked, on each store:
- the same losses and final weights as from the local copy, at 1 process (bit for bit) and 2 (allowed to differ
  by summation order; measured 2026-12-07: identical losses, weights 0.0 apart), and the loader's requests per
  shard: one read per shard it reaches (1 process: the whole file; 2: one batched read per rank), never one per
  sequence;
- checkpoints in the bucket, marker last, logs copied there; ``--resume auto`` skipping a torn checkpoint;
  consolidate, export and sampling reading the bucket;
- a seeded 10% of requests failing (503, 429, resets, slow answers): the same weights; a store that keeps
  failing: one line, exit status 1, no marker;
- slips named in one line before any work: no credentials, no bucket, no right to write, a bucket's root.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import fsspec
import pytest
import torch
from stores import Store, start_store
from test_evaluate import RandomFeatures

from preprocess.run import run
from shared.format.dataset import DatasetError
from train.checkpoint import MARKER, SHARDED, WEIGHTS, load_for_sampling, load_lit_weights, newest_complete
from train.consolidate import main as consolidate_main
from train.data import CodecShards
from train.evaluate import Settings as EvaluateSettings
from train.evaluate import evaluate
from train.export import main as export_main
from train.generate import main as generate_main
from train.pretrain import main as pretrain_main

ROOT = Path(__file__).resolve().parents[1]
STEPS, GLOBAL_BATCH = 2, 4
RUN_LIMIT = 240  # seconds for one training subprocess, then its process group is killed
SCHEMES = ("gs", "s3")
FAULTS_SEED = 31


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("cloud-train") / "ds"
    run(["--output", str(output), "--profile", "jpeg-64-q25", "--seq_len", "1023", "--sample_size", "48",
         "--val_fraction", "0.2", "--shard_sequences", "4", "--direct_running_mode", "in_memory",
         "--direct_num_workers", "1"])
    return output


@pytest.fixture(scope="module", params=SCHEMES)
def store(request: pytest.FixtureRequest, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The store with ``bucket/ds``, a copy of the local dataset."""
    scheme = request.param
    started = start_store(scheme, tmp_path_factory.mktemp(f"{scheme}-server"))
    try:
        with mock.patch.dict(os.environ, started.env):
            filesystem = fsspec.filesystem(scheme)
            filesystem.mkdir("bucket")
            filesystem.put(str(dataset), "bucket/ds", recursive=True)
        started.proxy.reset()
        yield started
    finally:
        started.stop()


@pytest.fixture
def client(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """This process as the store's client (its environment), with no faults at the start."""
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    store.proxy.reset()
    store.proxy.read_only_prefix = None
    return store


def command(data: str, out: str, devices: int = 1, *flags: str) -> list[str]:
    return ["--config", str(ROOT / "train" / "jpeg-tiny.yaml"), "--data.path", data, "--out_dir", out,
            "--devices", str(devices), "--data.num_workers", "0", "--train.global_batch_size", str(GLOBAL_BATCH),
            "--train.micro_batch_size", "2", "--train.max_tokens", str(STEPS * GLOBAL_BATCH * 1023),
            "--train.save_interval", "1", "--train.log_interval", "1", "--train.lr_warmup_steps", "1",
            "--precision", "32-true", "--eval.interval", "1000", "--eval.final_validation", "false",
            "--logger_name", "csv", *flags]


def train_here(argv: list[str]) -> tuple[int, str]:
    """One process, in this one (Python, torch and LitGPT imported already); its status and output."""
    output = io.StringIO()
    with redirect_stdout(output), redirect_stderr(output), torch._dynamo.config.patch(disable=True):
        status = pretrain_main(argv)
    return status, output.getvalue()


def start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train.pretrain", *argv], cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env, "TORCH_COMPILE_DISABLE": "1"})


def finish(process: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        process.wait(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"training ran past {RUN_LIMIT} s: {log.read_text()[-3000:]}")
    finally:
        try:  # its ranks, if any are left
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return process.returncode, log.read_text()


def losses(rows: str) -> dict[int, float]:
    return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(io.StringIO(rows)) if row.get("loss")}


def local_losses(out: Path) -> dict[int, float]:
    return losses((out / "logs" / "csv" / "version_0" / "metrics.csv").read_text())


def remote_losses(url: str) -> dict[int, float]:
    with fsspec.open(f"{url}/logs/csv/version_0/metrics.csv", "rt") as handle:
        return losses(handle.read())


def weights(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    loaded = load_lit_weights(checkpoint)  # lazily, from a local lit_model.pth
    return {k: (v._load_tensor() if hasattr(v, "_load_tensor") else v).float() for k, v in loaded.items()}


def same_weights(a: str | Path, b: str | Path) -> bool:
    first, second = weights(a), weights(b)
    return sorted(first) == sorted(second) and all(torch.equal(first[k], second[k]) for k in first)


def relative_distance(a: str | Path, b: str | Path) -> float:
    first, second = weights(a), weights(b)
    difference = sum(((first[k] - second[k]) ** 2).sum() for k in first)
    return float((difference / sum((first[k] ** 2).sum() for k in first)).sqrt())


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run on the local copy: what every bucket run is compared with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    status, output = train_here(command(str(dataset), str(out)))
    assert status == 0, output[-3000:]
    return out


@pytest.fixture(scope="module")
def bucket_run(store: Store, reference: Path) -> dict[str, object]:
    """One process reading ``bucket/ds`` and writing ``bucket/run``; the traffic it made."""
    with mock.patch.dict(os.environ, store.env):
        store.proxy.reset()
        status, output = train_here(command(f"{store.scheme}://bucket/ds", f"{store.scheme}://bucket/run"))
        traffic = store.proxy.reset()
    assert status == 0, output[-3000:]
    return {"url": f"{store.scheme}://bucket/run", "traffic": traffic, "output": output}


def shard_reads(traffic: object) -> tuple[Counter, Counter]:
    """Requests for each train shard object: reads of its bytes (GCS media downloads, S3 GETs), and lookups of
    its size (GCS metadata GETs, S3 HEADs: ``connect()`` checks every shard's size before the first step)."""
    data, lookups = Counter(), Counter()
    for method, path, name in traffic.paths:
        if "/ds/train/shard-" in name:
            reads = "/download/" in path if path.startswith(("/storage/", "/download/")) else method == "GET"
            (data if reads else lookups)[name.rsplit("/", 1)[-1]] += 1
    return data, lookups


# ---- the same training from a bucket ------------------------------------------------------------------
def test_one_process_on_a_bucket_trains_the_same_model_as_on_local_disk(client: Store, bucket_run: dict,
                                                                        reference: Path) -> None:
    url = bucket_run["url"]
    assert remote_losses(url) == local_losses(reference)  # the same floats, step by step
    assert sorted(remote_losses(url)) == [1, 2]
    assert same_weights(f"{url}/final", reference / "final")
    data, lookups = shard_reads(bucket_run["traffic"])
    # 8 sequences of 2 steps from the 5 shards (2 to 4 sequences each): one read of each shard it reached, the
    # whole file (one rank needs every member of a shard in an epoch)
    print(f"{client.scheme}, 1 process: reads per shard {dict(sorted(data.items()))}, "
          f"size lookups {dict(sorted(lookups.items()))}")
    assert data and set(data.values()) == {1}, data
    assert max(lookups.values()) <= 2, lookups


def test_checkpoints_land_in_the_bucket_whole_with_their_marker_and_the_logs(client: Store,
                                                                               bucket_run: dict) -> None:
    url, traffic = bucket_run["url"], bucket_run["traffic"]
    filesystem, root = fsspec.core.url_to_fs(url)
    names = {name[len(root) + 1:] for name in filesystem.find(root)}
    for step in ("step-00000001", "step-00000002", "final"):
        assert {f"{step}/{MARKER}", f"{step}/{SHARDED}/.metadata", f"{step}/{SHARDED}/__0_0.distcp",
                f"{step}/hyperparameters.yaml", f"{step}/model_config.yaml", f"{step}/dataset/manifest.json"} <= names
    assert f"final/{WEIGHTS}" in names and "logs/csv/version_0/metrics.csv" in names
    assert not [name for name in names if ".tmp" in name or "write-check" in name]
    written = [name for method, _, name in traffic.paths if method in ("POST", "PUT") and "/run/step-00000001/" in name]
    assert written[-1].endswith(MARKER)  # the marker after every other file of the checkpoint
    # each file uploaded once, at its final name: no temporary names, no copies or moves
    assert len(written) == len(set(written)), written
    assert not [path for _, path, _ in traffic.paths if "copyTo" in path or "rewriteTo" in path or "moveTo" in path]


@pytest.mark.parametrize("store", ["gs"], indirect=True)  # one store: the suite's time (S3's reads are the same code)
def test_two_processes_on_a_bucket_read_their_own_members_and_train_the_same_model(
        store: Store, reference: Path, tmp_path: Path) -> None:
    url = f"{store.scheme}://bucket/run-2"
    store.proxy.reset()
    status, output = finish(start(command(f"{store.scheme}://bucket/ds", url, 2), tmp_path / "two.log", store.env),
                            tmp_path / "two.log")
    traffic = store.proxy.reset()
    assert status == 0, output[-3000:]
    assert "FSDP2: 2 blocks and the root sharded over a (1, 2) mesh" in output
    with mock.patch.dict(os.environ, store.env):
        ours, theirs = remote_losses(url), local_losses(reference)
        assert sorted(ours) == sorted(theirs)
        assert all(abs(ours[k] - theirs[k]) <= 1e-4 * theirs[k] for k in ours), (ours, theirs)
        distance = relative_distance(f"{url}/final", reference / "final")
        print(f"{store.scheme}, 2 processes: losses {ours} (1 process, local: {theirs}), relative L2 distance of "
              f"the final weights {distance:.2e}")
        assert distance < 4e-3  # tests/test_sharded.py's bound for Muon across layouts
        names = fsspec.core.url_to_fs(url)[0].find(f"bucket/run-2/final/{SHARDED}")
        assert sorted(name.rsplit("/", 1)[-1] for name in names) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    data, lookups = shard_reads(traffic)
    print(f"{store.scheme}, 2 processes: reads per shard {dict(sorted(data.items()))}, "
          f"size lookups {dict(sorted(lookups.items()))}")
    # each rank fetches its own members of a shard in one batched read (byte ranges, coalesced where one member
    # lies between two): at most a range per member it needs, and fewer requests than sequences overall
    assert data and max(data.values()) <= 4, data
    assert sum(data.values()) < 15, data  # the 15 train sequences both ranks plan to read in this epoch


# ---- resuming and reading checkpoints from the bucket ---------------------------------------------
def test_resume_auto_skips_a_torn_checkpoint_in_the_bucket_and_continues_exactly(client: Store, bucket_run: dict,
                                                                                  reference: Path,
                                                                                  tmp_path: Path) -> None:
    scheme = client.scheme
    filesystem = fsspec.filesystem(scheme)
    filesystem.get("bucket/run/", str(tmp_path / "run"), recursive=True)  # a copy (the GCS emulator has no rewrite)
    filesystem.put(str(tmp_path / "run" / "step-00000001"), "bucket/torn/step-00000001", recursive=True)
    filesystem.put(str(tmp_path / "run" / "step-00000002"), "bucket/torn/step-00000002", recursive=True)
    filesystem.rm(f"bucket/torn/step-00000002/{MARKER}")  # as a run killed while writing it leaves it
    url = f"{scheme}://bucket/torn"
    assert newest_complete(url) == (f"{url}/step-00000001",
                                    [(f"{url}/step-00000002", f"no {MARKER}: its writing did not finish")])
    status, output = train_here(command(f"{scheme}://bucket/ds", url, 1, "--resume", "auto"))
    assert status == 0, output[-3000:]
    assert f"skipping {url}/step-00000002" in output and f"Resuming training from {url}/step-00000001" in output
    assert same_weights(f"{url}/final", reference / "final")
    assert newest_complete(url)[0] == f"{url}/step-00000002"


def test_consolidate_export_and_sampling_read_the_bucket(client: Store, bucket_run: dict, reference: Path,
                                                         tmp_path: Path) -> None:
    step = f"{bucket_run['url']}/step-00000002"
    assert consolidate_main(["--checkpoint", step]) == 0
    assert fsspec.filesystem(client.scheme).isfile(f"bucket/run/step-00000002/{WEIGHTS}")
    assert same_weights(step, reference / "step-00000002")
    assert export_main(["--checkpoint", f"{bucket_run['url']}/final", "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    sampler = load_for_sampling(f"{bucket_run['url']}/final", device=torch.device("cpu"))
    assert sampler.dataset.root.startswith(f"{client.scheme}://bucket/ds")  # the dataset hyperparameters.yaml records
    assert sampler.model.config.n_layer == 2


@pytest.mark.parametrize("store", ["gs"], indirect=True)  # GCS: its documents.parquet is read by Arrow's own client
def test_generate_and_evaluate_sample_from_a_checkpoint_and_a_dataset_in_the_bucket(client: Store, bucket_run: dict,
                                                                                  tmp_path: Path) -> None:
    final, dataset = f"{bucket_run['url']}/final", f"{client.scheme}://bucket/ds"
    samples = tmp_path / "samples"
    assert generate_main(["--checkpoint", final, "--prompt-val", "1", "--num-samples", "2", "--max-new-tokens", "24",
                          "--out", str(samples)]) == 0
    assert len(list(samples.rglob("*.jpg"))) >= 2
    features = tmp_path / "features.pt"
    with warnings.catch_warnings():  # torch.jit.script's deprecation notice; TorchScript files still load
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(RandomFeatures()).save(str(features))
    results = evaluate(EvaluateSettings([final], images=dataset, out=str(tmp_path / "eval"), num_images=2,
                                        prompt_ratio=[0.5], seeds=1, inception_weights=str(features),
                                        max_new_tokens=24, grid_images=0))
    assert results["checkpoints"][0]["prompted"]["0.5"]["seeds"]


# ---- faults ---------------------------------------------------------------------------------------
def test_a_tenth_of_requests_failing_changes_nothing(client: Store, reference: Path) -> None:
    url = f"{client.scheme}://bucket/faults"
    client.proxy.reset(fail_share=0.1, seed=FAULTS_SEED)
    status, output = train_here(command(f"{client.scheme}://bucket/ds", url))
    traffic = client.proxy.reset()
    assert status == 0, output[-3000:]
    assert sum(traffic.faults.values()) >= 5, traffic.faults  # the clients met faults and retried
    assert remote_losses(url) == local_losses(reference)
    assert same_weights(f"{url}/final", reference / "final")
    print(f"{client.scheme}: {traffic.total} requests, faults {traffic.faults}")


@pytest.mark.parametrize("store", ["s3"], indirect=True)  # botocore may give up sooner (gcsfs backs off ~30 s)
def test_a_store_that_keeps_failing_ends_the_run_in_one_line_without_a_marker(store: Store, tmp_path: Path) -> None:
    url = f"{store.scheme}://bucket/failing"
    log = tmp_path / "failing.log"
    store.proxy.reset()
    process = start(command(f"{store.scheme}://bucket/ds", url), log, {**store.env, "AWS_MAX_ATTEMPTS": "2"})
    deadline = time.monotonic() + RUN_LIMIT
    while "step 1/" not in log.read_text():  # training has started: from now on every request fails
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    store.proxy.reset(fail_share=1.0, seed=FAULTS_SEED)
    status, output = finish(process, log)
    store.proxy.reset()
    assert status == 1, output[-3000:]
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert "not marked complete" in errors[0]
    with mock.patch.dict(os.environ, store.env):
        assert not [name for name in fsspec.filesystem(store.scheme).find("bucket/failing") if name.endswith(MARKER)]


@pytest.mark.parametrize("store", ["s3"], indirect=True)  # gcsfs backs off ~30 s before it gives up
def test_the_loader_on_a_store_that_keeps_failing_raises_one_line(client: Store) -> None:
    data = CodecShards(path=f"{client.scheme}://bucket/ds", num_workers=0, model_vocab_size=320)
    data.connect(batch_size=2, max_seq_length=1023)  # the checks before the first step, while the store answers
    loader = data.train_dataloader()
    client.proxy.reset(fail_share=1.0, seed=FAULTS_SEED)
    with pytest.raises(DatasetError) as raised:
        next(iter(loader))
    client.proxy.reset()
    message = str(raised.value)
    assert "/ds/train/shard-" in message and "reading it failed" in message and "\n" not in message, message


# ---- slips, each one line before any work ------------------------------------------------------------
def refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    status, output = train_here(argv)
    assert status != 0 and "jpeg-lm-tiny:" not in output, output[-3000:]  # before the model was built
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def test_slips_are_named_in_one_line_before_any_work(client: Store, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    scheme, data = client.scheme, f"{client.scheme}://bucket/ds"
    assert "is a bucket's root" in refused(command(data, f"{scheme}://bucket"), capsys)
    assert "bucket nothere does not exist" in refused(command(f"{scheme}://nothere/ds", f"{scheme}://bucket/x"),
                                                      capsys)
    assert "bucket nothere does not exist" in refused(command(data, f"{scheme}://nothere/run"), capsys)
    client.proxy.read_only_prefix = "bucket/ro/"
    line = refused(command(data, f"{scheme}://bucket/ro/run"), capsys)
    assert "may not write there" in line or "cannot be written with these credentials" in line
    client.proxy.read_only_prefix = None
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(Path(client.folder) / "no-gcloud"))
    assert "credentials found" in refused(command(data, f"{scheme}://bucket/run-x"), capsys)
