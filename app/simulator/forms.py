"""``multipart/form-data`` request bodies (image edits, audio uploads), read with python-multipart.

`parse_form` turns a whole body into its text fields and its files; a field sent more than
once, or named with the ``[]`` suffix the openai SDKs use for lists (``image[]``), keeps
every value in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file."""

    filename: str
    content_type: str
    data: bytes


@dataclass(slots=True)
class Form:
    """A parsed form: text fields and files, each name mapping to its values in order."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[Upload]] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        """The first value of a text field, else None."""
        values = self.fields.get(name)
        return values[0] if values else None

    def uploads(self, name: str) -> list[Upload]:
        """Every file sent as ``name`` or ``name[]``."""
        return [*self.files.get(name, ()), *self.files.get(name + "[]", ())]

    def summary(self) -> dict[str, object]:
        """JSON-ready view for recorded requests: text fields, and files by size."""
        out: dict[str, object] = {n: v[0] if len(v) == 1 else v for n, v in self.fields.items()}
        for name, uploads in self.files.items():
            out[name] = [
                {"filename": u.filename, "content_type": u.content_type, "bytes": len(u.data)}
                for u in uploads
            ]
        return out


def boundary_of(content_type: bytes) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type, else None."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        return None
    boundary = options.get(b"boundary")
    return boundary or None


def parse_form(body: bytes, content_type: bytes) -> Form | None:
    """The form a multipart body holds; None if it is not a well-formed one."""
    boundary = boundary_of(content_type)
    if boundary is None:
        return None
    form = Form()
    headers: dict[bytes, bytes] = {}
    name_buf: list[bytes] = []
    value_buf: list[bytes] = []
    data: list[bytes] = []

    def on_part_begin() -> None:
        headers.clear()
        data.clear()

    def on_header_field(buf: bytes, start: int, end: int) -> None:
        name_buf.append(buf[start:end])

    def on_header_value(buf: bytes, start: int, end: int) -> None:
        value_buf.append(buf[start:end])

    def on_header_end() -> None:
        headers[b"".join(name_buf).lower()] = b"".join(value_buf)
        name_buf.clear()
        value_buf.clear()

    def on_part_data(buf: bytes, start: int, end: int) -> None:
        data.append(buf[start:end])

    def on_part_end() -> None:
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        content = b"".join(data)
        filename = options.get(b"filename")
        if filename is None:
            form.fields.setdefault(name, []).append(content.decode("utf-8", "replace"))
        else:
            ctype = headers.get(b"content-type", b"application/octet-stream")
            upload = Upload(filename.decode("utf-8", "replace"), ctype.decode("latin-1"), content)
            form.files.setdefault(name, []).append(upload)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except ValueError:  # python-multipart's errors (FormParserError and below)
        return None
    return form
