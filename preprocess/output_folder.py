"""What ``--output`` holds before a run: nothing, this job's own earlier run, or something not to replace.

A rerun with the same inputs and flags goes on as before (a killed run's files are rewritten, the manifest
last). A finished dataset made with other inputs or flags, or a folder that is not a dataset and holds
files this job never writes, is refused unless ``--overwrite``; even then the job replaces and removes
only files of its own (``OWN_FILE``), and whatever else is there stays untouched.
"Same inputs and flags" is what the manifest already records under ``arguments``: the resolved values
of every flag that shapes the dataset (input patterns, profile, vocabulary, sequence length, split …).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from fsspec.core import url_to_fs

from shared.format.files import delete, exists, is_remote, join, read_bytes
from shared.format.shards import DOCUMENTS, INPUTS, MANIFEST, REJECTED, SPLITS, STAGING, TOKENIZER
from shared.tools.cli import WRITE_CHECK_PREFIX, UsageError

_SPLIT = "|".join(SPLITS)
# Every file the job writes, relative to --output: the index files, the shards, the staging folder, the
# temporary name of a write that never finished (shared.format.files.open_atomic) and cli.writable's probe.
OWN_FILE = re.compile(
    "|".join(re.escape(name) for name in (MANIFEST, TOKENIZER, DOCUMENTS, REJECTED, INPUTS))
    + rf"|({_SPLIT})/shard-\d{{6,}}\.tar"
    + rf"|{re.escape(STAGING)}/.+"
    + rf"|(({_SPLIT})/)?\.[^/]+\.tmp-[0-9a-f]+"
    + rf"|{re.escape(WRITE_CHECK_PREFIX)}[^/]+"
)
# manifest "arguments" key -> the flag that sets it, to name a difference
FLAG_OF = {
    "modality": "--modality", "inputs": "--input", "profile": "--profile", "vocab_size": "--vocab_size",
    "bpe_sample": "--bpe_sample", "tokenizer": "--tokenizer", "seq_len": "--seq_len", "val_fraction": "--val_fraction",
    "split_group": "--split_group", "seed": "--seed",
    "sequences_per_shard": "sequences per shard (--shard_sequences, or --shard_bytes and --seq_len)",
    "parquet_column": "--parquet_column", "max_pixels": "--max_pixels",
}


def is_own_file(relative: str) -> bool:
    return OWN_FILE.fullmatch(relative) is not None


def files_under(folder: str) -> list[str]:
    """Every file under ``folder`` (hidden ones too), relative to it; none when it does not exist."""
    if not is_remote(folder):
        return sorted(os.path.relpath(os.path.join(where, name), folder)
                      for where, _, names in os.walk(folder) for name in names)
    filesystem, target = url_to_fs(folder)
    inside = target.rstrip("/") + "/"
    return sorted(path.removeprefix(inside) for path in filesystem.find(target) if path.startswith(inside))


def shown(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "(none)"
    return str(value)


def differences(recorded: dict[str, Any], arguments: dict[str, Any]) -> list[str]:
    """``--flag: X there, Y now`` for each argument the recorded dataset was made with otherwise."""
    found = []
    for key in [*arguments, *(k for k in recorded if k not in arguments)]:
        there, now = recorded.get(key, "(not recorded)"), arguments.get(key, "(not used)")
        if there == now:
            continue
        flag = FLAG_OF.get(key, key)
        if key == "inputs" and isinstance(there, str) and isinstance(now, str):
            flag = "--sample_size"  # both the embedded sample dataset, of another size
        found.append(f"{flag}: {shown(there)} there, {shown(now)} now")
    return found


def check_output_folder(output: str, arguments: dict[str, Any], overwrite: bool) -> None:
    """Refuse (a usage error) an ``--output`` this run would wrongly replace or mix with other files: a
    dataset made with other inputs or flags, or a folder that is not a dataset and holds files this job
    does not write. A dataset with the same inputs and flags, or a killed run of ours, goes on."""
    if overwrite:
        return
    if not exists(join(output, MANIFEST)):
        foreign = [name for name in files_under(output) if not is_own_file(name)]
        if foreign:
            raise UsageError(f"--output {output} is not a dataset and holds {len(foreign)} "
                             f"file{'s' if len(foreign) != 1 else ''} this job does not write (first: {foreign[0]}); "
                             "choose a new or empty folder, or pass --overwrite to write the dataset beside them "
                             "(they are kept)")
        return  # empty, or what a killed run of ours left: rewritten
    try:
        recorded = json.loads(read_bytes(join(output, MANIFEST)))["arguments"]
        if not isinstance(recorded, dict):
            raise TypeError("arguments is not a mapping")
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"--output {output} holds a {MANIFEST} whose inputs and flags cannot be read ({error}); "
                         "pass --overwrite to replace that dataset, or choose another --output") from None
    changed = differences(recorded, arguments)
    if changed:
        raise UsageError(f"--output {output} holds a dataset made with other inputs or flags ("
                         + "; ".join(changed) + "); pass --overwrite to replace it, or choose another --output")


def clear_previous_run(output: str) -> None:
    """The old manifest goes first, so a crash never looks complete; the staging folder is the old run's."""
    delete([join(output, MANIFEST), join(output, STAGING)])
