"""The gateway's exceptions, and their one mapping to OpenAI-shaped error bodies.

    GatewayError                       -> {"error": {message, type, param, code}}
    ├── BadRequest            400      invalid JSON, missing field (param names it)
    ├── Unauthorized          401      no or unknown gateway key
    ├── Forbidden             403      model outside the key's allowlist, admin-only route
    ├── NotFound              404      unknown model or route
    │   └── ResponseNotFound  404      a stored response this key does not own (or no such id)
    ├── MethodNotAllowed      405
    ├── PayloadTooLarge       413      body over gateway.max_body_bytes
    ├── UnsupportedMediaType  415      keyless mode: a POST that is not application/json
    ├── RateLimited           429      the caller's rpm/tpm, or every deployment throttled
    │   └── BudgetExceeded    429      the key's budget is used up (code insufficient_quota)
    ├── UpstreamKeysRejected  502      every key of every candidate rejected (names resources)
    ├── UpstreamFailed        502      every candidate failed (5xx, connection, 404)
    ├── ResponseUnavailable   503      a stored response's resource cannot serve now
    └── UpstreamTimeout       504      every candidate timed out before its first byte

Messages never carry a key value: callers name resources and deployments only.
"""

from __future__ import annotations

import math

import orjson


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def retry_headers(retry_after: float) -> list[tuple[bytes, bytes]]:
    seconds = max(1, math.ceil(retry_after))
    ms = max(1, math.ceil(retry_after * 1000))
    return [(b"retry-after", str(seconds).encode()), (b"retry-after-ms", str(ms).encode())]


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ResponseNotFound(NotFound):
    code = "response_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float, *, type_: str = "requests") -> None:
        super().__init__(message)
        self.retry_after = max(retry_after, 0.0)
        self.type = type_

    def headers(self) -> list[tuple[bytes, bytes]]:
        return retry_headers(self.retry_after)


class BudgetExceeded(RateLimited):
    """OpenAI's "out of quota" shape; `retry-after` says when the period resets.

    `x-should-retry: false` tells the openai SDKs not to retry: waiting seconds won't help.
    """

    code = "insufficient_quota"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after, type_="insufficient_quota")

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"x-should-retry", b"false")]


class UpstreamKeysRejected(GatewayError):
    status = 502
    type = "server_error"
    code = "upstream_keys_rejected"


class UpstreamFailed(GatewayError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class ResponseUnavailable(GatewayError):
    """Only the resource holding a stored response can serve it, and it cannot now."""

    status = 503
    type = "server_error"
    code = "stored_response_unavailable"

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [] if self.retry_after is None else retry_headers(self.retry_after)


class UpstreamTimeout(GatewayError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"
