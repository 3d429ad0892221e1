"""The balancer's own framing rules, without sockets: head checks, body framing, chunks, answers, head edits."""

from __future__ import annotations

import json

import pytest

from statelab.balancer.framing import (BadRequest, ChunkTracker, body_framing, check_head, check_host,
                                       edit_response_head, error_response, header_spans, is_idempotent, response_status,
                                       routing, says_keep_alive, split_interim)


def framing_of(head: bytes) -> tuple[int, bool]:
    return body_framing(head.lower(), head)


def refusal(fn: object, *args: object) -> tuple[int, str]:
    with pytest.raises(BadRequest) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.status, str(info.value)


def test_header_spans_find_every_value() -> None:
    low = b"get / http/1.1\r\nhost: a\r\ncookie: x=1\r\nx: y\r\ncookie: z=2\r\n\r\n"
    assert [low[s:e] for s, e in header_spans(low, b"cookie")] == [b" x=1", b" z=2"]
    assert header_spans(low, b"content-length") == []


@pytest.mark.parametrize(("head", "expected"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", (-1, False)),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n", (12, False)),
    (b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length:  7 \r\nContent-Length: 7\r\n\r\n", (7, False)),  # same value
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", (-1, True)),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTRANSFER-ENCODING: Chunked\r\n\r\n", (-1, True)),
])
def test_body_framing_is_read_the_way_llhttp_reads_it(head: bytes, expected: tuple[int, bool]) -> None:
    assert framing_of(head) == expected


@pytest.mark.parametrize(("head", "status", "reason"), [
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "conflicting Content-Length headers"),
    (b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n", 400, "malformed Content-Length"),
    (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", 400, "malformed Content-Length"),
    (b"POST / HTTP/1.1\r\nContent-Length: 1234567890123456789\r\n\r\n", 413, "Content-Length too large"),
    (b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "both Content-Length and Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400,
     "unsupported or obfuscated Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "unsupported or obfuscated Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n", 400, "malformed framing header"),
])
def test_ambiguous_framing_is_refused(head: bytes, status: int, reason: str) -> None:
    assert refusal(framing_of, head) == (status, reason)


def test_host_is_required_once_in_http11_and_at_most_once_in_http10() -> None:
    check_host(b"get / http/1.1\r\nhost: a\r\n\r\n", b"GET / HTTP/1.1")
    check_host(b"get / http/1.0\r\n\r\n", b"GET / HTTP/1.0")
    check_host(b"get / http/1.1\r\nhost:\r\n\r\n", b"GET / HTTP/1.1")  # empty is allowed (no authority)
    assert refusal(check_host, b"get / http/1.1\r\nx: host: a\r\n\r\n", b"GET / HTTP/1.1") == (
        400, "HTTP/1.1 request without a Host header")
    assert refusal(check_host, b"get / http/1.0\r\nhost: a\r\nhost: b\r\n\r\n", b"GET / HTTP/1.0") == (
        400, "more than one Host header")


def test_head_limits_are_431() -> None:
    check_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 100, 3)
    assert refusal(check_head, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 10, 3) == (431, "request head too large")
    assert refusal(check_head, b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", 100, 3) == (431, "too many request headers")


def test_chunk_tracker_finds_the_end_across_pieces() -> None:
    body = b"3\r\nabc\r\n10;ext=1\r\n" + b"x" * 16 + b"\r\n0\r\nTrailer: t\r\n\r\n"
    for cut in range(1, len(body)):
        t = ChunkTracker()
        first = t.feed(body[:cut])
        assert first == -1 or first == len(body)
        if first == -1:
            assert t.feed(body[cut:] + b"NEXT") == len(body) - cut


@pytest.mark.parametrize(("body", "why"), [
    (b"zz\r\nabc\r\n", "malformed chunk size"),
    (b"0x3\r\nabc\r\n", "malformed chunk size"),
    (b"fffffffffffffffff1\r\n", "malformed chunk size"),
    (b"2\r\nabc\r\n", "chunk data not followed by CRLF"),
    (b"3\nabc\r\n", "chunk line without CRLF"),
    (b"1" * 5000, "chunk line too long"),
    (b"0\r\n" + b"T: 1\r\n" * 40, "too many trailers"),
])
def test_chunk_tracker_refuses_malformed_chunks(body: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        ChunkTracker().feed(body)


def test_error_answers_have_the_apps_json_shape_and_say_who_answered() -> None:
    for status in (400, 408, 413, 431, 502, 503, 504):
        raw = error_response(status, f"why {status}")
        head, body = raw.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 %d " % status)
        assert b"X-Served-By: balancer" in lines and b"Connection: close" in lines
        assert b"Content-Type: application/json" in lines and b"Content-Length: %d" % len(body) in lines
        assert json.loads(body) == {"error": f"why {status}"}


def test_interim_responses_are_split_off_complete_ones_only() -> None:
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert split_interim(final) == (b"", final)
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    assert split_interim(interim + final) == (interim, final)
    assert split_interim(interim + b"HTTP/1.1 100 Cont") == (interim, b"HTTP/1.1 100 Cont")
    assert split_interim(b"HTTP/1.1 1") == (b"", b"HTTP/1.1 1")
    assert response_status(final) == 200 and response_status(b"garbage") == 0


def test_response_head_edits() -> None:
    head = b"HTTP/1.1 401 Unauthorized\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n"
    assert edit_response_head(head, close=True) == (
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
    cookie = b"Set-Cookie: LAB_BACKEND=app-1; path=/\r\n"
    assert edit_response_head(head, cookie) == head.replace(b"\r\n", b"\r\n" + cookie, 1)
    assert edit_response_head(b"HTTP/1.1 204 No Content\r\n\r\n", cookie, close=True) == (
        b"HTTP/1.1 204 No Content\r\n" + cookie + b"Connection: close\r\n\r\n")


def test_only_idempotent_methods_may_be_sent_twice() -> None:
    assert is_idempotent(b"GET / HTTP/1.1") and is_idempotent(b"PUT /x HTTP/1.1")
    assert not is_idempotent(b"POST /login HTTP/1.1") and not is_idempotent(b"PATCH /x HTTP/1.1")


def test_routing_key_and_sticky_cookie() -> None:
    head = (b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.7, 10.0.0.1\r\n"
            b"Cookie: a=1; LAB_BACKEND=app-2; b=2\r\n\r\n")
    assert routing(head, head.lower(), "127.0.0.1", False, False) == ("127.0.0.1", None, head)
    key, sticky, forwarded = routing(head, head.lower(), "127.0.0.1", True, True)
    assert (key, sticky) == ("198.51.100.7", "app-2")
    assert forwarded == head.replace(b"a=1; LAB_BACKEND=app-2; b=2", b"a=1; b=2")  # indirect: the backend never sees it
    only_ours = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: LAB_BACKEND=app-1\r\n\r\n"
    assert routing(only_ours, only_ours.lower(), "127.0.0.1", False, True) == (
        "127.0.0.1", "app-1", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


@pytest.mark.parametrize(("head", "expected"), [
    ("get / http/1.1\r\nhost: a\r\nconnection: keep-alive\r\n\r\n", True),
    ("get / http/1.1\r\nhost: a\r\nconnection:keep-alive \r\n\r\n", True),
    ("get / http/1.1\r\nhost: a\r\n\r\n", False),
    ("get / http/1.1\r\nhost: a\r\nconnection: close\r\n\r\n", False),
    ("get / http/1.1\r\nhost: a\r\nconnection: keep-alive, upgrade\r\n\r\n", False),
    ("get / http/1.1\r\nhost: a\r\nconnection: keep-alive\r\nconnection: close\r\n\r\n", False),
])
def test_only_a_plain_keep_alive_connection_header_may_take_the_fast_path(head: str, expected: bool) -> None:
    assert says_keep_alive(head) is expected
