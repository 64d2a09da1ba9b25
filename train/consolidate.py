"""Write a sharded checkpoint's model as one ``lit_model.pth``, for LitGPT's own tools.

    python -m train.consolidate --checkpoint out/jpeg7b/step-00005000 [out/jpeg7b/step-00010000 ...]

A run on several processes saves each checkpoint as shards (``CHECKPOINT/sharded/``, one file per rank);
its ``final/`` gets a consolidated ``lit_model.pth`` by itself. This does the same for any other
checkpoint: the model weights (not the optimizer state) gathered in this one process, written
atomically beside the shards. ``train.generate``, ``train.evaluate`` and ``train.export`` read sharded
checkpoints without it; ``litgpt generate``, ``litgpt convert_from_litgpt`` and the like need it. Memory:
the whole model, once (~13 GB for the 7B configs in bf16). (Checkpoint folders given as plain arguments, the
old spelling, still work, with a warning.)
"""

from __future__ import annotations

import argparse
import sys

from shared.format.files import size
from shared.tools import cli
from train.checkpoint import WEIGHTS, child, consolidate, existing_checkpoint, is_file, place

PROG = "python -m train.consolidate"


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(PROG, __doc__)
    parser.add_argument("--checkpoint", nargs="+", type=place, default=[], metavar="DIR",
                        help="checkpoint folders holding sharded/")
    parser.add_argument("old_checkpoints", nargs="*", type=place, help=argparse.SUPPRESS)  # the old spelling
    parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {WEIGHTS}")
    args = parser.parse_args(argv)
    if args.old_checkpoints:
        print(f"{PROG}: warning: checkpoint folders as plain arguments are deprecated and go in the next release; "
              "use --checkpoint DIR [DIR ...]", file=sys.stderr)
    checkpoints = [*args.checkpoint, *args.old_checkpoints]
    if not checkpoints:
        raise cli.UsageError("--checkpoint DIR [DIR ...] is required")
    cli.existing_paths([str(c) for c in checkpoints], "--checkpoint", "folder")  # every missing one first
    for checkpoint in checkpoints:
        existing_checkpoint(checkpoint)
        if is_file(child(checkpoint, WEIGHTS)) and not args.overwrite:
            raise cli.UsageError(f"{child(checkpoint, WEIGHTS)} exists; pass --overwrite to write it again from the "
                                 "shards")
        cli.writable(str(child(checkpoint, WEIGHTS)), "--checkpoint", folder=False)  # (a store: the right to write)
    for checkpoint in checkpoints:
        written = consolidate(checkpoint)
        print(f"{written}: {size(str(written)) / 2**20:,.1f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
