"""The base of the project's typed errors: what library code raises instead of exiting the process.

Each command's ``main()`` turns them into ``PROG: error: message`` and an exit status
(``shared/tools/cli.py``); a Python caller catches them like any exception.
"""

from __future__ import annotations


class CodecLmError(Exception):
    """A failure a user can act on: the message says what is wrong and, where it can, what to do."""
