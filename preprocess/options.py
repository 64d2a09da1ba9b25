"""The job's own flags, as Beam pipeline options: they sit beside --runner, --project, --region …, spelled
``--snake_case`` like Beam's own."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from shared.codec.registry import MODALITIES
from shared.tools import cli

IMAGE, VIDEO = MODALITIES["image"], MODALITIES["video"]
DEFAULT_SAMPLE_SIZE = {"image": 300, "video": 24}
# Sample keys are "sample:<photo>-…" (photo stems have no "-"): crops of one photo never straddle the splits.
SAMPLE_SPLIT_GROUP = r"^sample:([^-]+)-"
# The spellings of the release before: they keep working for one release, with a warning.
RENAMED = {f"--{name.replace('_', '-')}": f"--{name}" for name in (
    "vocab_size", "bpe_sample", "seq_len", "val_fraction", "split_group", "shard_bytes", "shard_sequences",
    "parquet_column", "sample_size", "max_pixels")}


def renamed_flags(argv: list[str], prog: str) -> list[str]:
    """``argv`` with the old spellings of renamed flags replaced by the new ones, warning once per flag.

    Done on the command line before Beam sees it, not by parser aliases: Beam parses the flags again for
    every options view and in every worker, which would repeat the warning.
    """
    renamed, warned = [], set()
    for token in argv:
        name, equals, value = token.partition("=")
        new = RENAMED.get(name)
        if new is None:
            renamed.append(token)
            continue
        if name not in warned:
            warned.add(name)
            cli.warn_deprecated(prog, name, new)
        renamed.append(new + equals + value)
    return renamed


class PreprocessOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("codec-LM preprocessing")
        group.add_argument("--input", action="append", metavar="PATTERN",
                           help="files to read (repeatable; local, gs://, s3:// globs). Images/videos by extension "
                                "or content, WebDataset .tar shards (img2dataset's key.jpg + key.json …) and "
                                ".parquet files with an image-bytes column. Default: the embedded sample dataset.")
        # not argparse-required: every PipelineOptions class parses every pipeline's argv (verify's too)
        group.add_argument("--output", metavar="DIR",
                           help="dataset folder (created); required. A rerun with the same inputs and flags "
                                "continues; a folder holding another dataset or other files is refused")
        group.add_argument("--overwrite", action="store_true",
                           help="replace the dataset --output holds, made with other inputs or flags; files the job "
                                "did not write are kept")
        group.add_argument("--modality", choices=["image", "video"], default="image",
                           help=f"image: JPEG profile, {IMAGE.vocab_size} tokens, {IMAGE.seq_len // 1024}K context; "
                                f"video: AVC profile, {VIDEO.vocab_size}, {VIDEO.seq_len // 1024}K")
        group.add_argument("--profile", help=f"codec profile (default: {IMAGE.profile} for images, "
                                             f"{VIDEO.profile} for videos)")
        group.add_argument("--vocab_size", type=int,
                           help=f"total BPE vocabulary incl. 256 bytes and BOS/EOS (default: "
                                f"{IMAGE.vocab_size} for images, {VIDEO.vocab_size} for videos)")
        group.add_argument("--bpe_sample", type=int, default=10000,
                           help="streams the BPE is learned on, chosen by content hash (default: 10000, as the paper)")
        group.add_argument("--tokenizer", metavar="FILE", help="use this tokenizer.json instead of learning one")
        group.add_argument("--seq_len", type=int, help=f"tokens per training sequence (default: "
                                                       f"{IMAGE.seq_len} images, {VIDEO.seq_len} videos)")
        group.add_argument("--val_fraction", type=float, default=0.01,
                           help="share of documents (of groups, with --split_group) in the val split")
        group.add_argument("--split_group", metavar="REGEX",
                           help="keep related inputs in one split: documents whose source matches REGEX with the "
                                "same first group (else the whole match) share a split, e.g. '^(.*)/' keeps each "
                                "folder together. Sources that do not match are split alone. Default: each document "
                                f"alone; for the embedded sample dataset, by source photo ({SAMPLE_SPLIT_GROUP!r})")
        group.add_argument("--seed", type=int, default=0,
                           help="seeds every choice made by hash: BPE sample, split, shard")
        group.add_argument("--shard_bytes", type=int, default=256 * 2**20, help="target shard size (default: 256 MiB)")
        group.add_argument("--shard_sequences", type=int, help="target sequences per shard (overrides --shard_bytes)")
        group.add_argument("--parquet_column", default="image",
                           help="Parquet column with the media bytes: a binary column or the Hugging Face "
                                "datasets image struct {bytes, path} (default: image)")
        group.add_argument("--sample_size", type=int,
                           help=f"items of the embedded sample dataset when no --input is given (default: "
                                f"{DEFAULT_SAMPLE_SIZE['image']} images, {DEFAULT_SAMPLE_SIZE['video']} videos)")
        group.add_argument("--max_pixels", type=int,
                           help="refuse inputs with more pixels (default: Pillow's decompression-bomb limit)")
