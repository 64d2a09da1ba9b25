"""The one exception type for media or streams we cannot use, with a reason a user can act on."""

from __future__ import annotations

from shared.errors import CodecLmError


class InvalidMediaError(CodecLmError, ValueError):
    """An input image/video (or a codec stream) that cannot be used.

    ``reason`` is a short, stable code for counting rejections (``unreadable``, ``truncated``,
    ``no-video-stream``, ``too-many-pixels``, ``empty``, ``unsupported-mode``, ``invalid-stream`` …);
    the message says what happened and what to do about it.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
