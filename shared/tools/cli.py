"""The one convention of the project's own commands: how they fail, exit, warn and check paths first.

The Beam job (``preprocess.run``) follows Beam's pipeline options and ``train.pretrain`` LitGPT's
``setup()``; both still print errors and exit the way this module does. docs/cli.md is the user's page.

- Library code raises typed errors (``shared.errors.CodecLmError`` and its kin); only ``main()`` exits.
- Exit statuses: 0 done; 1 the work failed, or found problems (``codec-shards verify``); 2 a usage error:
  a wrong flag, or a path a flag names that is missing or cannot be written, found before any work.
  130: interrupted (Ctrl-C).
- Every error is one line on stderr: ``PROG: error: message``, PROG being what the user typed
  (``python -m train.generate``, ``codec-shards``), as argparse prints its own usage errors.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.errors import CodecLmError
from shared.format.files import exists, is_remote
from shared.format.stores import WRITE_CHECK_PREFIX, StoreError, check_store, client_errors

USAGE, FAILURE, INTERRUPTED = 2, 1, 130


class UsageError(CodecLmError):
    """The command line cannot work as given (exit status 2): a flag's value, or a path it names."""


# What a command's work may fail with, as a one-line error rather than a traceback: the project's typed
# errors, a file the system would not open or write, a value a library refused; and an object store's
# client giving up (``client_errors()``, looked up when one is raised).
FAILURES = (CodecLmError, OSError, ValueError)


def command(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Make ``main(argv)`` follow the convention: typed errors -> ``PROG: error: …`` and the exit status."""
    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            # gcsfs logs a traceback when a request runs out of retries, then raises: reported once, as one line
            logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
            try:
                return main(*args, **kwargs) or 0
            except UsageError as error:
                return report(prog, error, USAGE)
            except BrokenPipeError:  # `… | head`: the reader left, nothing to say
                sys.stderr.close()
                return 0
            except (*FAILURES, *client_errors()) as error:
                return report(prog, error, FAILURE)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return INTERRUPTED
        return run
    return wrap


def report(prog: str, error: BaseException | str, status: int) -> int:
    message = str(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        message = f"{error.filename}: {error.strerror}"  # not "[Errno 2] …: '/path'"
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def parser(prog: str, doc: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """An argparse parser that prints the module's docstring as its help, examples included."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   **kwargs)


# ---- paths, checked before any work ---------------------------------------------------------------
def store_ready(path: str | os.PathLike[str], flag: str, *, write: bool = False) -> None:
    """An object-store path's credentials, bucket and (``write``) write access, or a usage error naming the
    fix (``shared.format.stores``); a local path is not checked here."""
    try:
        check_store(str(path), flag=flag, write=write)
    except StoreError as error:
        raise UsageError(str(error)) from None


def existing(path: str | os.PathLike[str], flag: str, what: str = "file or folder") -> Path | str:
    """``path`` exists, or a usage error naming it. Returns a local path as a ``Path``, a remote one as
    given (a ``Path`` would fold ``gs://`` into ``gs:/``)."""
    if is_remote(path):
        store_ready(path, flag)
        if not exists(path):
            raise UsageError(f"{flag} {path}: no such {what}")
        return str(path)
    if not Path(path).exists():
        raise UsageError(f"{flag} {path}: no such {what}")
    return Path(path)


def existing_dir(path: str | os.PathLike[str], flag: str) -> Path | str:
    found = existing(path, flag, "folder")
    if not is_remote(path) and not Path(found).is_dir():
        raise UsageError(f"{flag} {path}: not a folder")
    return found


def existing_paths(paths: Sequence[str | os.PathLike[str]], flag: str, what: str = "file") -> None:
    """Every path exists, or one usage error naming each missing one."""
    for path in paths:
        if is_remote(path):
            store_ready(path, flag)
    absent = [str(path) for path in paths if not exists(path)]
    if len(absent) == 1:
        existing(absent[0], flag, what)
    elif absent:
        raise UsageError(f"{flag} {' '.join(absent)}: no such {what}s")


def writable(path: str | os.PathLike[str], flag: str, folder: bool = True) -> None:
    """The folder ``path`` (or the file ``path``, ``folder=False``) can be made and written, tried for real
    before any work (the folder is created; a probe file is written and removed), or a usage error.
    On an object store: credentials, the bucket, and a probe object in the folder (there are no folders to
    make)."""
    if is_remote(path):
        store_ready(path if folder else str(path).rsplit("/", 1)[0], flag, write=True)
        return
    where = Path(path) if folder else Path(path).absolute().parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=WRITE_CHECK_PREFIX):
            pass
    except OSError as error:
        raise UsageError(f"{flag} {path}: cannot be written ({error.strerror or error})") from None


# ---- renamed flags keep working for one release ---------------------------------------------------
def warn_deprecated(prog: str, old: str | None, new: str) -> None:
    print(f"{prog}: warning: {old} is deprecated and goes in the next release; use {new}", file=sys.stderr)


class _Deprecated(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warn_deprecated(parser.prog, option_string, self.new)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated(parser: argparse.ArgumentParser, old: str, new: str, dest: str | None = None, **kwargs: Any) -> None:
    """Accept the old spelling ``old`` of ``new`` (same value, hidden from --help), with a warning.

    ``kwargs`` describe the old flag's value as for ``add_argument`` (``type=int``, ``nargs="+"``; a switch:
    ``nargs=0, const=True``).
    """
    dest = dest or new.lstrip("-").replace("-", "_")
    parser.add_argument(old, action=_Deprecated, new=new, dest=dest, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, **kwargs)
