"""Tests for app.multipart: one parse of an upload, re-sent with the deployment as `model`."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from app.errors import BadRequest
from app.multipart import read_form, with_model
from app.simulator.forms import parse_form
from app.upstream import body_bytes

AUDIO = b"RIFF" + bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"


def upload(
    data: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]
) -> tuple[bytes, str]:
    """A body and content type exactly as httpx (and so the openai SDK) encodes them."""
    request = httpx.Request("POST", "http://x", data=data, files=files)
    return request.read(), request.headers["content-type"]


def test_fields_files_and_model_rewrite_keep_the_upload_byte_for_byte() -> None:
    body, ctype = upload(
        {"model": "whisper-public", "response_format": "srt", "stream": "false"},
        [("file", ("clip.wav", AUDIO, "audio/wav"))],
    )
    form = read_form(body, ctype)
    assert form.fields == {"model": "whisper-public", "response_format": "srt", "stream": "false"}
    assert form.files == ["file"]
    assert form.content_type == ctype
    pieces = with_model(form, "whisper-eu", add=True)
    assert all(isinstance(p, memoryview) for p in (pieces[0], pieces[-1]))  # no copy of the upload
    sent = parse_form(body_bytes(pieces), ctype.encode())
    assert sent is not None
    assert sent.fields == {"model": ["whisper-eu"], "response_format": ["srt"], "stream": ["false"]}
    assert sent.uploads("file")[0].data == AUDIO


@pytest.mark.parametrize("add", [True, False])
def test_a_form_without_model_gets_one_only_when_asked(add: bool) -> None:
    body, ctype = upload(
        {"prompt": "make it blue"},
        [
            ("image[]", ("a.png", b"\x89PNG1", "image/png")),
            ("image[]", ("b.png", b"\x89PNG2", "image/png")),
        ],
    )
    form = read_form(body, ctype)
    assert form.model_span is None
    assert form.files == ["image[]", "image[]"]
    out = body_bytes(with_model(form, "gpt-image-1", add=add))
    if not add:
        assert out is body
        return
    sent = parse_form(out, ctype.encode())
    assert sent is not None
    assert sent.fields == {"model": ["gpt-image-1"], "prompt": ["make it blue"]}
    assert [u.data for u in sent.uploads("image")] == [b"\x89PNG1", b"\x89PNG2"]


def test_a_preamble_is_refused() -> None:
    body, ctype = upload({"language": "en"}, [("file", ("a.mp3", b"ID3abc", "audio/mpeg"))])
    with pytest.raises(BadRequest):
        read_form(b"this is a preamble\r\n" + body, ctype)


def test_an_empty_model_value_is_not_an_offset() -> None:
    body, ctype = upload({"model": ""}, [("file", ("a.wav", b"RIFF", "audio/wav"))])
    form = read_form(body, ctype)
    assert form.fields["model"] == ""
    assert form.model_span is None


@pytest.mark.parametrize(
    ("mangle", "ctype", "says"),
    [
        (lambda b: b, "application/json", "multipart/form-data"),
        (lambda b: b, "multipart/form-data", "boundary"),
        (lambda b: b[:-12], None, "incomplete"),
        (lambda b: b"", None, "incomplete"),
        (lambda b: b"garbage", None, "malformed"),
    ],
)
def test_bad_uploads_are_400_naming_the_problem(
    mangle: Callable[[bytes], bytes], ctype: str | None, says: str
) -> None:
    body, real = upload({"model": "m"}, [("file", ("a.wav", b"RIFF", "audio/wav"))])
    with pytest.raises(BadRequest) as info:
        read_form(mangle(body), ctype or real)
    assert info.value.status == 400
    assert says in info.value.message
