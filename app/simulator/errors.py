"""Azure's error bodies, byte for byte, and the OpenAI-style ``invalid_request_error``."""

from __future__ import annotations

from typing import Final

import orjson

SAFE: Final = b'{"filtered":false,"severity":"safe"}'
NOT_DETECTED: Final = b'{"filtered":false,"detected":false}'

UNAUTHORIZED: Final = (
    b'{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong'
    b" API endpoint. Make sure to provide a valid key for an active subscription and use a"
    b' correct regional API endpoint for your resource."}}'
)
NOT_FOUND: Final = b'{"error":{"code":"404","message":"Resource not found"}}'
DEPLOYMENT_NOT_FOUND: Final = (
    b'{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource'
    b" does not exist. If you created the deployment within the last 5 minutes, please wait a"
    b' moment and try again."}}'
)
INTERNAL: Final = (
    b'{"error":{"code":"InternalServerError","message":"The server had an error while'
    b' processing your request. Sorry about that!"}}'
)
CONTENT_FILTER: Final = (
    b'{"error":{"message":"The response was filtered due to the prompt triggering Azure'
    b" OpenAI's content management policy. Please modify your prompt and retry. To learn more"
    b" about our content filtering policies please read our documentation:"
    b' https://go.microsoft.com/fwlink/?linkid=2198766","type":null,"param":"prompt",'
    b'"code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation",'
    b'"content_filter_result":{"hate":{"filtered":true,"severity":"high"},"jailbreak":'
    + NOT_DETECTED + b',"self_harm":' + SAFE + b',"sexual":' + SAFE + b',"violence":'
    + SAFE + b"}}}}"
)  # fmt: skip
TOO_MANY_REQUESTS: Final = (
    b'{"error":{"code":"429","message":"Requests to the %s Operation under'
    b" Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current"
    b' OpenAI S0 pricing tier. Please retry after %d seconds."}}'
)
BAD_JSON: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't"
    " using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was"
    " sent was not valid JSON. %s)"
)


def too_many_requests(operation: str, seconds: int) -> bytes:
    """Azure's 429 body for ``operation`` (e.g. ``ChatCompletions_Create``)."""
    return TOO_MANY_REQUESTS % (operation.encode(), seconds)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> bytes:
    """An OpenAI-style ``invalid_request_error`` body."""
    err = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return orjson.dumps({"error": err})


def operation_not_supported(operation: str, model: str) -> bytes:
    """Azure's 400 for a deployment whose model cannot serve ``operation``."""
    message = (
        f"The {operation} operation does not work with the specified model, {model}. Please"
        " choose different model and try again. You can learn more about which models can be"
        " used with each operation here: https://go.microsoft.com/fwlink/?linkid=2197993."
    )
    return orjson.dumps({"error": {"code": "OperationNotSupported", "message": message}})
