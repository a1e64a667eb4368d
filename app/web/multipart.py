"""Multipart uploads read in one pass: a body as browsers and HTTP libraries send it is split with ``bytes.find``.

Werkzeug's parser reads a body in 64 KB chunks and runs a state machine over each; for the
portrait endpoints (one photo and a few short fields) that is most of a millisecond per megabyte,
a noticeable share of a request once the models answer in a millisecond or two (bench/gateway.py).
:class:`OnePassFormParser` reads the whole body (already bounded by MAX_CONTENT_LENGTH) and, when it
has the plain shape every client sends, cuts the parts out directly; it builds the form and the files
with werkzeug's own pieces (its header parser, charset rule and stream factory), so they are what
werkzeug would have made of the same bytes. A body of any other shape (a preamble other than one
line break, an epilogue, bare CR or LF line breaks, a boundary string inside a part, more than
``MAX_PARTS`` parts, a field over the form memory limit, a malformed header) goes to werkzeug's
parser, whose answer, or error, stands.
"""

from __future__ import annotations

import io
from typing import IO, Any

from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.formparser import FormDataParser, MultiPartParser
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import BLANK_LINE_RE, File, MultipartDecoder

__all__ = ["MAX_PARTS", "OnePassFormParser"]

MAX_PARTS = 64  # more parts than any portrait form has: werkzeug's parser (and its part limit) takes over
# werkzeug's parser reads 64 KB at a time and refuses a body whose unparsed rest passes the form memory limit: below
# twice that, its verdict depends on where chunks fall, so such a limit is always left to it.
_WERKZEUG_CHUNK = 64 * 1024

_CRLF = b"\r\n"


class OnePassFormParser(FormDataParser):
    """Flask's form parser, with a one-pass fast path for multipart bodies of the usual shape."""

    def _parse_multipart(
        self, stream: IO[bytes], mimetype: str, content_length: int | None, options: dict[str, str]
    ) -> tuple[IO[bytes], MultiDict, MultiDict]:
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary or content_length is None:
            return super()._parse_multipart(stream, mimetype, content_length, options)
        data = stream.read()
        parsed = self._split(data, boundary, content_length)
        if parsed is None:
            return super()._parse_multipart(io.BytesIO(data), mimetype, content_length, options)
        return stream, *parsed

    def _split(self, data: bytes, boundary: bytes, content_length: int) -> tuple[MultiDict, MultiDict] | None:
        """The form and files of ``data``, or None when it is not of the plain shape (werkzeug then parses it)."""
        delimiter = b"--" + boundary
        # The first boundary, on the body's first line or (as werkzeug's own encoder writes it) its second.
        first = 2 if data.startswith(_CRLF + delimiter + _CRLF) else 0
        if not data.startswith(delimiter + _CRLF, first):
            return None
        if self.max_form_memory_size is not None and self.max_form_memory_size < 2 * _WERKZEUG_CHUNK:
            return None
        occurrences = data.count(delimiter)
        if occurrences > min(MAX_PARTS, self.max_form_parts or MAX_PARTS) + 1:
            return None
        # werkzeug's own pieces, so that headers, charsets and file streams come out as its parser makes them
        decoder = MultipartDecoder(boundary)
        parser = MultiPartParser(stream_factory=self.stream_factory, cls=self.cls)
        fields: list[tuple[Any, str]] = []
        files: list[tuple[Any, FileStorage]] = []
        position, found = first + len(delimiter) + 2, 1
        while True:
            blank = BLANK_LINE_RE.search(data, position)
            if blank is None or blank.group() != _CRLF + _CRLF:
                return None
            start = blank.end()
            end = data.find(_CRLF + delimiter, start)
            if end < 0:
                return None
            found += 1
            try:
                headers = decoder._parse_headers(data[position : blank.start()])
            except ValueError:  # a header that is not UTF-8: werkzeug refuses the body its own way
                return None
            if "content-disposition" not in headers:
                return None
            _, extra = parse_options_header(headers["content-disposition"])
            name, filename = extra.get("name"), extra.get("filename")
            body = data[start:end]
            if filename is None:
                if self.max_form_memory_size is not None and len(body) > self.max_form_memory_size:
                    return None
                fields.append((name, body.decode(parser.get_part_charset(headers), "replace")))
            else:
                event = File(name=name, filename=filename, headers=headers)
                container = parser.start_file_streaming(event, content_length)
                container.write(body)
                container.seek(0)
                files.append((name, FileStorage(container, filename, name, headers=headers)))
            position = end + 2 + len(delimiter)
            after = data[position : position + 2]
            if after == b"--":
                if data[position + 2 :] not in (b"", _CRLF) or found != occurrences:
                    return None  # an epilogue, or the boundary inside a part: werkzeug decides
                return self.cls(fields), self.cls(files)
            if after != _CRLF:
                return None
            position += 2
