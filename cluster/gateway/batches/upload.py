"""A `POST /v1/files` multipart body, read as it arrives: the `file` part goes straight into the
upload (bounded: 413 past max_file_bytes, never held in memory or a temporary file elsewhere),
the few text fields (`purpose`, `expires_after[anchor]`, `expires_after[seconds]`) are kept,
bounded in size and number. Anything malformed is a 400."""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from cluster.batch.contents import Upload
from cluster.batch.errors import BatchApiError, invalid
from cluster.batch.service import PURPOSES

MAX_FIELD_BYTES = 1024
MAX_PARTS = 8


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    files: int = 0


class _Reader:
    """python-multipart's callbacks, feeding one upload and the form's text fields."""

    def __init__(self, upload: Upload):
        self.upload = upload
        self.form = Form()
        self.parts = 0
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._text = bytearray()

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise invalid(f"more than {MAX_PARTS} form fields")
        self._headers, self._text, self._name, self._is_file = {}, bytearray(), None, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name")
        if name is None:
            raise invalid("a form part without a name")
        self._name = name.decode("utf-8", "replace")
        self._is_file = self._name == "file"
        if self._is_file:
            purpose = self.form.fields.get("purpose")
            if purpose is not None and purpose not in PURPOSES:  # sent first (as the SDK does): refused unread
                raise invalid(f"purpose {purpose!r} is not supported: owc stores files for batches (purpose "
                              "\"batch\")", param="purpose", code="unsupported_value")
            self.form.files += 1
            if self.form.files > 1:
                raise invalid("more than one file in the upload", param="file")
            fn = params.get(b"filename")
            self.form.filename = fn.decode("utf-8", "replace") if fn is not None else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.upload.write(data[start:end])
        else:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise invalid(f"form field {self._name!r} exceeds {MAX_FIELD_BYTES} bytes", param=self._name)

    def on_part_end(self) -> None:
        if not self._is_file and self._name is not None:
            self.form.fields[self._name] = self._text.decode("utf-8", "replace")

    def callbacks(self) -> dict:
        return {n: getattr(self, n) for n in ("on_part_begin", "on_part_data", "on_part_end", "on_header_field",
                                              "on_header_value", "on_header_end", "on_headers_finished")}


async def read_form(request: Request, upload: Upload) -> Form:
    """The form of ``request``; the file part written into ``upload`` as it arrives."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise invalid("POST /v1/files takes a multipart/form-data body (fields: file, purpose)")
    reader = _Reader(upload)
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except BatchApiError:
        raise
    except Exception as e:  # noqa: BLE001 - python-multipart's parse errors: the client's malformed body
        raise invalid(f"malformed multipart body: {e}") from None
    return reader.form
