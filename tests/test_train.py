"""The trainer: the data module (epochs, ranks, workers, exact resume, bytes read per rank, checks) and litgpt
pretrain on CPU."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import lightning as L
import numpy as np
import pytest
import torch
import yaml
from litgpt import GPT, Config
from litgpt.utils import CycleIterator
from litgpt_metrics import losses

from preprocess.run import run
from shared.format.dataset import Dataset, DatasetError
from train.data import MAX_GAP, CodecShards, ResumableLoader
from train.pretrain import check_data

ROOT = Path(__file__).resolve().parents[1]
TINY_LR = str(yaml.safe_load((ROOT / "train" / "jpeg-tiny.yaml").read_text())["optimizer"]["init_args"]["lr"])
IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config's dataset: 64x64 JPEG, 1023-token sequences (about 48 train sequences)."""
    output = tmp_path_factory.mktemp("train") / "jpeg-tiny"
    run(["--output", str(output), "--profile", "jpeg-64-q25", "--seq-len", "1023", "--sample-size", "120",
         "--val-fraction", "0.05", *IN_MEMORY])
    return output


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same photos in shards of 6 sequences: 7 train shards (37 sequences), so batches straddle shards."""
    output = tmp_path_factory.mktemp("train") / "jpeg-sharded"
    run(["--output", str(output), "--profile", "jpeg-64-q25", "--seq-len", "1023", "--sample-size", "120",
         "--val-fraction", "0.2", "--shard-sequences", "6", *IN_MEMORY])
    return output


def module(path: Path | str, batch_size: int = 4, context: int | None = None, workers: int = 2,
           seed: int = 42) -> CodecShards:
    data = CodecShards(path=str(path), seed=seed, num_workers=workers)
    data.connect(batch_size=batch_size, max_seq_length=context)
    data.setup()
    return data


def fingerprint(row: torch.Tensor) -> str:
    return hashlib.sha1(row.numpy().astype(np.uint16).tobytes()).hexdigest()


def stored_windows(path: Path, context: int) -> list[str]:
    """Fingerprints of every training example, straight from the shards."""
    data = Dataset.open(str(path))
    rows = []
    for shard in data.shards("train"):
        for sequence in data.read_windows(shard):
            for start in range(0, data.manifest["seq_len"] - context + 1, context):
                rows.append(fingerprint(torch.from_numpy(sequence[start:start + context + 1].astype(np.int64))))
    return rows


def take(loader, count: int) -> list[torch.Tensor]:
    iterator = CycleIterator(loader)  # as LitGPT's fit() wraps it
    return [next(iterator) for _ in range(count)]


def rows_of(batches: list[torch.Tensor]) -> list[str]:
    return [fingerprint(row) for batch in batches for row in batch]


def test_batches_shape_and_epochs(dataset: Path) -> None:
    loader = module(dataset).train_dataloader()
    examples = loader.dataset.examples
    batches = take(loader, -(-2 * examples // 4))
    assert all(b.dtype == torch.int64 and b.shape == (4, 1024) for b in batches)  # full batches, also across epochs
    rows = rows_of(batches)
    expected = sorted(stored_windows(dataset, 1023))
    first, second = rows[:examples], rows[examples:2 * examples]
    assert sorted(first) == sorted(second) == expected  # each exactly once per epoch, nothing dropped
    assert first != second  # reshuffled per epoch
    again = take(module(dataset).train_dataloader(), len(batches))
    assert rows_of(again) == rows  # same seed, same order
    other = take(module(dataset, seed=7).train_dataloader(), 1)
    assert not torch.equal(other[0], batches[0])


def stream(dataset: Path, iterations: int, *, world: int, batch_size: int, taken: int = 0,
           state: dict | None = None) -> list[list[str]]:
    """What ``world`` ranks take in ``iterations`` iterations (rows in rank order per iteration), from a state."""
    data = module(dataset, batch_size=batch_size, workers=0)
    loaders = []
    for rank in range(world):
        loader = ResumableLoader(data.train_stream(rank, world), num_workers=0)
        if state is not None:
            loader.load_state_dict(state)
        loaders.append(take(loader, iterations))
    return [[row for rank in range(world) for row in rows_of([loaders[rank][i]])] for i in range(iterations)]


def test_the_order_is_the_same_on_any_number_of_ranks(dataset: Path) -> None:
    """Each optimizer step (global batch 8) trains on the same 8 sequences on 1, 2 or 4 ranks."""
    one = sum(stream(dataset, 12, world=1, batch_size=8), [])
    two = sum(stream(dataset, 12, world=2, batch_size=4), [])
    four = sum(stream(dataset, 24, world=4, batch_size=1), [])  # micro-batch 1: 2 accumulation iterations a step
    assert one == two == four and len(one) == 96  # read front to back, across the epoch boundary


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 4)])
def test_resume_on_another_world_size_continues_exactly(dataset: Path, before: int, after: int) -> None:
    """A checkpoint after 7 steps of global batch 4 (past the first epoch's end), resumed on another number of
    ranks: counted by sequence, nothing is seen twice or skipped."""
    reference = sum(stream(dataset, 20, world=1, batch_size=4), [])
    interrupted = module(dataset, batch_size=4 // before, workers=0)
    loader = ResumableLoader(interrupted.train_stream(0, before), num_workers=0)
    seen = sum(stream(dataset, 7, world=before, batch_size=4 // before), [])
    take(loader, 7)
    state = loader.state_dict()
    assert state["consumed"] == 28
    resumed = sum(stream(dataset, 13, world=after, batch_size=4 // after, state=state), [])
    assert seen + resumed == reference
    examples = loader.dataset.examples
    assert sorted((seen + resumed)[:examples]) == sorted(stored_windows(dataset, 1023))  # epoch 1 exactly once


@pytest.mark.parametrize("cut", ["mid-epoch", "epoch-end", "next-epoch"])
def test_loader_resumes_at_exactly_the_next_batch(dataset: Path, cut: str) -> None:
    per_epoch = len(module(dataset).train_dataloader())
    taken = {"mid-epoch": per_epoch // 2 + 1, "epoch-end": per_epoch, "next-epoch": per_epoch + 2}[cut]
    reference = take(module(dataset).train_dataloader(), taken + per_epoch + 3)
    interrupted = module(dataset).train_dataloader()
    take(interrupted, taken)
    state = interrupted.state_dict()
    resumed = module(dataset, workers=1).train_dataloader()  # a new process after the kill, other worker count
    resumed.load_state_dict(state)
    following = take(resumed, per_epoch + 3)
    assert all(torch.equal(a, b) for a, b in zip(following, reference[taken:]))
    odd = module(dataset, batch_size=3).train_dataloader()
    if state["consumed"] % 3:
        with pytest.raises(ValueError, match="no whole number of iterations"):
            odd.load_state_dict(state)
    with pytest.raises(ValueError, match="seed 42 -> 7"):
        module(dataset, seed=7).train_dataloader().load_state_dict(state)


def fabric_rank(fabric: L.Fabric, path: str, out: str) -> None:
    data = module(Path(path), batch_size=3, workers=2)
    train_loader, val_loader = fabric.setup_dataloaders(data.train_dataloader(), data.val_dataloader(),
                                                        move_to_device=False)
    assert isinstance(train_loader._dataloader, ResumableLoader)  # an iterable dataset: Fabric keeps our loader
    rows = [fingerprint(row) for batch in take(train_loader, len(train_loader)) for row in batch]
    val = [fingerprint(row) for batch in val_loader for row in batch]
    Path(out, f"rank{fabric.global_rank}.json").write_text(json.dumps({"rows": rows, "val": val}))


def test_two_ranks_two_workers_read_the_global_order(dataset: Path, tmp_path: Path) -> None:
    """A real 2-process gloo group launched by Lightning Fabric (as litgpt pretrain does), 2 workers per rank."""
    fabric = L.Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    fabric.launch(fabric_rank, str(dataset), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]["rows"]) == len(ranks[1]["rows"])  # every rank takes as many batches
    interleaved = [row for i in range(0, len(ranks[0]["rows"]), 3) for r in (0, 1) for row in ranks[r]["rows"][i:i + 3]]
    assert interleaved == sum(stream(dataset, len(ranks[0]["rows"]) // 3, world=1, batch_size=6), [])
    assert sorted(set(interleaved)) == sorted(set(stored_windows(dataset, 1023)))  # an epoch, all of it
    data = Dataset.open(str(dataset))
    val = [fingerprint(torch.from_numpy(seq.astype(np.int64))) for shard in data.shards("val")
           for seq in data.read_windows(shard)]
    assert len(ranks[0]["val"]) == len(ranks[1]["val"])  # as many validation batches: sharded forwards stay in step
    assert ranks[0]["val"] + ranks[1]["val"] == val[:len(val) // 2 * 2]


def test_shorter_context_cuts_windows(dataset: Path) -> None:
    loader = module(dataset, batch_size=5, context=255, workers=0).train_dataloader()
    examples = 4 * sum(s["sequences"] for s in Dataset.open(str(dataset)).shards("train"))
    assert loader.dataset.examples == examples
    rows = [fingerprint(row) for batch in take(loader, len(loader)) for row in batch][:examples]
    assert sorted(rows) == sorted(stored_windows(dataset, 255))
    with pytest.raises(ValueError, match="longer than the dataset's sequences"):
        module(dataset, context=2048)


def test_validation_reads_the_val_split(dataset: Path) -> None:
    data = module(dataset, workers=0)
    rows = [fingerprint(row) for batch in data.val_dataloader() for row in batch]
    val = Dataset.open(str(dataset))
    expected = [fingerprint(torch.from_numpy(seq.astype(np.int64))) for shard in val.shards("val")
                for seq in val.read_windows(shard)]
    assert rows == expected and rows


def test_mismatches_are_caught_before_training(dataset: Path, tmp_path: Path) -> None:
    small = Config(name="small-vocab", padded_vocab_size=256, vocab_size=256, n_layer=1, n_head=1, n_embd=8)
    too_many_ids = r"vocabulary \(320 ids\) is larger than the model's \(256\)"
    with pytest.raises(ValueError, match=too_many_ids):  # python -m train.pretrain, before any process starts
        check_data(CodecShards(path=str(dataset)), 1, 4, small)
    with pytest.raises(ValueError, match=too_many_ids):  # the data module's own setting (plain litgpt pretrain)
        CodecShards(path=str(dataset), model_vocab_size=256).connect(batch_size=4)
    fits = CodecShards(path=str(dataset))
    check_data(fits, 1, 4, Config(name="fits", padded_vocab_size=320, vocab_size=320, n_layer=1, n_head=1, n_embd=8))
    assert fits.model_vocab_size == 320  # what every rank's connect() checks again
    with pytest.warns(UserWarning, match="the model's vocabulary is not checked against the dataset's 320 ids"):
        module(dataset)  # unset, as under plain litgpt pretrain: said, not silent
    with pytest.raises(DatasetError, match="not a codec-LM dataset"):
        module(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    shard = broken / "train" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    with pytest.raises(DatasetError, match="truncated or was replaced"):
        module(broken)
    flipped = bytearray((dataset / "train" / "shard-000000.tar").read_bytes())
    flipped[1000] ^= 1  # a token of the first member
    shard.write_bytes(bytes(flipped))
    with pytest.raises(DatasetError, match="sha256 differs"):  # one rank, no workers: it reads the shard whole
        take(module(broken, workers=0).train_dataloader(), 1)


STRIDE = 3072  # bytes per member of the tiny dataset: a 512-byte tar header, 128 of npy header, 2048 of tokens


def through_epochs(data: CodecShards, rank: int, world: int, epochs: int = 1) -> ResumableLoader:
    """Rank ``rank`` of ``world`` in this process, taken through the last iteration that ends within ``epochs``
    epochs (a rank reads its share of a shard for the epoch when it gets there: that reads all of its share)."""
    loader = ResumableLoader(data.train_stream(rank, world), num_workers=0)
    take(loader, epochs * loader.dataset.examples // (world * data.batch_size))
    return loader


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_a_rank_reads_about_one_wth_of_the_bytes(dataset: Path, world: int) -> None:
    """Rank r of W fetches only its own members: over 4 epochs at micro-batch 1, each rank reads 0.85 to 1.25 x the
    train bytes / W. The overhead, stated: a rank takes 1/W of the positions (22 or 23 of 180 at W = 8); the
    train bytes include each tar's end padding (3.6% here) and a request stops at its last member's npy (-384
    bytes); coalescing reads past at most MAX_GAP bytes (one 3 KB member here) per gap it closes."""
    data = module(dataset, batch_size=1, workers=0)
    shards = Dataset.open(str(dataset)).shards("train")
    train_bytes = sum(s["bytes"] for s in shards)
    counts = [through_epochs(data, rank, world, epochs=4).dataset.reader.counts for rank in range(world)]
    ratios = [c.bytes / (4 * train_bytes / world) for c in counts]
    assert all(0.85 <= ratio <= 1.25 for ratio in ratios), ratios
    assert all(c.visits == 4 * len(shards) for c in counts)  # one batched read per shard per epoch
    if world == 1:  # it needs every member: the file, in one request (and its sha256 checked)
        assert counts[0].whole == counts[0].requests == counts[0].visits
        assert counts[0].bytes == 4 * train_bytes
    else:
        assert MAX_GAP // STRIDE == 1  # what the overhead above assumes
        assert all(c.whole == 0 and c.largest < min(s["bytes"] for s in shards) for c in counts)  # never whole
        assert sum(c.bytes for c in counts) < 1.2 * 4 * train_bytes  # all ranks: the data about once, not W times
        members = 4 * 45  # each taken once per epoch, by one rank; near ones share a request
        assert sum(c.requests for c in counts) < members


@pytest.mark.parametrize("corruption, problem", [
    ("a byte of its name", r"its tar header is invalid \(bad checksum\)"),
    ("the next member's header", r"its tar header is for 'shard-000000-000008.npy' \(2176 bytes\), expected the "
                                 r"file 'shard-000000-000007.npy' \(2176 bytes\)"),
    ("its npy shape", "its npy header is not that of 1024 uint16 tokens"),
])
def test_a_member_with_a_corrupt_header_is_refused(dataset: Path, tmp_path: Path, corruption: str,
                                                   problem: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    shard = broken / "train" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    member = 7 * STRIDE
    if corruption == "a byte of its name":
        data[member + 3] ^= 1
    elif corruption == "the next member's header":  # a valid header (its checksum holds), of the wrong member
        data[member:member + 512] = data[member + STRIDE:member + STRIDE + 512]
    else:  # (1024,) -> (1025,)
        data[member + 512 + bytes(data[member + 512:member + 640]).index(b"(1024,)") + 4] ^= 1
    shard.write_bytes(bytes(data))
    errors = []
    for rank in range(2):  # partial reads, no sha256: in an epoch one rank takes member 7 and checks it
        try:
            through_epochs(module(broken, batch_size=1, workers=0), rank, 2)
        except DatasetError as error:
            errors.append(str(error))
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert re.fullmatch(rf".*/train/shard-000000.tar: member 7 \(shard-000000-000007.npy\): {problem}; the shard "
                        r"is corrupt or was replaced \(run `codec-shards verify` on the dataset\)", errors[0]), errors


def test_an_error_in_a_dataloader_worker_is_one_line(dataset: Path, tmp_path: Path) -> None:
    """PyTorch re-raises a worker's exception with the worker's traceback in its message; the loader gives it back
    its own one line, as the commands print errors."""
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    shard = broken / "train" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 1  # a token byte: only the whole shard's sha256 sees it (one rank reads it whole)
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as raised:
        take(module(broken, workers=1).train_dataloader(), 1)
    assert str(raised.value) == (f"{shard}: sha256 differs from the manifest: the shard is corrupt or was replaced "
                                 "(run `codec-shards verify` on the dataset)")


def test_many_shards_one_order_each_rank_its_own_bytes(sharded: Path) -> None:
    """Across shard boundaries: the same global order on 1, 2 or 3 ranks and with workers, every example once per
    epoch, a loader rewound by load_state_dict, and a rank of 4 reading about a quarter of the bytes."""
    examples = sum(s["sequences"] for s in Dataset.open(str(sharded)).shards("train"))
    one = sum(stream(sharded, 13, world=1, batch_size=6), [])  # 78 positions: two epochs and a bit
    assert one == sum(stream(sharded, 13, world=2, batch_size=3), []) == sum(stream(sharded, 13, world=3,
                                                                                      batch_size=2), [])
    assert sorted(one[:examples]) == sorted(one[examples:2 * examples]) == sorted(stored_windows(sharded, 1023))
    assert rows_of(take(module(sharded, batch_size=6, workers=2).train_dataloader(), 13)) == one
    loader = ResumableLoader(module(sharded, batch_size=1, workers=0).train_stream(0, 1), num_workers=0)
    loader.load_state_dict({**loader.state_dict(), "consumed": 2})
    assert rows_of(take(loader, 1)) == one[2:3]  # it read the first shard's members from position 2 on
    loader.load_state_dict({**loader.state_dict(), "consumed": 0})  # back into that shard (3 or more sequences)
    assert rows_of(take(loader, 3)) == one[:3]
    data = module(sharded, batch_size=1, workers=0)
    members = examples * STRIDE  # (the tars' end padding is a fifth of these small shards: not a rank's to read)
    for rank in range(4):
        counts = through_epochs(data, rank, 4, epochs=4).dataset.reader.counts
        assert 0.85 <= counts.bytes / (4 * members / 4) <= 1.25 and counts.whole == 0
        assert counts.requests < 4 * examples / 4  # a shard visit is one batched read: near members share a request


def test_reads_from_any_fsspec_filesystem(dataset: Path) -> None:
    """The same batches from an in-memory copy (fsspec, as on gs:// or s3://) as from the local folder."""
    memory = fsspec.filesystem("memory")
    memory.put(str(dataset), "/codec-lm-loader-test", recursive=True)
    try:
        remote, local = (module(p, batch_size=2, workers=0) for p in ("memory://codec-lm-loader-test", dataset))
        for rank in range(2):
            batches = [take(ResumableLoader(d.train_stream(rank, 2), num_workers=0), 30) for d in (remote, local)]
            assert rows_of(batches[0]) == rows_of(batches[1])
        assert rows_of(list(remote.val_dataloader())) == rows_of(list(local.val_dataloader()))
    finally:
        memory.rm("/codec-lm-loader-test", recursive=True)


# ---- litgpt pretrain on the CPU -------------------------------------------------------------------
def pretrain(config: str, dataset: Path, out: Path, *flags: str) -> None:
    # LitGPT compiles the model; on 2 CPU cores that costs more than it saves here
    env = {**os.environ, "TORCH_COMPILE_DISABLE": "1"}
    subprocess.run(["litgpt", "pretrain", "--config", str(ROOT / config), "--data.path", str(dataset),
                    "--out_dir", str(out), *flags], check=True, env=env, cwd=ROOT, capture_output=True)


def test_tiny_pretrain_trains_and_resumes_exactly(dataset: Path, tmp_path: Path) -> None:
    # constant LR (min_lr = lr), so a run stopped early saw the same schedule as the uninterrupted one;
    # fp32: as fast on every CPU (bf16-mixed is fast only where the CPU computes in bf16)
    common = ["--data.num_workers", "2", "--train.micro_batch_size", "8", "--train.global_batch_size", "8",
              "--train.log_interval", "1", "--train.save_interval", "5", "--train.lr_warmup_steps", "0",
              "--train.min_lr", TINY_LR, "--precision", "32-true",
              "--eval.interval", "1000", "--eval.final_validation", "false"]
    per_iter = 8 * 1023
    with ThreadPoolExecutor(2) as pool:  # the uninterrupted run and the one to resume are independent
        runs = [pool.submit(pretrain, "train/jpeg-tiny.yaml", dataset, tmp_path / out, *common, "--train.max_tokens",
                            str(steps * per_iter)) for out, steps in (("full", 12), ("cut", 5))]
        for done in runs:
            done.result()
    pretrain("train/jpeg-tiny.yaml", dataset, tmp_path / "cut", *common, "--train.max_tokens", str(12 * per_iter),
             "--resume", "auto")
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(full) == list(range(1, 13)) and sorted(resumed) == list(range(1, 13))
    assert np.mean([full[i] for i in (10, 11, 12)]) < np.mean([full[i] for i in (1, 2, 3)]) - 0.1  # it learns
    assert (tmp_path / "full" / "final" / "lit_model.pth").is_file()
    # iterations 6-12 ran after the restart (crossing an epoch: 6 batches of 8 per epoch)
    assert [resumed[i] for i in range(6, 13)] == pytest.approx([full[i] for i in range(6, 13)], abs=1e-6)
    state = torch.load(tmp_path / "cut" / "step-00000010" / "lit_model.pth", weights_only=False)["train_dataloader"]
    examples = module(dataset, batch_size=8).train_dataloader().dataset.examples
    assert state["consumed"] == 10 * 8 and 80 > examples  # the loop's position, one epoch and a bit in


@pytest.mark.parametrize("config, parameters", [
    ("train/jpeg7b.yaml", 6_478_893_056),
    ("train/avc7b.yaml", 6_484_660_224),
])
def test_7b_configs_parse_and_instantiate_on_meta(config: str, parameters: int) -> None:
    printed = subprocess.run(["litgpt", "pretrain", "--config", str(ROOT / config), "--print_config"], check=True,
                             capture_output=True, text=True, cwd=ROOT).stdout
    parsed = yaml.safe_load(printed)
    model = Config(**{k: v for k, v in parsed["model_config"].items() if k not in ("hf_config",)})
    assert (model.n_layer, model.n_head, model.n_embd, model.intermediate_size) == (32, 32, 4096, 11008)
    assert model.norm_class_name == "RMSNorm" and model.mlp_class_name == "LLaMAMLP"
    assert parsed["data"]["class_path"] == "train.data.CodecShards"
    assert parsed["precision"] == "bf16-true" and parsed["optimizer"]["init_args"]["lr"] == 3e-4
    with torch.device("meta"):
        gpt = GPT(model)
    assert sum(p.numel() for p in gpt.parameters()) == parameters
    assert gpt.lm_head.weight is not gpt.transformer.wte.weight  # untied embeddings
    tokens_per_step = parsed["train"]["global_batch_size"] * model.block_size
    assert 3.9e6 <= tokens_per_step <= 4.2e6  # about 4M tokens per optimizer step
