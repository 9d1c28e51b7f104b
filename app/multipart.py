"""Multipart uploads (image edits, audio): read the form once, re-send it with another model.

`read_form` runs python-multipart's streaming parser (the one Starlette uses) over the
body the gateway already holds - one ``write`` of the whole buffer, so every offset the
parser reports is an offset into that buffer - and keeps the small text fields the
gateway decides on (``model``, ``stream``, ``response_format``, ``n``, ...), the names
of the file parts, and where the ``model`` value sits.

`with_model` then gives the body to send for one deployment as zero-copy pieces: the
upload before the ``model`` value, the deployment's name, the upload after it (or, when
the form names no model, a ``model`` part placed first). The upload
itself stays in memory once, as received (bounded by ``gateway.max_body_bytes``), and
every failover attempt re-sends it from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from app.errors import BadRequest

Piece = bytes | memoryview

# Text fields longer than this are not kept (the gateway decides on short ones only).
MAX_FIELD = 64 * 1024


@dataclass(slots=True)
class Form:
    """What the gateway knows of one multipart upload."""

    body: bytes  # the upload as received: the one copy every attempt re-sends
    boundary: bytes
    fields: dict[str, str] = field(default_factory=dict)  # first value of each short text field
    files: list[str] = field(default_factory=list)  # the name of every file part, in order
    model_span: tuple[int, int] | None = None  # offsets of the `model` value in `body`

    @property
    def content_type(self) -> str:
        return "multipart/form-data; boundary=" + self.boundary.decode("latin-1")


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; `BadRequest` otherwise."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadRequest(
            "This route takes a multipart/form-data body (Content-Type with a boundary), "
            f"not {content_type or 'no Content-Type'}."
        )
    return boundary


class _Reader:
    """python-multipart callbacks that note each part's headers and data offsets."""

    def __init__(self, form: Form) -> None:
        self.form = form
        self.parts = 0
        self.headers: dict[bytes, bytes] = {}
        self.name: list[bytes] = []
        self.value: list[bytes] = []
        self.start: int | None = None
        self.end = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self.headers.clear()
        self.start = None
        self.end = 0

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.name.append(data[start:end])

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value.append(data[start:end])

    def header_end(self) -> None:
        self.headers[b"".join(self.name).strip().lower()] = b"".join(self.value).strip()
        self.name.clear()
        self.value.clear()

    def part_data(self, data: bytes, start: int, end: int) -> None:
        # One write of the whole body: `data` is that body, the offsets are absolute.
        if self.start is None:
            self.start = start
        self.end = end

    def part_end(self) -> None:
        self.parts += 1
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        start = self.start if self.start is not None else 0
        end = self.end if self.start is not None else 0
        if b"filename" in options:
            self.form.files.append(name)
            return
        if name == "model" and self.form.model_span is None and self.start is not None:
            self.form.model_span = (start, end)  # an empty value has no offset: none kept
        if name not in self.form.fields and end - start <= MAX_FIELD:
            self.form.fields[name] = self.form.body[start:end].decode("utf-8", "replace")


def read_form(body: bytes, content_type: str) -> Form:
    """Parse an upload; `BadRequest` when it is not a whole multipart form."""
    form = Form(body=body, boundary=boundary_of(content_type))
    reader = _Reader(form)
    parser = MultipartParser(form.boundary, reader.callbacks())  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise BadRequest(f"The multipart/form-data body is malformed: {exc}") from None
    if reader.parts == 0 or parser.state != MultipartState.END:
        raise BadRequest("The multipart/form-data body is incomplete: no closing boundary.")
    return form


def with_model(form: Form, deployment: str, *, add: bool) -> tuple[Piece, ...]:
    """The upload with ``model`` set to ``deployment``, as pieces to send in order.

    A ``model`` part is replaced in place; when there is none it is added first if
    ``add`` (the v1 API reads the deployment from it) and left out otherwise.
    """
    view = memoryview(form.body)
    name = deployment.encode()
    if form.fields.get("model") == deployment:
        return (form.body,)  # already names it: the upload as received
    if form.model_span is not None:
        start, end = form.model_span
        return (view[:start], name, view[end:])
    if not add:
        return (form.body,)
    part = (
        b"--" + form.boundary + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        b"" + name + b"\r\n"
    )
    return (part, form.body)  # python-multipart takes no preamble: the body opens with a part
