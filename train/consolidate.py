"""Write a sharded checkpoint's model as one ``lit_model.pth``, for LitGPT's own tools.

    python -m train.consolidate out/jpeg7b/step-00005000 [out/jpeg7b/step-00010000 ...]

A run on several processes saves each checkpoint as shards (``CHECKPOINT/sharded/``, one file per rank);
its ``final/`` gets a consolidated ``lit_model.pth`` by itself. This does the same for any other
checkpoint: the model weights (not the optimizer state) gathered in this one process, written
atomically beside the shards. ``train.generate``, ``train.evaluate`` and ``train.export`` read sharded
checkpoints without it; ``litgpt generate``, ``litgpt convert_from_litgpt`` and the like need it. Memory:
the whole model, once (~13 GB for the 7B configs in bf16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.checkpoint import WEIGHTS, consolidate, weights_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.consolidate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders holding sharded/")
    parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {WEIGHTS}")
    args = parser.parse_args(argv)
    for checkpoint in args.checkpoints:
        if not weights_files(checkpoint):
            parser.error(f"{checkpoint} is not a checkpoint folder (no {WEIGHTS}, no sharded/ with .metadata)")
        if (checkpoint / WEIGHTS).exists() and not args.overwrite:
            parser.error(f"{checkpoint / WEIGHTS} exists; pass --overwrite to write it again from the shards")
    for checkpoint in args.checkpoints:
        written = consolidate(checkpoint)
        print(f"{written}: {written.stat().st_size / 2**20:,.1f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
