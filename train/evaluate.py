"""Evaluating Jpeg-LM checkpoints the way the paper does (§5.2, Tables 3 and 4).

    python -m train.evaluate --checkpoint out/jpeg7b/step-00050000 out/jpeg7b/final \\
        --images 'imagenet/val/*.JPEG' --num-images 5000 --inception-weights inception-2015-12-05.pt --out eval/imagenet
    python -m train.evaluate --checkpoint out/jpeg-tiny/final --images data/jpeg-tiny --num-images 15 \\
        --seeds 2 --unconditional 16 --out out/jpeg-tiny/eval        # with CODEC_LM_INCEPTION=inception-2015-12-05.pt

Prompted completion: each evaluation image is normalised and encoded with the checkpoints' codec
profile, cut after the first r of its MCUs (r in --prompt-ratio R [R ...]) and completed by the model until
EOS. FID between the decoded completions and the originals, once per seed, is reported as mean (std)
over --seeds. Unconditional: --unconditional N samples from BOS alone per seed, FID against the same
originals (a held-out set: the model never trained on them). Also reported: the codec ceiling (FID of
the plain codec round trip of the originals, which no model can beat), validation loss and bits per
byte of the images' streams, the share of completions that decode cleanly, and sampling throughput.

--images is a glob or a folder of image files (any Pillow-readable; --num-images of them chosen at
random with --seed) or a dataset folder written by `preprocess.run` (its val split; those images are
already codec output, so there is no round trip to measure and no ceiling).

OUT/results.json holds every number; OUT/report.md the tables in the paper's layout (a row per
checkpoint, a column per prompt ratio, cells mean (std)) and picture grids (OUT/grids/: prompt, one
completion per seed, original). OUT/work/ keeps the evaluation set, its features and every finished
chunk of --batch-size completions: the same command continues where a killed run stopped, and adding checkpoints,
ratios or seeds reuses everything already done. Changing what the finished work depends on (images,
profile, sampling settings, feature network) is refused: use another --out.

Progress goes to stderr as in ``train.generate``: per task (a prompt ratio or the unconditional samples, one
seed) tokens sampled, tokens/s, an ETA and completions done; a bar on a terminal, a line every 30 seconds in a
log (TQDM_MININTERVAL=S), none with TQDM_DISABLE=1.

Sampling goes through ``train.engine`` (continuous batching): --max-batch rows at once, by default as many as
the device's free memory holds at the length the completions need; a row's completion does not depend on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shared.codec.errors import InvalidMediaError
from shared.codec.profile import CodecProfile, Decoded, file_problems, viewable_file
from shared.errors import CodecLmError
from shared.format.dataset import Dataset
from shared.format.files import (
    exists,
    is_remote,
    join,
    matching,
    open_binary,
    read_bytes,
    safe_file_name,
    size,
    write_atomic,
    write_json_atomic,
)
from shared.format.shards import MANIFEST
from shared.format.tokenizer import ByteTokenizer
from shared.tools import cli
from shared.tools.contact_sheet import save_contact_sheet
from shared.tools.progress import progress_bar
from train.checkpoint import Sampler, existing_checkpoint, load_for_sampling, open_dataset, place, weights_files
from train.engine import (
    Engine,
    EngineError,
    Job,
    Sample,
    SamplingProgress,
    SamplingSettings,
    add_sampling_arguments,
)
from train.fid import INCEPTION_ENV, INCEPTION_URL, NO_FEATURE_NETWORK, FeatureExtractor, fid
from train.generate import marked_pictures

PROG = "python -m train.evaluate"
UNCONDITIONAL = "unconditional"
PROMPT_RATIOS = (0.25, 0.5, 0.75)  # the paper's Table 3


class EvaluationError(CodecLmError):
    """Inputs or an output folder the evaluation cannot use."""


@dataclass
class Settings(SamplingSettings):
    checkpoints: list[str]
    images: str
    out: str
    num_images: int = 5000
    prompt_ratio: list[float] = field(default_factory=lambda: list(PROMPT_RATIOS))  # --prompt-ratio R [R ...]
    seeds: int = 3
    unconditional: int = 0
    inception_weights: str | None = None
    batch_size: int = 8
    feature_batch_size: int = 50
    dataset: str | None = None
    device: str | None = None
    grid_images: int = 8
    worker: str | None = None  # "K/N": sample only rows with index % N == K (one process per GPU)

    def share(self) -> tuple[int, int] | None:
        if self.worker is None:
            return None
        try:
            index, count = (int(part) for part in self.worker.split("/"))
        except ValueError:
            index, count = -1, 0
        if not 0 <= index < count:
            raise EvaluationError(f"--worker must be K/N with 0 <= K < N (e.g. 0/8), not {self.worker!r}")
        return index, count

    def check(self) -> None:
        """The flags' values, before any work."""
        for ratio in self.prompt_ratio:
            if not 0.0 <= ratio < 1.0:
                raise EvaluationError(f"--prompt-ratio {ratio:g}: prompt ratios must be in [0, 1)")
        if self.seeds < 1 or self.num_images < 2 or self.batch_size < 1 or self.unconditional < 0:
            raise EvaluationError("--seeds and --batch-size must be >= 1, --num-images >= 2, --unconditional >= 0")
        self.share()  # a bad --worker fails now

    def fixed(self, profile: CodecProfile, extractor: FeatureExtractor) -> dict[str, Any]:
        """What finished work depends on: a resumed run must agree on all of it."""
        return {"images": self.images, "num_images": self.num_images, "seed": self.seed, "profile": profile.name,
                "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "constrained": self.constrained, "max_new_tokens": self.max_new_tokens,
                "feature_network_sha256": extractor.sha256}


@dataclass
class EvalSet:
    keys: list[str]
    streams: list[bytes]
    reference: np.ndarray  # features of the originals
    ceiling: np.ndarray | None  # features of the originals' codec round trip; None when they are codec output
    pictures: np.ndarray  # the first --grid-images originals, for the grids
    rejected: list[dict[str, str]]
    source: str  # "files" or "dataset val split"


# ---- small file helpers: arrays and byte lists in .npz, written atomically ------------------------
def save_arrays(path: str, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def load_arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as arrays:
        return dict(arrays)


def pack_bytes(items: list[bytes]) -> dict[str, np.ndarray]:
    return {"data": np.frombuffer(b"".join(items), np.uint8),
            "offsets": np.cumsum([0] + [len(item) for item in items], dtype=np.int64)}


def unpack_bytes(arrays: dict[str, np.ndarray]) -> list[bytes]:
    data, offsets = arrays["data"].tobytes(), arrays["offsets"]
    return [data[start:end] for start, end in zip(offsets[:-1], offsets[1:])]


# ---- the evaluation set ------------------------------------------------------------------------
def image_files(pattern: str) -> list[str]:
    if "://" not in pattern and Path(pattern).is_dir():
        return sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file() and not p.name.startswith("."))
    return matching(pattern)


def file_images(pattern: str, profile: CodecProfile, *, count: int, seed: int,
                rejected: list[dict[str, str]]) -> Iterator[tuple[str, np.ndarray, bytes]]:
    """(path, normalised original, stream) for ``count`` files chosen at random; unreadable ones are rejected."""
    paths = image_files(pattern)
    if not paths:
        raise EvaluationError(f"--images {pattern}: no files match")
    taken = 0
    for index in np.random.default_rng(seed).permutation(len(paths)):
        if taken == count:
            return
        path = paths[index]
        try:
            pictures = profile.normalize(read_bytes(path))
            stream = profile.encode_pictures(pictures)
        except InvalidMediaError as error:
            rejected.append({"path": path, "reason": error.reason, "message": str(error)})
            continue
        except OSError as error:
            rejected.append({"path": path, "reason": "unreadable", "message": str(error)})
            continue
        taken += 1
        yield path, pictures[0], stream


def dataset_images(root: str, profile: CodecProfile, *, count: int,
                   seed: int) -> Iterator[tuple[str, np.ndarray, bytes]]:
    """(key, decoded stream, stream) for ``count`` complete documents of a dataset's val split."""
    data = Dataset.open(root)
    if data.profile.name != profile.name:
        raise EvaluationError(f"--images {root} holds {data.profile.name} streams, "
                              f"the checkpoints model {profile.name}")
    held_out = [("split", "=", "val"), ("complete", "=", True)]
    keys = [row["key"] for row in data.rows(held_out, columns=["key"])]
    if not keys:
        raise EvaluationError(f"--images {root}: its val split has no complete documents "
                              "(preprocess with --val_fraction)")
    chosen = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))[:count]]
    for row, _, stream in data.document_streams(data.rows(held_out + [("key", "in", chosen)])):
        yield row["key"], profile.decode(stream).pictures[0], stream


def build_eval_set(settings: Settings, profile: CodecProfile, extractor: FeatureExtractor) -> EvalSet:
    from_dataset = exists(join(settings.images, MANIFEST))
    rejected: list[dict[str, str]] = []
    items = (dataset_images(settings.images, profile, count=settings.num_images, seed=settings.seed) if from_dataset
             else file_images(settings.images, profile, count=settings.num_images, seed=settings.seed,
                             rejected=rejected))
    keys: list[str] = []
    streams: list[bytes] = []
    reference, ceiling, pictures, originals, round_trips = [], [], [], [], []

    def flush() -> None:
        if originals:
            reference.append(extractor(np.stack(originals)))
            if round_trips:
                ceiling.append(extractor(np.stack(round_trips)))
            originals.clear()
            round_trips.clear()

    for key, original, stream in progress_bar(settings.num_images, "evaluation images", "img", iterable=items):
        keys.append(key)
        streams.append(stream)
        originals.append(original)
        if not from_dataset:
            round_trips.append(profile.decode(stream).pictures[0])
        if len(pictures) < settings.grid_images:
            pictures.append(original)
        if len(originals) == settings.feature_batch_size:
            flush()
    flush()
    if len(keys) < 2:
        raise EvaluationError(f"--images {settings.images}: {len(keys)} usable images; FID needs at least 2 "
                              f"({len(rejected)} rejected, e.g. {rejected[:1]})")
    return EvalSet(keys, streams, np.concatenate(reference), np.concatenate(ceiling) if ceiling else None,
                   np.stack(pictures) if pictures else np.zeros((0, *original.shape), np.uint8),
                   rejected, "dataset val split" if from_dataset else "files")


def load_or_build_eval_set(settings: Settings, profile: CodecProfile, extractor: FeatureExtractor) -> EvalSet:
    path, facts = join(settings.out, "work", "eval-set.npz"), join(settings.out, "work", "eval-set.json")
    if exists(path) and exists(facts):
        arrays, recorded = load_arrays(path), json.loads(read_bytes(facts))
        return EvalSet(recorded["keys"], unpack_bytes(arrays), arrays["reference"],
                       arrays["ceiling"] if "ceiling" in arrays else None, arrays["pictures"],
                       recorded["rejected"], recorded["source"])
    built = build_eval_set(settings, profile, extractor)
    extra = {"ceiling": built.ceiling.astype(np.float32)} if built.ceiling is not None else {}
    save_arrays(path, **pack_bytes(built.streams), reference=built.reference.astype(np.float32),
                pictures=built.pictures, **extra)
    write_json_atomic(facts, {"keys": built.keys, "rejected": built.rejected, "source": built.source})
    return load_or_build_eval_set(settings, profile, extractor)  # read back: a resumed run sees the same floats


def check_settings(settings: Settings, profile: CodecProfile, extractor: FeatureExtractor) -> None:
    path, wanted = join(settings.out, "work", "settings.json"), settings.fixed(profile, extractor)
    if not exists(path):
        write_json_atomic(path, wanted)
        return
    recorded = json.loads(read_bytes(path))
    changed = [f"{name}: {recorded.get(name)!r} then, {value!r} now" for name, value in wanted.items()
               if recorded.get(name) != value]
    if changed:
        raise EvaluationError(f"{settings.out} holds an evaluation made with other settings ({'; '.join(changed)}); "
                              "its finished completions would not match: use another --out")


# ---- one checkpoint ----------------------------------------------------------------------------
def checkpoint_tag(checkpoint: str) -> str:
    """A readable, collision-free folder name for a checkpoint path (local or on an object store)."""
    resolved = str(checkpoint).rstrip("/") if is_remote(checkpoint) else str(Path(checkpoint).resolve())
    name = safe_file_name("-".join(resolved.split("/")[-2:]), limit=80, fallback="checkpoint")
    return f"{name}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"


def check_fingerprint(checkpoint: str, path: str) -> None:
    """Refuse to mix completions of different weights saved under the same checkpoint path."""
    files = weights_files(place(checkpoint))
    digest, total = hashlib.sha256(), 0
    for weights in files:  # the first and last 64 MB of each: every tensor changes with training
        length = size(weights)
        total += length
        with open_binary(weights) as handle:
            digest.update(handle.read(1 << 26))
            handle.seek(max(0, length - (1 << 26)))
            digest.update(handle.read())
    fingerprint = {"size": total, "sha256_head_tail": digest.hexdigest()}
    if not exists(path):
        write_json_atomic(path, fingerprint)
    elif json.loads(read_bytes(path)) != fingerprint:
        raise EvaluationError(f"the weights of {checkpoint} are not those this evaluation's finished completions came "
                              "from (retrained or overwritten?): use another --out")


def row_seed(base: int, seed_index: int, task: float, row: int) -> int:
    """The sampling seed of one completion: independent of batching, so resumed work matches."""
    return int(np.random.SeedSequence([base, seed_index, round(task * 10_000), row]).generate_state(1)[0])


def task_name(ratio: float | None, seed_index: int) -> str:
    return f"{UNCONDITIONAL}-seed{seed_index}" if ratio is None else f"prompt-{ratio:g}-seed{seed_index}"


def run_task(folder: str, prompts: list[bytes], seeds: list[int], *, desc: str, sampler: Sampler,
             extractor: FeatureExtractor, settings: Settings) -> dict[str, Any] | None:
    """Complete every prompt once; completions are saved in chunks, so a rerun skips every finished chunk.

    The chunks are fixed (rows sorted by prompt length, then cut every --batch-size rows) and a --worker
    takes whole chunks, so a resumed or shared run saves exactly the chunks an uninterrupted one would.
    All rows still to do go through one engine (continuous batching); a chunk is saved as soon as its
    last row is done. Returns the merged completions, or None for a --worker."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    batches = [order[start:start + settings.batch_size] for start in range(0, len(order), settings.batch_size)]
    folder = join(folder, f"batch-{settings.batch_size}")
    share = settings.share()
    chunks: dict[int, dict[str, np.ndarray]] = {}
    for path in matching(join(folder, "*.npz")):
        number = int(path.rsplit("/", 1)[-1].removesuffix(".npz"))
        chunk = load_arrays(path)
        if number < len(batches) and chunk["index"].tolist() == batches[number]:  # else: the row count changed
            chunks[number] = chunk
    mine = [k for k in range(len(batches)) if share is None or k % share[1] == share[0]]
    todo = [k for k in mine if k not in chunks]
    rows = [i for number in todo for i in batches[number]]
    engine = Engine(sampler.model, sampler.tokenizer, [Job(prompts[i], seeds[i]) for i in rows], settings=settings,
                    constraint=sampler.constraint)
    chunk_of = {i: number for number in todo for i in batches[number]}
    tokens = sum(engine.budgets)  # at most: completions that reach EOS take less
    progress = SamplingProgress(tokens, sum(len(batches[k]) for k in mine), desc=desc, what="completions",
                                done=sum(len(batches[k]) for k in mine if k in chunks)) if todo else None
    done: dict[int, Sample] = {}
    with progress or contextlib.nullcontext():  # a task already done shows no bar
        for job, sample in engine.run(progress):
            done[rows[job]] = sample
            number = chunk_of[rows[job]]
            if all(i in done for i in batches[number]):
                chunks[number] = save_chunk(join(folder, f"{number:06d}.npz"), batches[number],
                                            [done.pop(i) for i in batches[number]], sampler=sampler,
                                            extractor=extractor)
    if share is not None:
        return None
    parts = [chunks[k] for k in range(len(batches))]
    for part in parts:  # batches finished before files were checked
        if "sound" not in part:
            part["sound"] = files_sound(sampler.profile, [sampler.profile.decode(s) for s in unpack_bytes(part)])
    by_row = np.argsort(np.concatenate([c["index"] for c in parts]))
    merged = {name: np.concatenate([c[name] for c in parts])[by_row]
              for name in ("index", "tokens", "eos", "valid_mcus", "clean", "sound", "features")}
    streams = [s for c in parts for s in unpack_bytes(c)]
    merged["streams"] = [streams[i] for i in by_row]
    merged["seconds"] = float(sum(c["seconds"].sum() for c in parts))
    return merged


def save_chunk(path: str, rows: list[int], samples: list[Sample], *, sampler: Sampler,
               extractor: FeatureExtractor) -> dict[str, np.ndarray]:
    """A chunk of finished completions, decoded and featurized, as one file."""
    decoded = [sampler.profile.decode(s.stream) for s in samples]
    chunk = {"index": np.array(rows, np.int64), **pack_bytes([s.stream for s in samples]),
             "tokens": np.array([s.tokens for s in samples], np.int64),
             "eos": np.array([s.stopped == "eos" for s in samples]),
             "valid_mcus": np.array([d.valid_units for d in decoded], np.int64),
             "clean": np.array([d.complete for d in decoded]),
             "sound": files_sound(sampler.profile, decoded),
             "seconds": np.array([sum(s.seconds for s in samples)]),  # the rows' shares of the engine's time
             "features": extractor(np.stack([d.pictures[0] for d in decoded])).astype(np.float32)}
    save_arrays(path, **chunk)
    return chunk


def files_sound(profile: CodecProfile, decoded: list[Decoded]) -> np.ndarray:
    """Per completion: whether the file made from it (``profile.viewable`` of the stream made whole) passes
    the strict check from its own bytes, as ``train.generate`` writes it."""
    return np.array([not file_problems(profile, viewable_file(profile, d.stream)) for d in decoded])


@torch.inference_mode()
def stream_loss(model: Any, tokenizer: ByteTokenizer, streams: list[bytes], batch_size: int) -> dict[str, float]:
    """Cross-entropy of whole documents (BOS stream EOS) in the model's context windows: nats per token
    and bits per stream byte. A document longer than the context is scored window by window."""
    device = next(model.parameters()).device
    block = model.config.block_size
    windows = []
    for stream in streams:
        ids = tokenizer.encode(stream, bos=True, eos=True).tolist()
        windows += [ids[start:start + block + 1] for start in range(0, len(ids) - 1, block)]
    windows.sort(key=len)
    nats, targets = 0.0, 0
    model.max_seq_length = block
    for start in progress_bar(None, "validation loss", "batch", iterable=range(0, len(windows), batch_size)):
        batch = windows[start:start + batch_size]
        width = max(len(w) for w in batch) - 1
        inputs = torch.tensor([w[:-1] + [0] * (width + 1 - len(w)) for w in batch], device=device)
        labels = torch.tensor([w[1:] + [-100] * (width + 1 - len(w)) for w in batch], device=device)
        logits = model(inputs).float()
        nats += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum").item()
        targets += int((labels != -100).sum())
    stream_bytes = sum(len(s) for s in streams)
    return {"loss": nats / targets, "bits_per_byte": nats / np.log(2) / stream_bytes, "tokens": targets,
            "stream_bytes": stream_bytes}


def summarize(task: dict[str, Any], reference: np.ndarray, profile: CodecProfile, prompt_mcus: int) -> dict[str, Any]:
    count, generated = len(task["index"]), profile.total_units - prompt_mcus
    return {"fid": fid(task["features"].astype(np.float64), reference), "completions": count,
            "clean_share": float(task["clean"].mean()), "eos_share": float(task["eos"].mean()),
            "files_sound_share": float(task["sound"].mean()),  # files made from them: 1.0 always
            # of the MCUs the model wrote: the prompt's own are valid by construction
            "generated_mcus_valid_share": float(np.clip(task["valid_mcus"] - prompt_mcus, 0, None).sum()
                                                / max(1, count * generated)),
            "tokens_generated": int(task["tokens"].sum()), "seconds": task["seconds"]}


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed) over seeds."""
    return {"per_seed": values, "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def evaluate_checkpoint(checkpoint: str, eval_set: EvalSet, *, settings: Settings, extractor: FeatureExtractor,
                        device: torch.device) -> dict[str, Any] | None:
    """One report row; None for a --worker (its share of the completions is on disk)."""
    sampler = load_for_sampling(place(checkpoint), dataset=settings.dataset, device=device,
                                constrained=settings.constrained)
    profile, tokenizer, model = sampler.profile, sampler.tokenizer, sampler.model
    tag = checkpoint_tag(checkpoint)
    work = join(settings.out, "work", tag)
    reference = eval_set.reference.astype(np.float64)
    result: dict[str, Any] = {"checkpoint": checkpoint, "tag": tag, "prompted": {}, "grids": {}}
    check_fingerprint(checkpoint, join(work, "checkpoint.json"))

    loss_path = join(work, "loss.json")
    if not exists(loss_path) and (settings.share() or (0, 1))[0] == 0:  # one worker scores the streams
        write_json_atomic(loss_path, stream_loss(model, tokenizer, eval_set.streams, settings.batch_size))

    jobs: list[tuple[float | None, list[bytes]]] = [(r, [profile.prompt(s, r) for s in eval_set.streams])
                                                    for r in settings.prompt_ratio]
    if settings.unconditional:
        jobs.append((None, [b""] * settings.unconditional))
    tokens, seconds, completions = 0, 0.0, 0
    for ratio, prompts in jobs:
        label = UNCONDITIONAL if ratio is None else f"{ratio:g}"
        per_seed, shown = [], []
        for seed_index in range(settings.seeds):
            name = task_name(ratio, seed_index)
            task_code = 2.0 if ratio is None else ratio  # keeps unconditional seeds apart from every ratio's
            seeds = [row_seed(settings.seed, seed_index, task_code, row) for row in range(len(prompts))]
            task = run_task(join(work, name), prompts, seeds, desc=f"{tag[:20]} {name}", sampler=sampler,
                            extractor=extractor, settings=settings)
            if task is None:
                continue
            per_seed.append(summarize(task, reference, profile, 0 if ratio is None else profile.prompt_units(ratio)))
            shown.append(task["streams"][:settings.grid_images if ratio is not None else 8])
            tokens += int(task["tokens"].sum())
            seconds += task["seconds"]
            completions += len(prompts)
        if not per_seed:  # a --worker
            continue
        shares = ("clean_share", "eos_share", "generated_mcus_valid_share", "files_sound_share")
        summary = {"fid": mean_std([s["fid"] for s in per_seed]), "seeds": per_seed,
                   **{k: float(np.mean([s[k] for s in per_seed])) for k in shares}}
        if ratio is None:
            result[UNCONDITIONAL] = summary
        else:
            result["prompted"][label] = summary
        if settings.grid_images > 0:
            result["grids"][label] = save_grid(settings.out, tag=tag, label=label, profile=profile, eval_set=eval_set,
                                               prompts=prompts, shown=shown, ratio=ratio)
    if settings.share() is not None:
        return None
    result["validation"] = json.loads(read_bytes(loss_path))
    result["throughput"] = {"tokens_per_second": tokens / seconds if seconds else 0.0,
                            "completions_per_second": completions / seconds if seconds else 0.0,
                            "device": str(device), "batch_size": settings.batch_size,
                            "max_batch": settings.max_batch}
    return result


def save_grid(out: str, *, tag: str, label: str, profile: CodecProfile, eval_set: EvalSet, prompts: list[bytes],
              shown: list[list[bytes]], ratio: float | None) -> str:
    """A picture grid: per image prompt | one completion per seed | original; unconditional: a row per seed."""
    def picture(stream: bytes) -> tuple[np.ndarray, str]:  # filled MCUs tinted
        decoded = profile.decode(stream)
        return marked_pictures(decoded)[0], "ok" if decoded.complete else "filled"

    tiles: list[tuple[str, list[np.ndarray]]] = []
    if ratio is None:
        for seed_index, streams in enumerate(shown):
            for number, stream in enumerate(streams):
                image, verdict = picture(stream)
                tiles.append((f"seed {seed_index} #{number} {verdict}", [image]))
        columns = max(len(streams) for streams in shown)
    else:
        for row in range(min(len(shown[0]), len(eval_set.pictures))):  # pictures kept when the set was built
            tiles.append((f"prompt {ratio:.0%}", [picture(prompts[row])[0]]))
            for seed_index, streams in enumerate(shown):
                image, verdict = picture(streams[row])
                tiles.append((f"seed {seed_index} {verdict}", [image]))
            tiles.append(("original" if eval_set.source == "files" else "original (codec)", [eval_set.pictures[row]]))
        columns = len(shown) + 2
    relative = f"grids/{tag}-{label}.png"
    save_contact_sheet(join(out, relative), tiles, columns=columns, cell=128)
    return relative


# ---- the whole evaluation ----------------------------------------------------------------------
def evaluate(settings: Settings) -> dict[str, Any]:
    """Run (or continue) an evaluation; writes OUT/results.json and OUT/report.md and returns the results."""
    settings.check()
    settings.checkpoints = list(dict.fromkeys(settings.checkpoints))
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    profiles = {checkpoint: open_dataset(place(checkpoint), settings.dataset).profile
                for checkpoint in settings.checkpoints}
    if len({p.name for p in profiles.values()}) > 1:
        raise EvaluationError("the checkpoints model different codec profiles "
                              f"({', '.join(f'{c}: {p.name}' for c, p in profiles.items())}); compare like with like")
    profile = next(iter(profiles.values()))
    if profile.modality != "image":
        raise EvaluationError(f"{profile.name}: FID evaluation is for image checkpoints; "
                              "sample videos with train.generate --prompt-frames")
    extractor = FeatureExtractor(settings.inception_weights, device)
    check_settings(settings, profile, extractor)
    eval_set = load_or_build_eval_set(settings, profile, extractor)
    reference = eval_set.reference.astype(np.float64)
    if settings.share() is not None:
        for checkpoint in settings.checkpoints:
            evaluate_checkpoint(checkpoint, eval_set, settings=settings, extractor=extractor, device=device)
        return {"worker": settings.worker}
    results: dict[str, Any] = {
        "settings": asdict(settings),
        "profile": profile.name,
        "images": {"source": settings.images, "kind": eval_set.source, "count": len(eval_set.keys),
                   "rejected": eval_set.rejected},
        "feature_network": {"path": str(extractor.path), "sha256": extractor.sha256, "dims": extractor.dims},
        "codec_ceiling": ({"fid": fid(eval_set.ceiling.astype(np.float64), reference)}
                          if eval_set.ceiling is not None else None),
        "checkpoints": [evaluate_checkpoint(c, eval_set, settings=settings, extractor=extractor, device=device)
                        for c in settings.checkpoints],
    }
    write_json_atomic(join(settings.out, "results.json"), results)
    write_atomic(join(settings.out, "report.md"), render_report(results))
    return results


def fid_cell(summary: dict[str, Any] | None) -> str:
    """mean (std) over seeds; the mean alone for one seed."""
    if summary is None:
        return "–"
    values = summary["fid"]
    return f"{values['mean']:.2f}" if len(values["per_seed"]) == 1 else f"{values['mean']:.2f} ({values['std']:.2f})"


def render_report(results: dict[str, Any]) -> str:
    settings, images = results["settings"], results["images"]
    ratios = [f"{r:g}" for r in settings["prompt_ratio"]]
    count, dims = images["count"], results["feature_network"]["dims"]
    unconditional = settings["unconditional"]

    lines = [
        "# codec-LM evaluation", "",
        f"{count} images ({images['kind']}: `{images['source']}`), profile `{results['profile']}`, "
        f"{settings['seeds']} seed(s); sampling temperature {settings['temperature']}, top-k {settings['top_k']}, "
        f"top-p {settings['top_p']}, {'grammar-constrained' if settings['constrained'] else 'unconstrained'}. "
        f"Features: `{results['feature_network']['path']}` ({dims} dimensions, sha256 "
        f"{results['feature_network']['sha256'][:12]}…).", "",
        "## FID ↓ against the originals", "",
        f"Prompted completion at each prompt ratio{' and unconditional samples' if unconditional else ''}; "
        f"cells are mean (std) over seeds (sample standard deviation).", "",
        "| model | " + " | ".join(f"{float(r):.0%}" for r in ratios)
        + (f" | unconditional ({unconditional})" if unconditional else "") + " |",
        "|---|" + "---:|" * (len(ratios) + bool(unconditional)),
    ]
    ceiling = results["codec_ceiling"]
    if ceiling is not None:
        lines.append(f"| codec ceiling: `{results['profile']}` round trip | "
                     + " | ".join(f"{ceiling['fid']:.2f}" for _ in ratios)
                     + (" | –" if unconditional else "") + " |")
    for row in results["checkpoints"]:
        lines.append(f"| `{row['checkpoint']}` | " + " | ".join(fid_cell(row["prompted"][r]) for r in ratios)
                     + (f" | {fid_cell(row.get(UNCONDITIONAL))}" if unconditional else "") + " |")
    lines += ["", "## Streams and sampling", "",
              "Validation loss: cross-entropy of the images' whole streams (nats per token); "
              "bits per byte of the stream. "
              "Clean: completions whose every MCU entropy-decodes and that end where the image ends; the others are "
              "written with their valid MCUs kept and the rest filled grey (tinted magenta in the grids).", "",
              "| model | val loss | bits/byte | " + " | ".join(f"clean {float(r):.0%}" for r in ratios)
              + (" | clean uncond." if unconditional else "")
              + " | stopped by EOS | files valid | tokens/s | completions/s |",
              "|---|" + "---:|" * (len(ratios) + bool(unconditional) + 6)]
    for row in results["checkpoints"]:
        summaries = [row["prompted"][r] for r in ratios] + ([row[UNCONDITIONAL]] if unconditional else [])
        validation = row["validation"]
        lines.append(f"| `{row['checkpoint']}` | {validation['loss']:.3f} | {validation['bits_per_byte']:.3f} | "
                     + " | ".join(f"{s['clean_share']:.0%}" for s in summaries)
                     + f" | {np.mean([s['eos_share'] for s in summaries]):.0%}"
                     + f" | {np.min([s['files_sound_share'] for s in summaries]):.0%}"
                     + f" | {row['throughput']['tokens_per_second']:,.0f}"
                     + f" | {row['throughput']['completions_per_second']:.2f} |")
    notes = []
    if ceiling is None:
        notes.append("No codec ceiling: the images are a dataset's codec streams, so the originals are already "
                     "codec output (give image files to measure it).")
    if count <= dims:
        notes.append(f"{count} images for {dims}-dimensional features: the covariance is rank-deficient "
                     "and FID is biased upward at small sample sizes; compare only numbers computed on the same "
                     "images (the paper: 5000 ImageNet, 1000 FFHQ).")
    if count < settings["num_images"]:
        notes.append(f"{settings['num_images']} images asked for, {count} usable found.")
    if images["rejected"]:
        notes.append(f"{len(images['rejected'])} input file(s) could not be used (see results.json, images.rejected).")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    lines += ["", "## Pictures", "",
              "Per image: the prompt (the rest grey), one completion per seed (ok: decodes cleanly), the original."]
    for row in results["checkpoints"]:
        lines += ["", f"### `{row['checkpoint']}`", ""]
        for label, path in row["grids"].items():
            title = "unconditional" if label == UNCONDITIONAL else f"prompt {float(label):.0%}"
            lines += [f"{title}:", "", f"![{title}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(PROG, __doc__)
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT_DIR",
                        help="litgpt pretrain checkpoint folder(s); one report row each")
    parser.add_argument("--images", required=True, metavar="PATTERN_OR_DATASET_DIR",
                        help="image files (glob or folder) or a preprocess.run dataset folder (its val split)")
    parser.add_argument("--num-images", type=int, default=Settings.num_images,
                        help="evaluation images (the paper: 5000 ImageNet val)")
    parser.add_argument("--prompt-ratio", type=float, nargs="+", default=list(PROMPT_RATIOS), metavar="R",
                        help="shares of each image given as the prompt (default: 0.25 0.5 0.75)")
    cli.deprecated(parser, "--prompt-ratios", "--prompt-ratio", type=float, nargs="+")
    parser.add_argument("--seeds", type=int, default=Settings.seeds,
                        help="sampling runs per prompt ratio; FID is mean (std) over them")
    parser.add_argument("--unconditional", type=int, default=Settings.unconditional, metavar="N",
                        help="also N samples from nothing per seed")
    parser.add_argument("--inception-weights", metavar="FILE",
                        help="the TorchScript Inception-v3 of FID, inception-2015-12-05.pt, published at "
                             f"{INCEPTION_URL} (default: ${INCEPTION_ENV})")
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size,
                        help="completions per saved chunk (a killed run redoes at most the chunks in flight; a "
                             "--worker takes whole chunks) and rows per validation-loss batch; the rows sampled at "
                             "once are --max-batch")
    parser.add_argument("--feature-batch-size", type=int, default=Settings.feature_batch_size,
                        help="images per feature-network call")
    add_sampling_arguments(parser, seed_help="chooses the images and seeds every completion")
    parser.add_argument("--dataset", help="the training dataset (default: the one each checkpoint records)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--grid-images", type=int, default=Settings.grid_images,
                        help="images shown in each picture grid")
    parser.add_argument("--worker", metavar="K/N",
                        help="sample only every N-th completion, from the K-th (one process per GPU, same --out); "
                             "then run once without --worker to write the report")
    parser.add_argument("--out", required=True)
    args = vars(parser.parse_args(argv))
    try:
        settings = Settings(checkpoints=args.pop("checkpoint"), **args)  # the sampling flags' checks
        settings.check()
    except (EvaluationError, EngineError) as error:
        raise cli.UsageError(str(error)) from None
    check_paths(settings)
    results = evaluate(settings)
    if settings.worker is not None:
        print(f"worker {settings.worker}: its share is done; when every worker is, run the same command without "
              "--worker to write the report (it reuses all finished completions)")
        return 0
    for row in results["checkpoints"]:
        cells = ", ".join(f"{ratio}: {fid_cell(summary)}" for ratio, summary in row["prompted"].items())
        print(f"{row['checkpoint']}: FID {cells}")
    if results["codec_ceiling"] is not None:
        print(f"codec ceiling: FID {results['codec_ceiling']['fid']:.2f}")
    print(f"report: {join(settings.out, 'report.md')}")
    return 0


def check_paths(settings: Settings) -> None:
    """Every path the flags name, before any model is loaded: a missing one is named as missing first."""
    cli.existing_paths(settings.checkpoints, "--checkpoint", "folder")
    for checkpoint in settings.checkpoints:
        existing_checkpoint(checkpoint)
    images = settings.images
    if not is_remote(images):  # object stores are listed by the work itself
        if not any(magic in images for magic in "*?["):
            cli.existing(images, "--images")
        elif not image_files(images):
            raise cli.UsageError(f"--images {images}: no files match")
    weights = settings.inception_weights or os.environ.get(INCEPTION_ENV)
    if not weights:
        raise cli.UsageError(NO_FEATURE_NETWORK)
    cli.existing(weights, "--inception-weights" if settings.inception_weights else f"${INCEPTION_ENV}", "file")
    if settings.dataset is not None:
        cli.existing_dir(settings.dataset, "--dataset")
    cli.writable(settings.out, "--out")


if __name__ == "__main__":
    sys.exit(main())
