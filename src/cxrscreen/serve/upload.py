"""Read an uploaded X-ray into memory under a byte cap, never onto disk.

Starlette's form parser spools file parts over 1 MiB to temporary files, and FastAPI puts no limit on a body.
Here the raw request stream is read chunk by chunk through ``python_multipart``'s streaming parser: only the
bytes of the ``file`` field are kept, in memory, and reading stops (413) as soon as the body passes the cap, so an
oversized upload is never read whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import Request

FILE_FIELD = "file"
# Room for part headers, boundaries and small extra form fields around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FILENAME_CHARS = 120


@dataclass
class Upload:
    """One uploaded file: its (sanitised, base) name and its bytes."""

    filename: str
    data: bytes


@dataclass
class _FilePartCollector:
    """Callbacks for :class:`MultipartParser` that keep the first part named ``field_name``."""

    field_name: str
    filename: str | None = None
    chunks: list[bytes] | None = None
    size: int = 0
    finished: bool = False
    _capturing: bool = False
    _header_field: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _headers: dict[bytes, bytes] = field(default_factory=dict)

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == self.field_name and self.chunks is None:
            self.chunks = []
            self.filename = params.get(b"filename", b"").decode("utf-8", "replace")
            self._capturing = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._capturing:
            self.chunks.append(bytes(data[start:end]))
            self.size += end - start

    def _on_part_end(self) -> None:
        self._capturing = False

    def _on_end(self) -> None:
        self.finished = True


def too_large(max_file_bytes: int) -> HTTPException:
    return HTTPException(413, f"upload is larger than the {max_file_bytes / 2**20:g} MB limit")


def safe_filename(raw: str | None) -> str:
    """Base name of a client-supplied file name, shortened; ``upload`` when there is none."""
    name = PurePosixPath((raw or "").replace("\\", "/")).name.strip()
    return name[:MAX_FILENAME_CHARS] or "upload"


async def read_upload(request: Request, max_file_bytes: int) -> Upload:
    """The ``file`` field of a multipart/form-data request, read in memory.

    Raises :class:`HTTPException`: 415 when the body is not multipart, 413 past ``max_file_bytes`` (checked on
    the declared Content-Length first, then while streaming), 400 for a malformed or truncated body, 422 when
    no ``file`` field was sent.
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise HTTPException(415, f"send the X-ray as multipart/form-data with a file field named '{FILE_FIELD}'")
    max_body_bytes = max_file_bytes + MULTIPART_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise too_large(max_file_bytes)
    collector = _FilePartCollector(FILE_FIELD)
    try:
        parser = MultipartParser(params[b"boundary"], collector.callbacks())
    except (ValueError, MultipartParseError) as exc:
        raise HTTPException(400, f"malformed multipart body ({exc})") from None
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_body_bytes:
            raise too_large(max_file_bytes)
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise HTTPException(400, f"malformed multipart body ({exc})") from None
        if collector.size > max_file_bytes:
            raise too_large(max_file_bytes)
    if not collector.finished:
        raise HTTPException(400, "malformed multipart body (it ends before its closing boundary)")
    if collector.chunks is None:
        raise HTTPException(422, f"no file field named '{FILE_FIELD}' in the upload")
    return Upload(safe_filename(collector.filename), b"".join(collector.chunks))
