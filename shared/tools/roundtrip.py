"""End-to-end check of the codec layer on real media, and the project's default demo.

For every input: normalise -> encode to a stripped stream -> learn BPE -> tokenize -> detokenize ->
restore the standard file -> strict decode, then report sizes, tokens, compression against raw
pixels, fidelity (PSNR against the normalised input) and any rejected inputs with their reasons.

    python -m shared.tools.roundtrip --out out/roundtrip            # the embedded sample photos and clips
    python -m shared.tools.roundtrip --images 'photos/*.jpg' --modality image --out out/mine

Writes OUT/report.json, OUT/{image,video}/tokenizer.json, OUT/{image,video}/rejected.jsonl,
OUT/{image,video}/files/KEY.jpg|.mp4 and a contact sheet OUT/{image,video}/sheet.png.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.codec.errors import InvalidMediaError
from shared.codec.profile import CodecProfile
from shared.codec.registry import MODALITIES, get_profile
from shared.errors import CodecLmError
from shared.format.files import safe_file_name, write_atomic, write_json_atomic
from shared.format.tokenizer import ByteTokenizer
from shared.tools import cli
from shared.tools.contact_sheet import save_contact_sheet, strip

PROG = "python -m shared.tools.roundtrip"
SHEET_ITEMS = {"image": 48, "video": 8}


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def files_matching(patterns: list[str]) -> Iterator[tuple[str, bytes]]:
    for path in sorted({p for pattern in patterns for p in glob.glob(pattern, recursive=True)}):
        if Path(path).is_file():
            yield path, Path(path).read_bytes()


def run_modality(modality: str, profile: CodecProfile, items: Iterable[tuple[str, bytes]], *, vocab_size: int,
                 out: Path) -> dict:
    started = time.perf_counter()
    keys, streams, pixels, rejected = [], [], [], []
    for key, data in tqdm(items, desc=f"encode {modality}s ({profile.name})", unit=modality):
        try:
            normalised = profile.normalize(data)
            stream = profile.encode_pictures(normalised)
        except InvalidMediaError as error:
            rejected.append({"source": key, "reason": error.reason, "message": error.message})
            continue
        keys.append(key)
        streams.append(stream)
        pixels.append(normalised)
    encoded_at = time.perf_counter()
    if not streams:
        raise CodecLmError(f"no {modality} could be encoded ({len(rejected)} rejected): nothing to report")

    tokenizer = ByteTokenizer.train(streams, vocab_size, boundary=profile.token_boundary)
    tokens = tokenizer.encode_batch(streams, bos=True, eos=True)
    tokenized_at = time.perf_counter()

    files = out / "files"
    exact = clean = 0
    fidelity, sheet = [], []
    decoding = tqdm(list(zip(keys, streams, tokens, pixels)), desc=f"decode {modality}s", unit=modality)
    for key, stream, ids, reference in decoding:
        back = tokenizer.decode(ids)
        exact += back == stream
        try:
            decoded = profile.decode(back, strict=True).pictures
        except InvalidMediaError:
            continue
        clean += len(decoded) == len(reference)
        fidelity.append(np.mean([psnr(r, d) for r, d in zip(reference, decoded)]))
        write_atomic(files / safe_file_name(Path(key).stem, profile.view_suffix), profile.viewable(back))
        if len(sheet) < SHEET_ITEMS[modality]:
            sheet.append((Path(key).stem, strip(decoded)))

    tokenizer.save(out / "tokenizer.json")
    write_atomic(out / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected))
    save_contact_sheet(out / "sheet.png", sheet, columns=8, cell=profile.sheet_cell)
    stream_bytes = np.array([len(s) for s in streams])
    token_counts = np.array([len(t) for t in tokens])
    raw_bytes = np.array([sum(p.size for p in frames) for frames in pixels])
    return {
        "profile": profile.to_json(),
        "inputs": len(keys) + len(rejected),
        "encoded": len(keys),
        "rejected": dict(Counter(r["reason"] for r in rejected)),
        "header_bytes_stripped": len(profile.header),
        "stream_bytes_mean": float(stream_bytes.mean()),
        "tokens_mean": float(token_counts.mean()),
        "bytes_per_token": float(stream_bytes.sum() / (token_counts - 2).sum()),
        "compression_vs_raw_pixels": float(raw_bytes.sum() / stream_bytes.sum()),
        "vocab_size": tokenizer.vocab_size,
        "token_round_trip_exact": int(exact),
        "decoded_cleanly": int(clean),
        "psnr_db_mean": float(np.mean(fidelity)) if fidelity else None,
        "seconds": {"encode": encoded_at - started, "tokenize": tokenized_at - encoded_at,
                    "decode": time.perf_counter() - tokenized_at},
    }


def default_items(modality: str, count: int) -> Iterator[tuple[str, bytes]]:
    if modality == "image":
        from shared.samples.photos import sample_crops
        return sample_crops(count)
    from shared.samples.clips import sample_clips
    return sample_clips(count)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.parser(PROG, __doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--modality", nargs="+", choices=["image", "video"], default=["image", "video"])
    parser.add_argument("--images", nargs="+", metavar="GLOB", help="image files (default: embedded sample crops)")
    parser.add_argument("--videos", nargs="+", metavar="GLOB", help="video files (default: embedded sample clips)")
    parser.add_argument("--num-images", type=int, default=200, help="sample crops to make when --images is not given")
    parser.add_argument("--num-videos", type=int, default=6, help="sample clips to make when --videos is not given")
    parser.add_argument("--image-profile", default=MODALITIES["image"].profile, help="e.g. jpeg-256-q25, jpeg-64-q25")
    parser.add_argument("--video-profile", default=MODALITIES["video"].profile)
    parser.add_argument("--image-vocab", type=int, default=MODALITIES["image"].vocab_size, help="total vocabulary size")
    parser.add_argument("--video-vocab", type=int, default=MODALITIES["video"].vocab_size, help="total vocabulary size")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """What the command line names, before any work: profiles, input globs that match files, the output."""
    for flag in ("image_profile", "video_profile"):
        try:
            get_profile(getattr(args, flag))
        except ValueError as error:
            raise cli.UsageError(f"--{flag.replace('_', '-')}: {error}") from None
    for flag, patterns in (("--images", args.images), ("--videos", args.videos)):
        for pattern in patterns or []:
            if not any(Path(p).is_file() for p in glob.glob(pattern, recursive=True)):
                raise cli.UsageError(f"{flag} {pattern}: no such file (the pattern matches no file)")
    cli.writable(args.out, "--out")


def round_trip(args: argparse.Namespace) -> dict:
    """Every modality asked for, end to end; writes the files and OUT/report.json, returns the report."""
    report = {}
    for modality in args.modality:
        patterns = args.images if modality == "image" else args.videos
        items = files_matching(patterns) if patterns else default_items(
            modality, args.num_images if modality == "image" else args.num_videos)
        profile = get_profile(args.image_profile if modality == "image" else args.video_profile)
        vocab = args.image_vocab if modality == "image" else args.video_vocab
        report[modality] = run_modality(modality, profile, items, vocab_size=vocab, out=args.out / modality)
    write_json_atomic(args.out / "report.json", report)
    return report


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    report = round_trip(args)
    for modality, figures in report.items():
        print(f"\n{modality}s with {figures['profile']['name']}: {figures['encoded']}/{figures['inputs']} encoded, "
              f"rejected {figures['rejected'] or 'none'}")
        print(f"  stream {figures['stream_bytes_mean']:.0f} B (header of {figures['header_bytes_stripped']} B "
              f"stripped), {figures['tokens_mean']:.0f} tokens with BOS/EOS, {figures['bytes_per_token']:.2f} B/token "
              f"(vocab {figures['vocab_size']}), {figures['compression_vs_raw_pixels']:.1f}x smaller than raw pixels")
        print(f"  token round trip exact {figures['token_round_trip_exact']}/{figures['encoded']}, "
              f"decoded cleanly {figures['decoded_cleanly']}/{figures['encoded']}, "
              f"PSNR {figures['psnr_db_mean']:.1f} dB")
        print(f"  sheet: {args.out / modality / 'sheet.png'}")
    print(f"\nreport: {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
