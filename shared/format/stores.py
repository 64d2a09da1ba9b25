"""Object stores checked before any work: credentials, the bucket, and (for an output) the right to write.

Each slip is one line that names the fix, raised before any input is read, instead of a client's retries and
tracebacks minutes into a job. Local paths pass through untouched.
"""

from __future__ import annotations

import os
import sys
import uuid

import fsspec
from fsspec.core import url_to_fs

from shared.errors import CodecLmError
from shared.format.files import is_remote, join

WRITE_CHECK_PREFIX = ".write-check-"  # the probe object check_store writes and removes at once
GOOGLE = ("gs", "gcs")


class StoreError(CodecLmError):
    """An object store cannot be used as given: no credentials, no such bucket, no right to write."""


def scheme_of(path: str) -> str:
    return str(path).split("://", 1)[0].lower()


def bucket_of(path: str) -> tuple[str, str]:
    """``(bucket, key)`` of ``scheme://bucket/key``."""
    bucket, _, key = str(path).split("://", 1)[1].partition("/")
    return bucket, key.strip("/")


def client_errors() -> tuple[type[Exception], ...]:
    """The store clients' own errors that are not ``OSError``s (gcsfs's ``HttpError`` once its retries run out,
    botocore's), of the clients imported so far: one never imported cannot have raised."""
    found: list[type[Exception]] = []
    if "gcsfs.retry" in sys.modules:
        found.append(sys.modules["gcsfs.retry"].HttpError)
    if "botocore.exceptions" in sys.modules:
        errors = sys.modules["botocore.exceptions"]
        found += [errors.BotoCoreError, errors.ClientError]
    return tuple(found)


def check_client(path: str, flag: str) -> None:
    """The filesystem for the path's scheme is installed (gcsfs, s3fs: the ``cloud`` extra)."""
    try:
        fsspec.get_filesystem_class(scheme_of(path))
    except (ImportError, ValueError) as error:
        raise StoreError(f"{flag} {path}: no filesystem for {scheme_of(path)}:// ({first_line(error)}); "
                         "gs:// and s3:// need the cloud extra: pip install -e \".[cloud]\"") from None


def check_credentials(path: str, flag: str) -> None:
    """Credentials the store's client will find, looked up once and offline (no client retries)."""
    scheme = scheme_of(path)
    if scheme in GOOGLE and not os.environ.get("STORAGE_EMULATOR_HOST"):  # an emulator takes anonymous calls
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        try:
            google.auth.default()
        except DefaultCredentialsError:
            raise StoreError(f"{flag} {path}: no Google Cloud credentials found; run `gcloud auth application-default "
                             "login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file") from None
    elif scheme == "s3":
        import botocore.session
        if botocore.session.get_session().get_credentials() is None:
            raise StoreError(f"{flag} {path}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run `aws configure`")


def check_store(path: str, *, flag: str, write: bool = False) -> None:
    """Before any work on ``path`` (a file, folder or glob on an object store): its client is installed,
    credentials exist (public buckets too: without them, a client may spend minutes retrying a refusal), its
    bucket exists, and with ``write`` an object can be written in its folder (a probe, removed at once).
    Local paths are not checked here."""
    if not is_remote(path):
        return
    scheme = scheme_of(path)
    check_client(path, flag)
    check_credentials(path, flag)
    bucket, key = bucket_of(path)
    if not bucket:
        raise StoreError(f"{flag} {path}: no bucket named; write {scheme}://BUCKET/FOLDER")
    filesystem, _ = url_to_fs(str(path))
    try:
        filesystem.info(bucket)
    except FileNotFoundError:
        create = (f"gcloud storage buckets create gs://{bucket}" if scheme in GOOGLE
                  else f"aws s3 mb s3://{bucket}")
        raise StoreError(f"{flag} {path}: bucket {bucket} does not exist (or these credentials cannot see it); "
                         f"create it (`{create}`) or fix the path") from None
    except (OSError, *client_errors()) as error:
        if not forbidden(error):  # may not read the bucket's metadata, but may still use its objects
            raise StoreError(f"{flag} {path}: the store did not answer ({first_line(error)})") from None
    if write:
        probe = join(f"{scheme}://{bucket}", key, f"{WRITE_CHECK_PREFIX}{uuid.uuid4().hex}")
        try:
            filesystem.pipe_file(probe, b"")
            filesystem.rm(probe)
        except (OSError, *client_errors()) as error:
            if not forbidden(error):
                raise StoreError(f"{flag} {path}: the store did not answer ({first_line(error)})") from None
            raise StoreError(f"{flag} {path}: these credentials may not write there; grant them "
                             + ("roles/storage.objectUser on the bucket" if scheme in GOOGLE
                                else "s3:PutObject and s3:DeleteObject on it") + ", or choose another place") from None


def forbidden(error: Exception) -> bool:
    """A refusal of these credentials (HTTP 401/403), as each client spells it: s3fs a ``PermissionError``,
    gcsfs an ``OSError`` whose message starts "Forbidden", or (401) an ``HttpError`` with the status as its
    ``code``."""
    return isinstance(error, PermissionError) or getattr(error, "code", None) in (401, 403) or (
        str(error).startswith(("Forbidden", "Unauthorized")))


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_folder(path: str, flag: str) -> None:
    """An output on an object store is a folder inside a bucket, not the bucket's root, whose objects it
    would mix with and, with --overwrite, replace."""
    if is_remote(path) and not bucket_of(path)[1]:
        bucket = bucket_of(path)[0] or "BUCKET"
        raise StoreError(f"{flag} {path} is a bucket's root; name a folder in it, e.g. "
                         f"{scheme_of(path)}://{bucket}/dataset")
