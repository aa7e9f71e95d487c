"""Errors answered in OpenAI's shape, and the request errors the routes share."""

from __future__ import annotations

from ..errors import ContextOverflowError, LongVUError, MediaLimitError, VideoError
from .settings import ServerSettings


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def public_error(e: LongVUError) -> APIError:
    """The 4xx for an error of the request's content, in words that name no server path.

    A video over the server's limits is a 413; another video error a 400 with the error's
    :attr:`~longvu.errors.VideoError.public_message`; a prompt that cannot fit a 400 with
    OpenAI's code ``context_length_exceeded``.
    """
    if isinstance(e, MediaLimitError):
        return APIError(413, e.public_message, code="media_too_large", param=e.limit)
    if isinstance(e, VideoError):
        return APIError(400, e.public_message, code="invalid_video")
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), code="context_length_exceeded", param="messages")
    return APIError(400, str(e), code="bad_input")


def quota_error() -> APIError:
    return APIError(413, "the server's upload storage is full; delete files (DELETE /v1/files/ID) or retry later",
                    code="upload_quota_exceeded")  # fmt: skip


def disk_full_error() -> APIError:
    return APIError(507, "the server's disk is full: the file was not stored; retry later", "server_error",
                    "insufficient_storage", headers={"Retry-After": "60"})  # fmt: skip


def ended(jobs) -> APIError:
    """The error for a job stopped by its cancel event: the client left, or the server is stopping."""
    if jobs.closing.is_set():
        return APIError(503, "the server is shutting down; retry later", "server_error", "shutting_down")
    return APIError(499, "the client went away", code="cancelled")


def timed_out(settings: ServerSettings) -> APIError:
    return APIError(504, f"the request took longer than {settings.request_timeout_s:g}s", "server_error", "timeout")


def too_large(settings: ServerSettings) -> APIError:
    return APIError(413, f"the file is larger than this server's {settings.max_upload_mb:g} MB limit",
                    code="file_too_large")  # fmt: skip


def media_error(message: str, code: str) -> APIError:
    return APIError(400, message, code=code, param="messages")


def clip(text: str, n: int = 80) -> str:
    """Client text echoed in an error message, at most ``n`` characters."""
    return text if len(text) <= n else text[:n] + "..."
