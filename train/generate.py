"""Sampling images and videos from a trained Jpeg-LM / Avc-LM: prompted completion or from nothing.

    python -m train.generate --checkpoint out/jpeg-tiny/final --prompt photo.png --prompt-ratio 0.5 \\
        --num-samples 8 --out out/samples
    python -m train.generate --checkpoint out/jpeg-tiny/final --unconditional 16 --out out/samples
    python -m train.generate --checkpoint out/avc-tiny/final --prompt clip.mp4 --prompt-frames 3 --out out/samples
    python -m train.generate --checkpoint out/jpeg-tiny/final --prompt-val 4 --out out/samples   # held-out images

The model comes from a `litgpt pretrain` checkpoint folder; the tokenizer and codec profile from the
dataset it was trained on (recorded in the checkpoint's hyperparameters.yaml, or --dataset). An image
prompt is normalised and encoded with the profile and cut after the first ``--prompt-ratio`` of its units:
an image's MCUs in whole restart intervals (at 256x256 the authors' cut after the ``int(32 * ratio)``-th
FF D7), a video's frames; ``--prompt-frames N`` gives exactly N units instead (frames of a video).
Every sample of every prompt goes through one sampling engine (``train.engine``: continuous batching over
``--max-batch`` KV-cache slots, by default as many as free memory holds) with temperature / top-k / top-p
(defaults as the authors' release: 1.0, 50, 1.0); sample i of a prompt is seeded --seed + i, and its
sample does not depend on the batching. A prompt's files are written as soon as its last sample is done.

With ``--constrained`` (the default) every sampled token must keep the stream valid: for JPEG the
Huffman-level grammar of ``shared.codec.jpeg.grammar`` (every MCU entropy-decodes, restart markers in
order, EOS only after the last MCU and forced there); for AVC the NAL-unit grammar of
``shared.codec.avc.grammar``: each profile's ``grammar()``. Only the drawn token is judged, and a
forbidden one drawn again (``train.engine.judge_draws``).

Every file written is whole and strictly valid, however its sample ended (EOS, the token budget, free
sampling's garbage): the stream's valid part is kept and the rest filled (JPEG: grey MCUs; AVC: the frame
it stops inside finished with skipped or flat macroblocks, ``shared.codec.avc.finish``), and the file is
judged from its own bytes (``check_viewable``). Per prompt OUT/NAME/ holds original.jpg (the prompt image
after the codec), prompt.jpg (the part the model saw, the rest grey), sample-000.jpg …, sheet.png (filled
units tinted magenta) and samples.json (tokens generated, stopped_by, units written, filled and dropped,
clean as sampled or not, the file's verdict); videos likewise as .mp4 with frame strips. NAME is the prompt
file's name without its suffix, val-KEY for --prompt-val, unconditional for --unconditional; a name taken
already (two prompts named alike in different folders, a prompt named unconditional) gets -2, -3 … in the
order given, so no prompt's files overwrite another's.

Progress goes to stderr as the tokens come: tokens/s, an ETA and samples done. On a terminal it is a tqdm bar;
in a log or a pipe a plain line every 30 seconds (TQDM_MININTERVAL=S changes it) and one at the end;
TQDM_DISABLE=1 turns it off. The ETA is an upper bound: samples that stop at EOS take their unused tokens off.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.codec.errors import InvalidMediaError
from shared.codec.profile import CodecProfile, Decoded, file_problems, view
from shared.errors import CodecLmError
from shared.format.dataset import Dataset
from shared.format.files import safe_file_name, write_atomic, write_json_atomic
from shared.tools import cli
from shared.tools.contact_sheet import mark_filled, save_contact_sheet, strip
from train.checkpoint import Where, existing_checkpoint, load_for_sampling, load_model_config, open_dataset, place
from train.engine import (
    Engine,
    EngineError,
    Job,
    Sample,
    SamplingProgress,
    SamplingSettings,
    add_sampling_arguments,
)
from train.engine import sample_rows as sample_rows  # the old home of the engine's static call

PROG = "python -m train.generate"


class GenerateError(CodecLmError):
    """Prompts or flags that cannot be sampled from (found before any sampling); the CLI prints it as one line."""


# ---- files, facts and pictures -----------------------------------------------------------------
def write_outputs(out: Path, profile: CodecProfile, samples: list[Sample], *, original: bytes | None,
                  prompt: bytes | None, settings: dict[str, Any]) -> dict[str, Any]:
    """Per sample a whole, strictly valid file (the stream's valid part, the rest filled: ``profile.decode``),
    checked from the written bytes (``check_viewable``); samples.json; sheet.png, filled units tinted."""
    suffix = profile.view_suffix
    sheet: list[tuple[str, list[np.ndarray]]] = []
    record: dict[str, Any] = {"settings": settings, "samples": []}
    for label, stream in (("original", original), ("prompt", prompt)):
        if stream is not None:
            shown = view(profile, stream)
            if shown.file is not None:
                write_atomic(out / f"{label}{suffix}", shown.file)
            sheet.append((label, marked_pictures(shown.decoded)))
            record[label] = {"bytes": len(stream), **shown.decoded.facts}
    valid = total = 0
    for index, item in enumerate(samples):
        shown = view(profile, item.stream)
        decoded = shown.decoded
        name = f"sample-{index:03d}{suffix}"
        problems = file_problems(profile, shown.file)
        if shown.file is not None:
            write_atomic(out / name, shown.file)
        if problems:  # the repair's promise is broken: say so loudly, keep the sample for a bug report
            print(f"warning: {out / name} fails the strict check: {problems[0]}", file=sys.stderr)
        record["samples"].append({"file": name if shown.file is not None else None, "tokens_generated": item.tokens,
                                  "stopped_by": item.stopped, "stream_bytes": len(item.stream), **decoded.facts,
                                  "file_strictly_valid": not problems, "file_problems": list(problems[:3])})
        valid, total = valid + decoded.valid_units, total + decoded.total_units
        filled = sum(int(mask.any()) for mask in decoded.filled)
        sheet.append((f"{index:03d}{' ok' if decoded.complete else ' filled' if filled else ' bad'}",
                      marked_pictures(decoded) or [np.zeros((8, 8, 3), np.uint8)]))
    save_contact_sheet(out / "sheet.png", [(label, strip(pictures)) for label, pictures in sheet], columns=8,
                       cell=profile.sheet_cell)
    seconds = sum(s.seconds for s in samples)  # each sample's share of the engine's time
    rows = record["samples"]
    record["summary"] = {
        "samples": len(samples),
        "decoded_cleanly": sum(r["clean"] for r in rows),  # whole and valid as the model wrote them
        "files_strictly_valid": sum(r["file_strictly_valid"] for r in rows),
        "stopped_by_eos": sum(r["stopped_by"] == "eos" for r in rows),
        "tokens_per_second": sum(s.tokens for s in samples) / seconds if seconds else 0.0,
        f"{profile.unit.lower()}s_valid_share": valid / max(1, total),
        **fill_counts(rows),
    }
    # AVC: the strict check's counts of every cleanly parsed frame and macroblock (not only leading ones), of
    # all announced and of those actually written (a sample cut by --max-new-tokens stops inside a frame)
    checked = [r for r in rows if "macroblocks_announced" in r]
    if checked:
        record["summary"] |= avc_clean_shares(checked)
    write_json_atomic(out / "samples.json", record)
    return record


def marked_pictures(decoded: Decoded) -> list[np.ndarray]:
    """The decoded pictures with their filled units tinted (``mark_filled``)."""
    return [mark_filled(picture, mask) for picture, mask in zip(decoded.pictures, decoded.filled)]


def fill_counts(facts: list[dict[str, Any]]) -> dict[str, int]:
    """Totals of the units (MCUs, macroblocks) samples wrote, and those their files filled or dropped."""
    keys = [key for key in facts[0] if key.endswith(("_written", "_filled", "_dropped"))] if facts else []
    return {key: sum(f[key] for f in facts) for key in keys}


def avc_clean_shares(facts: list[dict[str, Any]]) -> dict[str, float]:
    """Clean shares of frames and macroblocks (AVC decode facts): of all the samples announce, and of the
    whole frames and the macroblocks they actually wrote (what a token budget cut short is left out)."""
    def share(clean: str, of: str) -> float:
        return sum(f[clean] for f in facts) / max(1, sum(f[of] for f in facts))
    return {"frames_clean_share": share("frames_clean", "frames_announced"),
            "macroblocks_clean_share": share("macroblocks_clean", "macroblocks_announced"),
            "whole_frames_clean_share": share("frames_clean", "frames_whole"),
            "written_macroblocks_clean_share": share("macroblocks_clean", "macroblocks_written")}


def val_prompts(data: Dataset, count: int) -> list[tuple[str, bytes]]:
    """The first ``count`` complete documents of the dataset's val split: images the model has not trained on."""
    rows = data.rows([("split", "=", "val"), ("complete", "=", True)], limit=count) if count else []
    return [(f"val-{row['key'][:12]}", stream) for row, _, stream in data.document_streams(rows)]


@dataclass
class GenerateSettings(SamplingSettings):
    checkpoint: Where  # a litgpt pretrain checkpoint folder (local, gs://, s3://)
    out: Path
    prompts: list[Path] = field(default_factory=list)  # media files to complete
    unconditional: int = 0  # also N samples from BOS alone
    prompt_val: int = 0  # also prompt with the first N documents of the training dataset's val split
    num_samples: int = 4  # per prompt
    prompt_ratio: float = 0.5  # share of the prompt media's units (MCUs, frames) the model is given
    prompt_frames: int | None = None  # exactly this many units instead (frames of a video)
    dataset: str | None = None  # default: the one the checkpoint records
    device: str | None = None  # default: cuda when available

    def unconditional_count(self) -> int:
        """``unconditional`` as a count; ``True``, the old switch, still means --num-samples of them."""
        if isinstance(self.unconditional, bool):
            if self.unconditional:
                warnings.warn("GenerateSettings(unconditional=True) is deprecated and goes in the next release; "
                              "give the count: unconditional=N", DeprecationWarning, stacklevel=4)
            return self.num_samples if self.unconditional else 0
        return self.unconditional


def prompt_prefix(profile: CodecProfile, stream: bytes, settings: GenerateSettings) -> bytes:
    """The part of an encoded prompt the model is given."""
    if settings.prompt_frames is not None:
        return profile.cut_after_units(stream, settings.prompt_frames)
    return profile.prompt(stream, settings.prompt_ratio)


@dataclass
class PromptJob:
    name: str  # the folder under --out
    whole: bytes | None  # the whole media stream; None: unconditional
    prefix: bytes  # what the model is given
    count: int  # samples, row i seeded --seed + i
    prompt_tokens: int = 1  # the prefix's tokens with BOS (set by prompt_jobs; unconditional: BOS alone)


def prompt_jobs(settings: GenerateSettings, data: Dataset, context: int) -> list[PromptJob]:
    """Every prompt encoded and cut, checked to leave room in the model's ``context``: before any sampling."""
    profile, tokenizer = data.profile, data.tokenizer
    jobs: list[PromptJob] = []
    for source in settings.prompts:
        try:
            whole = profile.encode(Path(source).read_bytes())
            jobs.append(PromptJob(safe_file_name(Path(source).stem, limit=80, fallback="prompt"), whole,
                                  prompt_prefix(profile, whole, settings), settings.num_samples))
        except (InvalidMediaError, ValueError) as error:
            raise GenerateError(f"--prompt {source}: {error}") from None
    for name, whole in val_prompts(data, settings.prompt_val):
        try:
            jobs.append(PromptJob(name, whole, prompt_prefix(profile, whole, settings), settings.num_samples))
        except ValueError as error:  # e.g. --prompt-frames N that is no whole restart interval of an image
            raise GenerateError(f"--prompt-val: {error}") from None
    for job in jobs:  # a prompt that fills the context is refused
        job.prompt_tokens = length = len(tokenizer.encode(job.prefix, bos=True))
        if length >= context:
            given = f"--prompt-frames {settings.prompt_frames}" if settings.prompt_frames is not None else \
                f"--prompt-ratio {settings.prompt_ratio}"
            raise GenerateError(f"the prompt of {job.name} ({given}) is {length} tokens and leaves no room in the "
                                f"model's {context}-token context: give fewer {profile.unit}s with --prompt-frames N "
                                "or a smaller --prompt-ratio")
    unconditional = settings.unconditional_count()
    if unconditional:
        jobs.append(PromptJob("unconditional", None, b"", unconditional))
    unique_names(jobs)
    return jobs


def unique_names(jobs: list[PromptJob]) -> None:
    """Every job's folder name unique: a name taken already gets -2, -3 … in the order given, the unconditional
    samples keep ``unconditional``. Compared case-blind: macOS' and Windows' file systems are."""
    taken = {job.name.casefold() for job in jobs if job.whole is None}
    for job in jobs:
        if job.whole is None:
            continue
        name, number = job.name, 1
        while name.casefold() in taken:
            number += 1
            name = f"{job.name}-{number}"
        taken.add(name.casefold())
        job.name = name


def generate(settings: GenerateSettings) -> dict[str, Any]:
    """Sample every prompt's samples into ``settings.out``, all through one engine (continuous batching over
    ``settings.max_batch`` slots), writing a prompt's files as soon as its last sample is done; returns each
    prompt's summary by name. Prompts, slots and memory are checked before any sampling."""
    checkpoint = place(settings.checkpoint)
    data = open_dataset(checkpoint, settings.dataset)
    profile, tokenizer = data.profile, data.tokenizer
    context = load_model_config(checkpoint).block_size
    prompts = prompt_jobs(settings, data, context)
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sampler = load_for_sampling(checkpoint, data=data, device=device, constrained=settings.constrained)
    recorded = {"checkpoint": str(settings.checkpoint), "profile": profile.name, "num_samples": settings.num_samples,
                "temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p,
                "seed": settings.seed, "constrained": settings.constrained,
                "max_new_tokens": settings.max_new_tokens or context,
                "prompt_ratio": settings.prompt_ratio, "prompt_frames": settings.prompt_frames,
                "unconditional": sum(p.count for p in prompts if p.whole is None)}
    owner = [number for number, p in enumerate(prompts) for _ in range(p.count)]  # engine job -> prompt
    jobs = [Job(p.prefix, settings.seed + row) for p in prompts for row in range(p.count)]  # row i: seed + i
    first = np.cumsum([0] + [p.count for p in prompts])
    engine = Engine(sampler.model, tokenizer, jobs, settings=settings, constraint=sampler.constraint)
    done: dict[int, Sample] = {}
    results = {}
    out = Path(settings.out)
    with SamplingProgress(sum(engine.budgets), len(jobs)) as progress:
        for index, sample in engine.run(progress):
            done[index] = sample
            number = owner[index]
            rows = range(first[number], first[number + 1])
            if not all(row in done for row in rows):
                continue
            job = prompts[number]
            record = write_outputs(out / job.name, profile, [done.pop(row) for row in rows], original=job.whole,
                                   prompt=job.prefix if job.whole is not None else None, settings=recorded)
            summary = results[job.name] = record["summary"]
            progress.write(f"{out / job.name}: {summary['decoded_cleanly']}/{job.count} decode cleanly, "
                           f"{summary['stopped_by_eos']} stopped by EOS, {summary['tokens_per_second']:.0f} tokens/s; "
                           f"sheet: {out / job.name / 'sheet.png'}")
    return {p.name: results[p.name] for p in prompts}


# ---- the command line ----------------------------------------------------------------------------
BARE = -1  # --unconditional without a count (deprecated): --num-samples of them


class CountOrSwitch(argparse.Action):
    """``--unconditional N``; the old switch, ``--unconditional`` alone, still works for a release, warned."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if values is None:
            print(f"{parser.prog}: warning: {option_string} without a count is deprecated and goes in the next "
                  f"release; use {option_string} N (N samples from BOS alone; it meant --num-samples of them)",
                  file=sys.stderr)
            values = BARE
        elif values < 0:
            parser.error(f"{option_string} N: N must be >= 0, not {values}")
        setattr(namespace, self.dest, values)


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(PROG, __doc__)
    parser.add_argument("--checkpoint", type=place, required=True, help="a litgpt pretrain checkpoint folder")
    parser.add_argument("--prompt", dest="prompts", type=Path, nargs="+", default=[], metavar="FILE",
                        help="images (or videos) to complete; each one's files go to OUT/NAME (its file name "
                             "without the suffix; a name given twice, or 'unconditional', gets -2, -3 …)")
    parser.add_argument("--prompt-val", type=int, default=GenerateSettings.prompt_val, metavar="N",
                        help="also prompt with the first N documents of the training dataset's val split")
    parser.add_argument("--unconditional", type=int, nargs="?", action=CountOrSwitch,
                        default=GenerateSettings.unconditional, metavar="N",
                        help="also N samples from BOS alone")
    parser.add_argument("--prompt-ratio", type=float, default=GenerateSettings.prompt_ratio,
                        help="share of an image's MCUs (a video's frames) the model is given")
    parser.add_argument("--prompt-frames", type=int, default=GenerateSettings.prompt_frames, metavar="N",
                        help="give the model exactly N units instead: frames of a video (MCUs of an image)")
    parser.add_argument("--num-samples", type=int, default=GenerateSettings.num_samples,
                        help="samples per prompt (sample i of each seeded --seed + i)")
    add_sampling_arguments(parser)
    parser.add_argument("--dataset", help="the training dataset (default: the one the checkpoint records)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.unconditional == BARE:
        args.unconditional = args.num_samples
    if not args.prompts and not args.unconditional and not args.prompt_val:
        raise cli.UsageError("give --prompt FILE …, --prompt-val N and/or --unconditional N")
    if not 0.0 <= args.prompt_ratio <= 1.0:
        raise cli.UsageError(f"--prompt-ratio must be in [0, 1], not {args.prompt_ratio}")
    if args.num_samples < 1 or args.prompt_val < 0:
        raise cli.UsageError("--num-samples must be >= 1 and --prompt-val >= 0")
    # paths before any work, a missing one named as missing first
    existing_checkpoint(args.checkpoint)
    if args.dataset is not None:
        cli.existing_dir(args.dataset, "--dataset")
    cli.existing_paths(args.prompts, "--prompt")
    cli.writable(args.out, "--out")
    try:
        generate(GenerateSettings(**vars(args)))
    except (GenerateError, EngineError) as error:  # prompts, slots, memory: found before any sampling
        raise cli.UsageError(str(error)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
