"""multipart/form-data parsing with python-multipart, behind Werkzeug's FormDataParser interface.

Werkzeug's own parser compiles two regular expressions for each boundary, and every client
(urllib3, requests, curl, browsers) picks a new random boundary per request, so each upload
paid for a fresh compilation: about 0.7 ms of CPU per detection against about 0.05 ms here
(docs/performance.md). The results are the same objects Flask hands out (`request.form`,
`request.files` with FileStorage), and the same limits hold: the body is read through the
stream Werkzeug limits to MAX_CONTENT_LENGTH, a text field over `max_form_memory_size` or more
than `max_form_parts` parts is a 413, and a body that is not well-formed multipart is an empty
form (the views then name the missing field), as with Werkzeug.
"""
from __future__ import annotations

import logging
from typing import IO, TYPE_CHECKING, Any

from flask import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartState
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser as WerkzeugFormDataParser
from werkzeug.http import parse_options_header

if TYPE_CHECKING:  # defined for type checkers only
    from python_multipart.multipart import MultipartCallbacks

CHUNK_BYTES = 64 * 1024
# python-multipart warns on each malformed body; that is the client's error, answered with a 400
# and recorded in the request's access line.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)


class _Parts:
    """Collects the parts of one body from python-multipart's callbacks."""

    def __init__(self, owner: WerkzeugFormDataParser, content_length: int | None) -> None:
        self.owner, self.content_length = owner, content_length
        self.fields: list[tuple[str, str]] = []
        self.files: list[tuple[str, FileStorage]] = []
        self.count = 0
        self._header_lines: list[tuple[bytes, bytes]] = []
        self._field_name = b""
        self._field_value = b""
        self._headers = Headers()
        self._name = ""
        self._filename: str | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._file: IO[bytes] | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self.count += 1
        limit = self.owner.max_form_parts
        if limit is not None and self.count > limit:
            raise RequestEntityTooLarge()
        self._header_lines, self._field_name, self._field_value = [], b"", b""

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._field_value += data[start:end]

    def header_end(self) -> None:
        self._header_lines.append((self._field_name, self._field_value))
        self._field_name, self._field_value = b"", b""

    def headers_finished(self) -> None:
        self._headers = Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in self._header_lines])
        _, options = parse_options_header(self._headers.get("content-disposition"))
        self._name, self._filename = options.get("name", ""), options.get("filename")
        self._chunks, self._size, self._file = [], 0, None
        if self._filename is not None:
            self._file = self.owner.stream_factory(
                total_content_length=self.content_length, filename=self._filename,
                content_type=self._headers.get("content-type"), content_length=0)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(data[start:end])
            return
        self._size += end - start
        limit = self.owner.max_form_memory_size
        if limit is not None and self._size > limit:
            raise RequestEntityTooLarge()
        self._chunks.append(data[start:end])

    def part_end(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self.files.append((self._name, FileStorage(self._file, self._filename, self._name, headers=self._headers)))
        else:
            self.fields.append((self._name, b"".join(self._chunks).decode(_charset(self._headers), "replace")))


def _charset(headers: Headers) -> str:
    charset = parse_options_header(headers.get("content-type"))[1].get("charset", "").lower()
    return charset if charset in {"ascii", "us-ascii", "utf-8", "iso-8859-1"} else "utf-8"


class FormDataParser(WerkzeugFormDataParser):
    def _parse_multipart(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> tuple[IO[bytes], Any, Any]:
        boundary = options.get("boundary", "").encode("latin-1")
        if not boundary:
            raise ValueError("Missing boundary")
        parts = _Parts(self, content_length)
        try:
            parser = MultipartParser(boundary, parts.callbacks())
            while chunk := stream.read(CHUNK_BYTES):
                parser.write(chunk)
        except FormParserError as error:
            raise ValueError(str(error)) from None
        if parser.state != MultipartState.END:
            raise ValueError("unexpected end of the multipart body")
        return stream, self.cls(parts.fields), self.cls(parts.files)


class ServiceRequest(Request):
    """Flask's request, with multipart bodies parsed by python-multipart."""

    form_data_parser_class = FormDataParser
