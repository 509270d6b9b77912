"""Server-sent events, parsed by the WHATWG rules from bytes as they arrive.

Lines end at ``\n``, ``\r\n`` or ``\r`` (a CRLF split across two chunks counts once); a
leading byte-order mark is dropped; ``data:`` takes one optional space; several ``data`` lines
join with ``\n``; comments (``:`` lines, such as OpenRouter's keep-alives) are skipped; a blank
line dispatches the event. Only ``data`` matters to an OpenAI stream.
"""

from __future__ import annotations

__all__ = ["SSEParser"]


class SSEParser:
    """Incremental ``text/event-stream`` parser (WHATWG HTML, "Server-sent events", parsing rules).

    ``feed`` takes bytes as they arrive, cut anywhere, and returns the ``data`` of each event
    completed by them. Lines end in LF, CRLF or CR (a CRLF split across two chunks is one line
    end); ``data:`` loses one following space; several ``data`` lines join with LF; lines that
    start with ``:`` are comments (OpenRouter's ``: OPENROUTER PROCESSING`` keep-alives); a blank
    line dispatches. Other fields (``event``, ``id``, ``retry``) do not change the data and are
    dropped; an event still open when the stream ends is never dispatched, as the rules say.

        parser = SSEParser()
        parser.feed(b"data: {}\\n\\nda") == [b"{}"]
        parser.feed(b"ta: [DONE]\\r\\n\\r\\n") == [b"[DONE]"]

    With ``max_bytes``, a line still open or an event's data longer than that raises
    ``ValueError`` from ``feed``: nothing is held beyond it and one chunk.
    """

    _BOM = b"\xef\xbb\xbf"

    def __init__(self, max_bytes: int | None = None) -> None:
        self._max = max_bytes
        self._line = bytearray()
        self._data = bytearray()
        self._after_cr = False
        self._at_start = True

    def feed(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return []
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the LF of a CRLF whose CR ended the previous chunk
        self._after_cr = False
        self._line += chunk
        if self._at_start and not self._strip_bom():
            return []
        events: list[bytes] = []
        buffer, start = self._line, 0
        while (end := _line_end(buffer, start)) >= 0:
            self._take(bytes(buffer[start:end]), events)
            if buffer[end] == 0x0D and end + 1 == len(buffer):
                self._after_cr = True
                start = end + 1
            else:
                start = end + (2 if buffer[end : end + 2] == b"\r\n" else 1)
        del buffer[:start]
        if self._max is not None and max(len(buffer), len(self._data)) > self._max:
            raise ValueError(f"a stream line or event exceeds the limit of {self._max} bytes")
        return events

    def _strip_bom(self) -> bool:
        """False while the first bytes could still be the start of a byte-order mark."""
        if len(self._line) < len(self._BOM) and self._BOM.startswith(self._line):
            return False
        if self._line.startswith(self._BOM):
            del self._line[: len(self._BOM)]
        self._at_start = False
        return True

    def _take(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(bytes(self._data[:-1]))  # the data buffer always ends in one LF
                self._data.clear()
            return
        if line[:1] == b":":
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data += value[1:] if value[:1] == b" " else value
            self._data += b"\n"


def _line_end(buffer: bytearray, start: int) -> int:
    cr, lf = buffer.find(b"\r", start), buffer.find(b"\n", start)
    if cr < 0 or lf < 0:
        return max(cr, lf)
    return min(cr, lf)
