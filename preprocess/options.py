"""The job's own flags, as Beam pipeline options: they sit beside --runner, --project, --region …"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from shared.codec.registry import MODALITIES

IMAGE, VIDEO = MODALITIES["image"], MODALITIES["video"]
DEFAULT_SAMPLE_SIZE = {"image": 300, "video": 24}
# Sample keys are "sample:<photo>-…" (photo stems have no "-"): crops of one photo never straddle the splits.
SAMPLE_SPLIT_GROUP = r"^sample:([^-]+)-"


class PreprocessOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("codec-LM preprocessing")
        group.add_argument("--input", action="append", metavar="PATTERN",
                           help="files to read (repeatable; local, gs://, s3:// globs). Images/videos by extension "
                                "or content, WebDataset .tar shards (img2dataset's key.jpg + key.json …) and "
                                ".parquet files with an image-bytes column. Default: the embedded sample dataset.")
        # not argparse-required: every PipelineOptions class parses every pipeline's argv (verify's too)
        group.add_argument("--output", metavar="DIR", help="dataset directory (created; replaced on rerun); required")
        group.add_argument("--modality", choices=["image", "video"], default="image",
                           help=f"image: JPEG profile, {IMAGE.vocab_size} tokens, {IMAGE.seq_len // 1024}K context; "
                                f"video: AVC profile, {VIDEO.vocab_size}, {VIDEO.seq_len // 1024}K")
        group.add_argument("--profile", help=f"codec profile (default: {IMAGE.profile} for images, "
                                             f"{VIDEO.profile} for videos)")
        group.add_argument("--vocab-size", type=int,
                           help=f"total BPE vocabulary incl. 256 bytes and BOS/EOS (default: "
                                f"{IMAGE.vocab_size} for images, {VIDEO.vocab_size} for videos)")
        group.add_argument("--bpe-sample", type=int, default=10000,
                           help="streams the BPE is learned on, chosen by content hash (default: 10000, as the paper)")
        group.add_argument("--tokenizer", metavar="FILE", help="use this tokenizer.json instead of learning one")
        group.add_argument("--seq-len", type=int, help=f"tokens per training sequence (default: "
                                                       f"{IMAGE.seq_len} images, {VIDEO.seq_len} videos)")
        group.add_argument("--val-fraction", type=float, default=0.01, help="share of documents (of groups, with --split-group) in the val split")
        group.add_argument("--split-group", metavar="REGEX",
                           help="keep related inputs in one split: documents whose source matches REGEX with the "
                                "same first group (else the whole match) share a split, e.g. '^(.*)/' keeps each "
                                "folder together. Sources that do not match are split alone. Default: each document "
                                f"alone; for the embedded sample dataset, by source photo ({SAMPLE_SPLIT_GROUP!r})")
        group.add_argument("--seed", type=int, default=0, help="seeds every choice made by hash: BPE sample, split, shard")
        group.add_argument("--shard-bytes", type=int, default=256 * 2**20, help="target shard size (default: 256 MiB)")
        group.add_argument("--shard-sequences", type=int, help="target sequences per shard (overrides --shard-bytes)")
        group.add_argument("--parquet-column", default="image",
                           help="Parquet column with the media bytes: a binary column or the Hugging Face "
                                "datasets image struct {bytes, path} (default: image)")
        group.add_argument("--sample-size", type=int,
                           help=f"items of the embedded sample dataset when no --input is given (default: "
                                f"{DEFAULT_SAMPLE_SIZE['image']} images, {DEFAULT_SAMPLE_SIZE['video']} videos)")
        group.add_argument("--max-pixels", type=int,
                           help="refuse inputs with more pixels (default: Pillow's decompression-bomb limit)")
