"""What an upload's first bytes say it is not: a page, a document, an archive or a program is refused at submission
(it could only fail in a worker, and until then it would sit in storage as whatever its name claimed)."""

from __future__ import annotations

HEAD_BYTES = 512
BYTE_ORDER_MARKS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
# Leading bytes of kinds no video or image starts with. Markup is told by its first non-blank character, in any
# of the encodings a browser would read it in (UTF-16 puts a NUL beside each ASCII byte).
NOT_MEDIA_SIGNATURES = {b"%PDF-": "a PDF document", b"PK\x03\x04": "a ZIP archive (or an office document)",
                        b"\x7fELF": "a program", b"MZ": "a program", b"#!": "a script", b"{\\rtf": "an RTF document",
                        b"\x1f\x8b": "a gzip archive", b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive",
                        b"Rar!": "a RAR archive"}


def not_media_reason(head: bytes) -> str | None:
    """What the first bytes of an upload show it to be, when that is certainly not a video or an image; else None
    (most media are recognised only by decoding them, which the worker does)."""
    text = head
    for mark in BYTE_ORDER_MARKS:
        text = text.removeprefix(mark)
    if text.replace(b"\x00", b"").lstrip().startswith(b"<"):
        return "markup (HTML, SVG or XML)"
    return next((what for signature, what in NOT_MEDIA_SIGNATURES.items() if head.startswith(signature)), None)
