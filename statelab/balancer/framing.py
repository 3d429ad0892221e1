"""HTTP/1.1 framing rules the balancer enforces on its own, beside llhttp: pure functions, no sockets.

Where a request ends decides which bytes a backend reads as the next request, so the balancer
reads Content-Length, Transfer-Encoding and chunk boundaries itself and refuses (400) any head
that two parsers could read differently. Also here: the head checks (size, header count, Host),
the balancer's own JSON error answers, and the edits it makes to a response head.
"""

from __future__ import annotations

import json

from statelab.balancer.policies import COOKIE_NAME

REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 501: "Not Implemented", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
MAX_CHUNK_LINE_BYTES = 4096
MAX_TRAILERS = 32
MAX_CONTENT_LENGTH_DIGITS = 18  # 10**18 bytes: anything longer does not fit the balancer's counters
SERVED_BY = b"X-Served-By: balancer\r\n"
_HEX = frozenset(b"0123456789abcdefABCDEF")
_COOKIE = COOKIE_NAME.encode()


class BadRequest(Exception):
    """The client sent something we refuse to forward (status, reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def error_response(status: int, message: str) -> bytes:
    """Return the balancer's own answer: the apps' JSON error shape, `X-Served-By: balancer`, then close."""
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n"
            % (status, REASONS.get(status, "Error").encode(), len(body), SERVED_BY) + body)


def header_spans(low: bytes, name: bytes) -> list[tuple[int, int]]:
    """Return (start, end) of every value of header `name` in a lower-cased head."""
    pat = b"\r\n" + name + b":"
    spans = []
    i = low.find(pat)
    while i >= 0:
        s = i + len(pat)
        e = low.find(b"\r\n", s)
        spans.append((s, e))
        i = low.find(pat, e)
    return spans


def check_head(head: bytes, max_bytes: int, max_lines: int) -> None:
    """Refuse a head (request line, headers, empty line) over the size or header-count limit with 431."""
    if len(head) > max_bytes:
        raise BadRequest(431, "request head too large")
    if head.count(b"\r\n") > max_lines:
        raise BadRequest(431, "too many request headers")


def check_host(low: bytes, line: bytes) -> None:
    """Require exactly one Host header in HTTP/1.1 and at most one in HTTP/1.0 (RFC 9112 section 3.2)."""
    hosts = low.count(b"\r\nhost:")
    if hosts > 1:
        raise BadRequest(400, "more than one Host header")
    if not hosts and not line.endswith(b" HTTP/1.0"):
        raise BadRequest(400, "HTTP/1.1 request without a Host header")


def says_keep_alive(low: str) -> bool:
    """Return whether a lower-cased HTTP/1.1 head has one Connection header and it says only keep-alive.

    Such a head (what python-requests sends) changes nothing in HTTP/1.1 and may take the fast path.
    """
    i = low.find("\r\nconnection:") + 13
    return i > 12 and low.find("\r\nconnection:", i) < 0 and low[i:low.find("\r\n", i)].strip(" \t") == "keep-alive"


def body_framing(low: bytes, head: bytes) -> tuple[int, bool]:
    """Return (content length or -1, chunked) by our own reading of a lower-cased head; BadRequest if ambiguous."""
    te = header_spans(low, b"transfer-encoding")
    cls = header_spans(low, b"content-length")
    if b"\r\ntransfer-encoding" in low and not te or b"\r\ncontent-length" in low and not cls:
        raise BadRequest(400, "malformed framing header")
    if te and cls:
        raise BadRequest(400, "both Content-Length and Transfer-Encoding")
    if te:
        if len(te) != 1 or low[te[0][0]:te[0][1]].strip(b" \t") != b"chunked":
            raise BadRequest(400, "unsupported or obfuscated Transfer-Encoding")
        return -1, True
    if cls:
        values = {low[s:e].strip(b" \t") for s, e in cls}
        if len(values) != 1:
            raise BadRequest(400, "conflicting Content-Length headers")
        v = values.pop()
        if not v.isdigit():
            raise BadRequest(400, "malformed Content-Length")
        if len(v) > MAX_CONTENT_LENGTH_DIGITS:
            raise BadRequest(413, "Content-Length too large")
        return int(v), False
    return -1, False


def routing(head: bytes, low: bytes, ip: str, trust_forwarded_for: bool, sticky_policy: bool
            ) -> tuple[str, str | None, bytes]:
    """Return (routing key, backend id named by our sticky cookie, head to forward without that cookie).

    The key is the client's address, or the first X-Forwarded-For entry when trusted. With a
    sticky policy, the balancer's own cookie is read and taken out of the forwarded Cookie header
    (HAProxy's `indirect`): the backend never sees it.
    """
    key = ip
    sticky = None
    if trust_forwarded_for:
        spans = header_spans(low, b"x-forwarded-for")
        if spans:
            s, e = spans[0]
            first = head[s:e].split(b",", 1)[0].strip()
            if first:
                key = first.decode("latin-1")
    if sticky_policy:
        for s, e in reversed(header_spans(low, b"cookie")):
            pairs = [p.strip() for p in head[s:e].split(b";")]
            ours = [p for p in pairs if p.partition(b"=")[0] == _COOKIE]
            if not ours:
                continue
            sticky = ours[-1].partition(b"=")[2].decode("latin-1")
            kept = b"; ".join(p for p in pairs if p and p.partition(b"=")[0] != _COOKIE)
            line_start = s - len(b"cookie:") - 2
            replacement = b"\r\nCookie: " + kept if kept else b""
            head = head[:line_start] + replacement + head[e:]
    return key, sticky, head


def sticky_cookie(backend_id: str) -> bytes:
    """Return the Set-Cookie line (CRLF-terminated) that pins a client to backend_id."""
    return b"Set-Cookie: " + _COOKIE + b"=" + backend_id.encode() + b"; path=/\r\n"


def is_idempotent(line: bytes) -> bool:
    """Return whether the request line's method may be sent twice (RFC 9110 section 9.2.2)."""
    return line.split(b" ", 1)[0] in IDEMPOTENT


class ChunkTracker:
    """Follow chunked framing on our own, independently of llhttp, to catch disagreements."""

    __slots__ = ("state", "left", "line", "trailers")

    def __init__(self) -> None:
        self.state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailer lines
        self.left = 0
        self.line = b""
        self.trailers = 0

    def feed(self, data: bytes) -> int:
        """Return the index just past the end of the chunked body in data, or -1; ValueError if malformed."""
        i, n = 0, len(data)
        while i < n:
            st = self.state
            if st == 1:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = 2
            elif st == 2:
                need = 2 - len(self.line)
                self.line += data[i:i + need]
                i += need
                if len(self.line) == 2:
                    if self.line != b"\r\n":
                        raise ValueError("chunk data not followed by CRLF")
                    self.line = b""
                    self.state = 0
            else:
                j = data.find(b"\n", i)
                if j < 0:
                    self.line += data[i:]
                    if len(self.line) > MAX_CHUNK_LINE_BYTES:
                        raise ValueError("chunk line too long")
                    return -1
                line = self.line + data[i:j + 1]
                self.line = b""
                i = j + 1
                if len(line) > MAX_CHUNK_LINE_BYTES or not line.endswith(b"\r\n"):
                    raise ValueError("chunk line without CRLF")
                if st == 0:
                    size = line[:-2].split(b";", 1)[0]
                    if not size or len(size) > 15 or not _HEX.issuperset(size):
                        raise ValueError(f"malformed chunk size {size[:20]!r}")
                    self.left = int(size, 16)
                    self.state = 1 if self.left else 3
                elif line == b"\r\n":
                    return i
                else:
                    self.trailers += 1
                    if self.trailers > MAX_TRAILERS:
                        raise ValueError("too many trailers")
        return -1


def split_interim(buf: bytes) -> tuple[bytes, bytes]:
    """Split off the complete interim (1xx) response heads at the start of buf: (interim heads, the rest)."""
    pos = 0
    while buf[pos + 9:pos + 10] == b"1":
        e = buf.find(b"\r\n\r\n", pos)
        if e < 0:
            break
        pos = e + 4
    return buf[:pos], buf[pos:]


def response_status(head: bytes) -> int:
    """Return the status code of a response head, 0 if it has none."""
    code = head[9:12]
    return int(code) if code.isdigit() else 0


def edit_response_head(head: bytes, cookie: bytes = b"", close: bool = False) -> bytes:
    """Insert a Set-Cookie line (cookie, CRLF-terminated) and/or replace Connection with `Connection: close`."""
    at = head.find(b"\r\n") + 2
    rest = head[at:]
    if close:
        kept = [ln for ln in rest[:-4].split(b"\r\n")
                if ln and ln.split(b":", 1)[0].strip().lower() not in (b"connection", b"keep-alive")]
        rest = b"".join(ln + b"\r\n" for ln in kept) + b"Connection: close\r\n\r\n"
    return head[:at] + cookie + rest
