"""s3-latency: object storage is slower than a local disk; what each upload and download pays, and what helps."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from minio import Minio

from statelab import measure
from statelab.harness import Harness, crowd_series, error_notes
from statelab.httpclient import HttpClient, HttpError
from statelab.scenario import (AppCase, CaseContext, Figure, Finding, Latency, Measurements, Profile, Tolerance,
                               Verdict, judge, percentile, scale_profile)
from statelab.topology import Lab
from statelab.turns import IN_TURNS
from statelab.users import CrowdResult, Journey, Population, VirtualUser

SLOW, CACHED, PRESIGNED = "S3 + 50 ms", "S3 + 50 ms + read cache", "S3 + 50 ms + presigned"
LATENCY_MS = {SLOW: 50, CACHED: 50, PRESIGNED: 50}  # added to every S3 response by the fault proxy
FILE_BYTES = 100_000
READS_PER_UPLOAD = 3  # files are read more often than written
HANG_S = 2.0  # twice the apps' store timeout (LAB_STORE_TIMEOUT_S, 1 s): slower than that is a hang
SEED_PRODUCTS = 20
SEED_USERS = 20
TIMEOUT_S = 5.0
WORK_TIMEOUT_S = 30.0  # the users do a fixed amount of work; on a very busy machine it takes longer, not less


@dataclass
class Transfers:
    """What the users measured of their uploads and downloads (user side, ms); touched from the crowd's loop only.

    `s3_down` is set by the scenario's thread while the fault proxy keeps S3 away.
    """

    s3_down: bool = False
    upload_ms: list[float] = field(default_factory=list)
    download_ms: list[float] = field(default_factory=list)  # until the user has the bytes (following a redirect)
    app_ms: list[float] = field(default_factory=list)  # the app's part of each download (the redirect, if any)
    app_bytes: int = 0  # download bytes that went through the app
    acked: dict[str, str] = field(default_factory=dict)  # key -> sha256 of every upload answered 201
    corrupt: int = 0
    errors: int = 0  # uploads or downloads that failed outside the outage
    down_ms: list[float] = field(default_factory=list)  # uploads tried while S3 was down
    down_statuses: dict[int, int] = field(default_factory=dict)
    hangs: int = 0


def transfer_journey(t: Transfers, reads: int = READS_PER_UPLOAD) -> Journey:
    """Return a journey: log in, upload a 100 KB file, read it `reads` times; while S3 is down, only try uploads.

    One step is one upload and its reads, so a population with `steps` does the same work in every case.
    """
    async def transfers(user: VirtualUser) -> None:
        s3_clients: dict[tuple[str, int], HttpClient] = {}
        try:
            while user.running:
                if not user.logged_in and not await user.login():
                    await user.pause_after_error()
                    continue
                await _cycle(user, t, reads, s3_clients)
                user.steps_done += 1
        finally:
            for client in s3_clients.values():
                client.close()

    return transfers


async def _cycle(user: VirtualUser, t: Transfers, reads: int, s3_clients: dict[tuple[str, int], HttpClient]) -> None:
    data = user.rng.randbytes(FILE_BYTES)
    boundary = f"statelab{user.spec.index:04d}{user.steps_done:06d}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    down = t.s3_down
    started = time.perf_counter()
    r = await user.call("POST", "/uploads", body=body, content_type=f"multipart/form-data; boundary={boundary}",
                        ok=(503,))
    ms = (time.perf_counter() - started) * 1000
    t.hangs += ms > HANG_S * 1000
    digest = hashlib.sha256(data).hexdigest()
    if r is not None and r.status == 201:
        t.acked[str(json.loads(r.body).get("key", ""))] = digest
    if down or t.s3_down:  # tried, or answered, while S3 was away
        t.down_ms.append(ms)
        status = r.status if r is not None else 0
        t.down_statuses[status] = t.down_statuses.get(status, 0) + 1
        await user.think()
        return
    if r is None or r.status != 201:
        t.errors += 1
        return
    t.upload_ms.append(ms)
    key = str(json.loads(r.body).get("key", ""))
    await user.think()
    for _ in range(reads):
        if t.s3_down or not user.running:
            return
        await _download(user, t, key, digest, s3_clients)


async def _download(user: VirtualUser, t: Transfers, key: str, digest: str,
                    s3_clients: dict[tuple[str, int], HttpClient]) -> None:
    started = time.perf_counter()
    r = await user.call("GET", f"/uploads/{key}", ok=(503,))
    app_ms = (time.perf_counter() - started) * 1000
    t.hangs += app_ms > HANG_S * 1000
    if r is None or r.status not in (200, 302):
        t.errors += not t.s3_down  # a download cut by the outage is the outage's, counted there
        return
    got = r.body
    if r.status == 302:  # a presigned URL: the bytes come from S3 itself
        where = urlsplit(r.header("location"))
        addr = (where.hostname or "127.0.0.1", where.port or 80)
        client = s3_clients.setdefault(addr, HttpClient(addr[0], addr[1], timeout_s=TIMEOUT_S))
        try:
            s3 = await client.request("GET", f"{where.path}?{where.query}")
        except HttpError:
            t.errors += 1
            return
        if s3.status != 200:
            t.errors += 1
            return
        got = s3.body
    else:
        t.app_bytes += len(got)
    ms = (time.perf_counter() - started) * 1000
    t.hangs += ms > HANG_S * 1000
    t.app_ms.append(app_ms)
    t.download_ms.append(ms)
    t.corrupt += hashlib.sha256(got).hexdigest() != digest
    await user.think()


@dataclass(frozen=True)
class S3Latency:
    """Object storage answers in milliseconds where a local disk answers in microseconds, on every call.

    What breaks: nothing, at first. Moving uploads from the instance's disk to S3 is what lets any
    instance serve any file (see `local-disk-upload`), but every upload now waits for a PUT and
    every download for a stat and a GET over the network. On loopback S3 adds a few milliseconds;
    across a real network, or from a busy S3, tens more. Here a fault proxy between the app and S3
    adds 50 ms to each S3 answer: uploads pay it once, proxied downloads twice (is it the owner's,
    then the bytes), and the app's threads wait all that time.

    Why: the principle at stake is that a backing service is a network call. The stateless design
    trades the disk's speed for being shared and durable, and the bill arrives per request.

    What helps: a read cache of uploads in the app (safe without invalidation, since an upload never
    changes) serves repeated downloads without S3; presigned URLs send the bytes from S3 to the user,
    so the app only signs a redirect (it still pays one stat) and the user still waits for S3. And
    with S3 down, uploads must fail fast with a 503, never hang, and never leave half a file behind:
    the fault proxy takes S3 away for a moment at the end of each S3 column to check exactly that.
    """

    name: str = "s3-latency"
    title: str = "Object storage latency"
    summary: str = "uploads and downloads of 100 KB: local disk vs S3, S3 + 50 ms, and what mitigates it"
    traffic: str = IN_TURNS  # it measures latency: the cases take turns
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("download_p50_ms", "<=", 60, "a typical download stays under 60 ms"),
        Tolerance("hangs", "==", 0, f"no request takes longer than {HANG_S:.0f} s, even with S3 down"),
        Tolerance("half_written", "==", 0, "no stored file is partial or unacknowledged"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("uploads", ">=", 5, "users must have uploaded files"),
        Tolerance("downloads", ">=", 10, "users must have downloaded them"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateful", expect="survived"),
                AppCase("stateless", expect="survived"),
                AppCase("stateless", variant=SLOW, expect="reproduced"),
                AppCase("stateless", variant=CACHED, env=(("LAB_S3_READ_CACHE_BYTES", str(16 << 20)),),
                        expect="survived"),
                AppCase("stateless", variant=PRESIGNED, env=(("LAB_S3_DOWNLOADS", "presigned"),), expect=None,
                        in_quick=False))

    @property
    def expect(self) -> dict[str, Finding]:
        return {c.label: c.expect for c in self.cases() if c.expect is not None}

    def profile(self, quick: bool, users: int | None) -> Profile:
        # Few users with a short pause: the app must not queue requests, or latency measures the queue, not S3.
        # A fixed amount of work (uploads per user), not a duration: every case measures the same transfers.
        return Profile(users=scale_profile(4, quick, 2, users), instances=1, phase_s=0.0,
                       extra=(("uploads_per_user", 4 if quick else 10), ("uploads_while_down", 3 if quick else 10),
                              ("think_s", 0.05)), seed_users=SEED_USERS)

    def run(self, ctx: CaseContext) -> Measurements:
        profile, app = ctx.profile, ctx.app
        stateless = app.app == "stateless"
        with Harness(ctx) as h:
            # One instance, no balancer: the stateful app's files are on its disk, and this is about S3.
            lab = h.start_lab(1, "round-robin", seed_users=profile.seed_users, seed_products=SEED_PRODUCTS,
                              job_workers=0, balancer=False, s3_faults=stateless)
            h.start_samplers()
            latency_ms = LATENCY_MS.get(app.variant, 0)
            if latency_ms:
                lab.faults.add_toxic("s3", "latency", attributes={"latency": latency_ms})
            t, think = Transfers(), profile.get("think_s", 0.05)
            crowds = [h.crowd(Population(distinct_users=profile.users, think_s=think,
                                         steps=int(profile.get("uploads_per_user"))),
                              transfer_journey(t), ctx.seed, ramp_s=0.2, request_timeout_s=TIMEOUT_S)]
            h.phase("users upload and download", f"{profile.users} users x {int(profile.get('uploads_per_user'))} "
                                                 f"files of 100 KB, each read {READS_PER_UPLOAD} times"
                                                 + (f", S3 + {latency_ms} ms" if latency_ms else ""))
            h.wait_done(crowds[0], WORK_TIMEOUT_S)
            if stateless:
                h.phase("S3 is down", "the fault proxy refuses connections and drops the open ones")
                t.s3_down = True
                lab.faults.set_enabled("s3", False)
                crowds.append(h.crowd(Population(distinct_users=profile.users, think_s=think,
                                                 steps=int(profile.get("uploads_while_down")),
                                                 first_account=profile.users + 1),
                                      transfer_journey(t), ctx.seed + 1, ramp_s=0.0, request_timeout_s=TIMEOUT_S))
                h.wait_done(crowds[1], WORK_TIMEOUT_S)
            result, *_ = h.finish(*crowds)
            if stateless:
                lab.faults.set_enabled("s3", True)
            stored = _stored(lab, stateless, since=h.t0 - 1.0)
            return self._measure(h, t, result, stored, stateless)

    def _measure(self, h: Harness, t: Transfers, result: CrowdResult, stored: dict[str, tuple[int, str]],
                 stateless: bool) -> Measurements:
        # Partial: shorter or longer than every upload, or not the bytes acknowledged. An orphan is a
        # whole file the user never got a 201 for (S3 stored it, the answer was lost): waste, not damage.
        half = sum(1 for k, (size, digest) in stored.items() if size != FILE_BYTES or k in t.acked and
                   t.acked[k] != digest)
        orphans = sum(1 for k, (size, _) in stored.items() if size == FILE_BYTES and k not in t.acked)
        latency = Latency(_p(t.download_ms, 50), _p(t.download_ms, 99), len(t.download_ms), "downloads")
        down_503 = t.down_statuses.get(503, 0)
        figures = (
            Figure("uploads", "uploads stored (201)", len(t.upload_ms), "files"),
            Figure("downloads", "downloads with the bytes", len(t.download_ms), "files"),
            Figure("upload_p50_ms", "upload p50", _p(t.upload_ms, 50), "ms"),
            Figure("upload_p99_ms", "upload p99", _p(t.upload_ms, 99), "ms"),
            Figure("download_p50_ms", "download p50 (until the user has the bytes)", latency.p50_ms, "ms"),
            Figure("download_p99_ms", "download p99", latency.p99_ms, "ms"),
            Figure("app_download_p50_ms", "app time per download, p50 (the redirect, if any)", _p(t.app_ms, 50), "ms"),
            Figure("app_bytes_per_download", "bytes per download through the app",
                   round(t.app_bytes / len(t.download_ms)) if t.download_ms else math.nan, "B"),
            Figure("corrupt", "downloads with the wrong bytes", t.corrupt, "files"),
            Figure("errors", "uploads or downloads that failed (S3 up)", t.errors, "req"),
            Figure("s3_down_uploads", "uploads tried while S3 was down", len(t.down_ms) if stateless else math.nan,
                   "req"),
            Figure("s3_down_503", "of those, answered 503 JSON", down_503 if stateless else math.nan, "req"),
            Figure("s3_down_p99_ms", "p99 time to that answer", _p(t.down_ms, 99) if stateless else math.nan, "ms"),
            Figure("hangs", f"requests slower than {HANG_S:.0f} s", t.hangs, "req"),
            Figure("half_written", "stored files that are partial or not what was acknowledged", half, "files"),
            Figure("orphans", "whole files stored whose upload was never acknowledged", orphans, "files"),
        )
        notes: tuple[str, ...] = (f"{len(stored)} files stored for {len(t.acked)} uploads acknowledged",)
        if t.down_statuses:
            notes += ("while S3 was down, uploads answered: " + ", ".join(
                f"{s or 'no answer'} x{n}" for s, n in sorted(t.down_statuses.items())),)
        notes += error_notes(result)
        return Measurements(figures, latency, h.events(), crowd_series(result), (), notes)

    def verdict(self, m: Measurements) -> Verdict:
        return judge(m, self.tolerances, self.preconditions, survived_because=_survived(m),
                     reproduced_because=f"Every download waited for S3 twice (is it the owner's, then the bytes): "
                                        f"{_fmt(m.value('download_p50_ms'))} ms at p50, "
                                        f"{_fmt(m.value('app_download_p50_ms'))} ms of it in the app.")


def _survived(m: Measurements) -> str:
    p50, p99 = m.value("download_p50_ms"), m.value("download_p99_ms")
    text = f"Downloads took {_fmt(p50)} ms at p50"
    if p99 > 2 * p50 + 20:  # a slow tail: the first read of each file, which the cache cannot serve
        text += f" (p99 {_fmt(p99)} ms: the first read of each file still goes to S3)"
    if m.value("s3_down_uploads") == m.value("s3_down_uploads"):
        text += "; with S3 down, uploads failed fast and left nothing half-written"
    return text + "."


def _stored(lab: Lab, stateless: bool, since: float) -> dict[str, tuple[int, str]]:
    """Return what this run stored, straight from the store (not through the app or the fault proxy).

    Key -> (size, sha256), for files written since `since` (wall clock): a reused run directory keeps
    an earlier run's files, which are not this run's to judge.
    """
    if not stateless:
        out: dict[str, tuple[int, str]] = {}
        for inst in lab.instances:
            for path in Path(lab.run_dir, "uploads", inst).glob("*"):
                if (path.suffix == ".bin" or path.name.endswith(".tmp")) and path.stat().st_mtime >= since:
                    data = path.read_bytes()
                    out[path.name.removesuffix(".bin")] = (len(data), hashlib.sha256(data).hexdigest())
        return out
    s3 = lab.stores["s3"]
    client = Minio(s3.url.removeprefix("http://"), access_key=s3.extra["access_key"],
                   secret_key=s3.extra["secret_key"], secure=False, region="us-east-1")
    bucket = lab.backing.s3_bucket if lab.backing is not None else "statelab-uploads"
    found: dict[str, tuple[int, str]] = {}
    for obj in client.list_objects(bucket):
        if obj.last_modified is not None and obj.last_modified.timestamp() < since:
            continue
        name = obj.object_name or ""
        response = client.get_object(bucket, name)
        try:
            data = response.read()
            found[name] = (len(data), hashlib.sha256(data).hexdigest())
        finally:
            response.close()
            response.release_conn()
    return found


def _p(values: list[float], q: float) -> float:
    return round(percentile(values, q), 2) if values else math.nan


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


SCENARIO = S3Latency()
