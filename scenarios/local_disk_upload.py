"""local-disk-upload: a file saved on one instance's disk is missing on every other instance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import requests

from statelab import measure
from statelab.harness import Harness, crowd_series, error_notes, failed_requests
from statelab.scenario import (AppCase, CaseContext, Figure, Finding, Measurements, Profile, Tolerance, Verdict,
                               default_cases, judge, scale_profile)
from statelab.users import JOB_DEADLINE_S, Population, VirtualUser

EXPECT: dict[str, Finding] = {"stateful": "reproduced", "stateless": "survived"}
POLICY = "round-robin"
UPLOAD_ATTEMPTS = 12  # tries to land the upload where the session is (stateful + round-robin)
PAUSE = 0.3  # mean pause before each follow-up, as a share of the population's think time


@dataclass
class FollowUps:
    """What the uploaders saw after their upload; touched only from the crowd's event loop."""

    uploads: int = 0
    upload_attempts: int = 0
    follow_ups: int = 0
    ok: int = 0
    not_found: int = 0
    no_session: int = 0
    other: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    downloads_ok: int = 0
    downloads_corrupt: int = 0

    def count(self, status: int | None) -> str:
        self.follow_ups += 1
        if status is not None and status < 400:
            self.ok += 1
            return "ok"
        if status == 404:
            self.not_found += 1
            return "404"
        if status == 401:
            self.no_session += 1
            return "401"
        self.other += 1
        return "other"

    @property
    def failed(self) -> int:
        return self.not_found + self.no_session + self.other


def uploader_journey(tally: FollowUps) -> object:
    """Return a journey: log in, upload, then process, poll the job and download, each answered by whichever instance."""
    async def local_disk_uploader(user: VirtualUser) -> None:
        while user.running:
            if not user.logged_in and not await user.login():
                await user.pause_after_error()
                continue
            await _one_upload(user, tally)
            user.steps_done += 1
            await user.think()

    return local_disk_uploader


async def _one_upload(user: VirtualUser, tally: FollowUps) -> None:
    data = user.rng.randbytes(user.rng.randint(1024, 8 * 1024))
    digest = hashlib.sha256(data).hexdigest()
    boundary = f"statelab{user.spec.index:06d}{user.steps_done:06d}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"u{user.spec.index}.txt\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    key = ""
    # Every request after a random pause, as a person clicks: round-robin then hands it to whichever
    # instance is next after the other users' requests, not to a position fixed by this user's rhythm.
    # authed=False: a 401 is counted here, not turned into a re-login (the session is fine, it is elsewhere).
    for _ in range(UPLOAD_ATTEMPTS):
        await user.think(PAUSE)
        tally.upload_attempts += 1
        response = await user.call("POST", "/uploads", body=body, ok=(401,), authed=False,
                                   content_type=f"multipart/form-data; boundary={boundary}")
        if response is None or not user.crowd.running:
            return
        if response.status == 201:
            key = str(_doc(response).get("key", ""))
            break
    if not key:
        return
    tally.uploads += 1
    await user.think(PAUSE)
    response = await user.call("POST", f"/uploads/{key}/process", ok=(401, 404), authed=False)
    if tally.count(response.status if response else None) == "ok" and response is not None:
        job_id = str(_doc(response).get("job_id", ""))
        deadline = user.crowd.loop.time() + JOB_DEADLINE_S
        while user.crowd.running and user.crowd.loop.time() < deadline:
            response = await user.call("GET", f"/jobs/{job_id}", ok=(401, 404), authed=False)
            if tally.count(response.status if response else None) != "ok" or response is None:
                break
            status = _doc(response).get("status")
            if status in ("done", "failed"):
                tally.jobs_done += status == "done"
                tally.jobs_failed += status == "failed"
                break
            await user.think(PAUSE)
    await user.think(PAUSE)
    response = await user.call("GET", f"/uploads/{key}", ok=(401, 404), authed=False)
    if tally.count(response.status if response else None) == "ok" and response is not None:
        if hashlib.sha256(response.body).hexdigest() == digest:
            tally.downloads_ok += 1
        else:
            tally.downloads_corrupt += 1


def _doc(response: object) -> dict[str, object]:
    import json

    try:
        doc = json.loads(response.body)  # type: ignore[attr-defined]
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass(frozen=True)
class LocalDiskUpload:
    """Uploads written to the local disk of whichever instance received them vanish for every other one.

    What breaks: a user uploads a file, then asks for it to be processed and downloads it. Each of
    those requests is balanced independently. With the stateful app the file (and the processing
    job's status, and the session itself) exist only on the instance that handled the upload, so
    every follow-up that lands elsewhere fails: with N instances about (N-1)/N of them. The
    stateful app checks the session first, so most failures surface as 401 (session not here)
    and job polls as 404 (job not here): both are the same mistake, state on one machine.

    Why: the principle violated is "keep no durable state in the process or on its disk"
    (twelve-factor VI: backing services hold state). A local disk is not shared, not durable
    across replacement, and makes each instance different from its siblings.

    What the stateless design does differently: files go to object storage (S3), jobs to a queue
    whose status lives in Redis, sessions to Redis; any instance answers any follow-up.
    """

    name: str = "local-disk-upload"
    title: str = "Upload to local disk"
    summary: str = "upload, process, download through a round-robin balancer: how many follow-ups find the file"
    expect: dict[str, Finding] = field(default_factory=lambda: dict(EXPECT))
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("follow_ups_failed", "<=", 0, "every follow-up must find the upload, its job and the session"),
        Tolerance("downloads_corrupt", "<=", 0, "a download returns the bytes uploaded"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("uploads", ">=", 1, "some uploads must have succeeded"),
        Tolerance("follow_ups", ">=", 10, "enough follow-up requests to compute a share"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return default_cases(self.expect)

    def profile(self, quick: bool, users: int | None) -> Profile:
        n = scale_profile(100, quick, 40, users)
        return Profile(users=n, instances=3, phase_s=2.5 if quick else 8.0,
                       extra=(("think_s", 0.5 if quick else 1.0),), seed_users=max(n, 200))

    def run(self, ctx: CaseContext) -> Measurements:
        profile, target = ctx.profile, ctx.target
        with Harness(ctx) as h:
            instances = profile.instances
            urls: list[tuple[str, str]] = []
            if target is None:
                lab = h.start_lab(instances, POLICY, seed_users=profile.seed_users)
                urls = [(i.id, i.url) for i in lab.status().instances]
            else:
                urls = [(bid, f"http://{addr}") for bid, addr in h.target_backends()]
                instances = len(urls) or instances
            h.start_samplers()
            tally = FollowUps()
            crowd = h.crowd(Population(distinct_users=profile.users, think_s=profile.get("think_s", 1.0)),
                            uploader_journey(tally), ctx.seed, ramp_s=min(1.0, profile.phase_s / 2))
            h.phase("users upload, process and download", f"{POLICY} over {instances} instances")
            h.hold(profile.phase_s, crowd)
            (result,) = h.finish(crowd)
            files = _files_per_instance(urls)
            if target is not None and not urls:
                instances = len([k for k in result.served_by if k != "-"]) or instances
            expected = 100 * (instances - 1) / instances
            share = 100 * tally.failed / tally.follow_ups if tally.follow_ups else 0.0
            latency = measure.latency(h.hits, "whole run") if h.hits else measure.Latency(
                result.latency.p50_ms, result.latency.p99_ms, result.latency.count, "whole run")
            figures = (
                Figure("users", "simulated users", result.users, "users"),
                Figure("instances", "instances behind round-robin", instances, ""),
                Figure("uploads", "uploads stored", tally.uploads, "files"),
                Figure("upload_retries", "upload attempts answered 401 (session elsewhere)",
                       tally.upload_attempts - tally.uploads, "req"),
                Figure("follow_ups", "follow-up requests (process, job status, download)", tally.follow_ups, "req"),
                Figure("follow_ups_failed", "follow-ups that failed", tally.failed, "req"),
                Figure("follow_up_failed_share", "share of follow-ups failed", round(share, 1), "%"),
                Figure("expected_failed_share", "expected if state is local: (N-1)/N", round(expected, 1), "%"),
                Figure("follow_ups_404", "follow-ups answered 404 (file or job not here)", tally.not_found, "req"),
                Figure("follow_ups_401", "follow-ups answered 401 (session not here)", tally.no_session, "req"),
                Figure("jobs_done", "processing jobs done", tally.jobs_done, "jobs"),
                Figure("jobs_failed", "processing jobs failed", tally.jobs_failed, "jobs"),
                Figure("downloads_ok", "downloads with the right bytes", tally.downloads_ok, "files"),
                Figure("downloads_corrupt", "downloads with the wrong bytes", tally.downloads_corrupt, "files"),
                Figure("failed_requests", "failed requests (no answer, timeout, 5xx)", failed_requests(result), "req"),
                Figure("p50_ms", "p50 latency of successful requests", latency.p50_ms, "ms"),
                Figure("p99_ms", "p99 latency of successful requests", latency.p99_ms, "ms"),
            )
            notes = ((f"files on each instance's local disk: {files}",) if files else ()) + error_notes(result)
            shares = measure.shares(h.hits, [iid for iid, _ in urls])
            return Measurements(figures, latency, h.events(), crowd_series(result), shares, notes)

    def verdict(self, m: Measurements) -> Verdict:
        return judge(m, self.tolerances, self.preconditions,
                     survived_because="Files in S3, jobs in Redis and sessions in Redis: every instance could "
                                      "answer every follow-up.",
                     reproduced_because=f"The upload's state stayed on the instance that took it: "
                                        f"{_fmt(m.value('follow_up_failed_share'))}% of follow-ups failed "
                                        f"(expected {_fmt(m.value('expected_failed_share'))}% = (N-1)/N).")


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v == v else "n/a"


def _files_per_instance(urls: list[tuple[str, str]]) -> str:
    """Return 'app-1 12, app-2 9' from each instance's /stats (local_files), best effort."""
    parts = []
    with requests.Session() as session:
        for iid, url in urls:
            stats = measure.fetch_stats(url, session)
            if stats is not None:
                parts.append(f"{iid} {int(measure.stats_values(stats)['local_files'])}")
    return ", ".join(parts)


SCENARIO = LocalDiskUpload()
