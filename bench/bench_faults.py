"""Print what the fault proxy adds, with no toxic, to a Redis PING and to an S3 GET of a small object.

The proxy sits in the measuring path of the s3-latency and redis-outage scenarios, so its own cost
must be small next to what it injects. Direct and proxied calls are interleaved, so the machine's
noise hits both alike; the figures are medians (p50) and p99 in microseconds.

    python bench/bench_faults.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import redis
from minio import Minio

from statelab import services


def interleaved(direct: Callable[[], object], proxied: Callable[[], object], calls: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"direct": [], "proxied": []}
    for i in range(calls):
        for name, call in (("direct", direct), ("proxied", proxied)) if i % 2 else (("proxied", proxied),
                                                                                      ("direct", direct)):
            started = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - started) * 1e6)
    return samples


def report(what: str, samples: dict[str, list[float]]) -> None:
    p50 = {k: statistics.median(v) for k, v in samples.items()}
    p99 = {k: statistics.quantiles(v, n=100)[98] for k, v in samples.items()}
    print(f"{what:<22} direct p50 {p50['direct']:7.0f} us  p99 {p99['direct']:7.0f} us | proxied p50 "
          f"{p50['proxied']:7.0f} us  p99 {p99['proxied']:7.0f} us | added p50 {p50['proxied'] - p50['direct']:6.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    stores = [services.start_redis(run_dir), services.start_s3(run_dir)]
    started = list(stores)
    try:
        for store in stores:
            store.wait_ready()
        redis_svc, s3 = stores
        faults = services.start_faults(run_dir, {"redis": f"127.0.0.1:{redis_svc.extra['port']}",
                                                 "s3": s3.url.removeprefix("http://")}).wait_ready()
        started.append(faults)
        direct_redis = redis.Redis(port=int(redis_svc.extra["port"]))
        host, port = faults.extra["redis"].split(":")
        proxied_redis = redis.Redis(host=host, port=int(port))
        report("Redis PING", interleaved(direct_redis.ping, proxied_redis.ping, args.calls))

        def s3_client(netloc: str) -> Minio:
            return Minio(netloc, access_key=s3.extra["access_key"], secret_key=s3.extra["secret_key"], secure=False,
                         region="us-east-1")

        direct_s3, proxied_s3 = s3_client(s3.url.removeprefix("http://")), s3_client(faults.extra["s3"])
        direct_s3.make_bucket("bench")
        direct_s3.put_object("bench", "small", io.BytesIO(b"x" * 1024), 1024)

        def get(client: Minio) -> Callable[[], object]:
            def call() -> object:
                response = client.get_object("bench", "small")
                try:
                    return response.read()
                finally:
                    response.close()
                    response.release_conn()
            return call

        report("S3 GET 1 KB", interleaved(get(direct_s3), get(proxied_s3), max(200, args.calls // 5)))
    finally:
        for service in reversed(started):
            service.stop()


if __name__ == "__main__":
    main()
