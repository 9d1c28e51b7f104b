"""app/azure.py: URL, headers, body rewrite, Retry-After; and the request on the wire."""

from __future__ import annotations

import email.utils
import re

import httpx
import pytest

from app import azure

# --- URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://x.openai.azure.com", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com//", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/openai", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/openai/", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/openai/v1", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/openai/v1/", "https://x.openai.azure.com"),
        ("https://x.openai.azure.com/OpenAI/V1", "https://x.openai.azure.com"),
        ("  https://x.services.ai.azure.com/ ", "https://x.services.ai.azure.com"),
        ("http://127.0.0.1:9000/openai", "http://127.0.0.1:9000"),
        ("https://apim.example.com/team/openai", "https://apim.example.com/team"),
        ("https://x.example.com/openai-proxy", "https://x.example.com/openai-proxy"),
    ],
)
def test_normalize_endpoint(given: str, expected: str) -> None:
    assert azure.normalize_endpoint(given) == expected


PORTAL = (
    "https://x.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            PORTAL,
            azure.Endpoint(
                "https://x.openai.azure.com", "gpt-4o", "2024-10-21", "legacy", "chat/completions"
            ),
        ),
        (
            "https://x.openai.azure.com/openai/v1/chat/completions",
            azure.Endpoint("https://x.openai.azure.com", None, None, "v1", "chat/completions"),
        ),
        (
            "https://x.openai.azure.com/openai/deployments/gpt-4o",
            azure.Endpoint("https://x.openai.azure.com", "gpt-4o", None, "legacy"),
        ),
        (
            "https://x.openai.azure.com/openai/v1/?api-version=preview",
            azure.Endpoint("https://x.openai.azure.com", None, "preview", "v1"),
        ),
        (
            "https://x.openai.azure.com?api-version=2024-06-01",
            azure.Endpoint("https://x.openai.azure.com", None, "2024-06-01"),
        ),
    ],
)
def test_pasted_urls_are_understood(given: str, expected: azure.Endpoint) -> None:
    assert azure.parse_endpoint(given) == expected


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("x.openai.azure.com", "must be an http(s) URL"),
        ("https://x.openai.azure.com/chat", "write just https://x.openai.azure.com"),
        ("https://x.openai.azure.com/openai/responses", "write just https://x.openai.azure.com"),
        ("https://x.services.ai.azure.com/api/projects/p", "a Foundry project endpoint"),
        ("https://x.openai.azure.com/openai/v1?foo=1", "query parameter(s) foo are not used"),
        ("https://u:p@x.openai.azure.com", "must not hold a user name or password"),
    ],
)
def test_urls_the_gateway_cannot_use_are_refused_with_what_to_write(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        azure.parse_endpoint(given)


def test_request_headers_carry_only_the_key() -> None:
    assert azure.request_headers("the-key") == {
        "api-key": "the-key",
        "content-type": "application/json",
    }


# --- reasoning models -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["o1", "o1-mini", "o3", "o3-mini", "O3-Mini", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5.2"],
)
def test_is_reasoning(name: str) -> None:
    assert azure.is_reasoning(name)


@pytest.mark.parametrize(
    "name",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-35-turbo",
        "gpt-5-chat",
        "gpt-5.2-chat",
        "GPT-5-Chat",
        "gpt-5-chat-latest",
        "gpt-5-chat-2025-08-07",
        "model-router",
    ],
)
def test_is_not_reasoning(name: str) -> None:
    assert not azure.is_reasoning(name)


# --- Retry-After -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after-ms": "100", "retry-after": "9"}, 0.1),  # ms is more precise
        ({"x-ms-retry-after-ms": "300", "retry-after": "9"}, 0.3),
        ({"retry-after-ms": "garbage", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "-5", "x-ms-retry-after-ms": "20"}, 0.02),
        ({"retry-after-ms": "nan", "retry-after": "3"}, 3.0),
        ({"retry-after": "garbage"}, None),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert azure.retry_after(headers) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    future = email.utils.formatdate(now + 30, usegmt=True)
    assert azure.retry_after({"retry-after": future}, now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert azure.retry_after({"retry-after": past}, now=now) == 0.0


def test_retry_after_reads_case_insensitive_headers() -> None:
    assert azure.retry_after(httpx.Headers({"Retry-After-Ms": "40"})) == 0.04
