#!/usr/bin/env bash
# Per-object overhead of a loopback S3 server against a chunk frame's transfer time: is it
# worth packing small frames into larger objects (issue 16)? PUTs and GETs of a 1 KiB object
# (almost all overhead) and of a 1 MiB object (a chunk frame is 0.3-1 MiB), interleaved,
# timed in one boto3 client with a kept-alive connection (as imgpack's client keeps its
# connections), medians of N. (curl is not used: its one-connection-per-request timing
# showed ~40 ms for any size, the delayed-ACK artefact, not the server.)
#
#   IMGPACK_MOTO_SERVER=.../moto_server bash benches/s3_object_overhead.sh [moto|s3s-fs] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/s3_server.sh
kind=${1:-moto} reps=${2:-30}
work=$(mktemp -d)
trap 'if [[ -n ${S3_SERVER_PID:-} ]]; then kill "$S3_SERVER_PID" 2>/dev/null; fi; rm -rf "$work"' EXIT
start_s3_server "$kind" "$work" bench
"${IMGPACK_PYTHON:-/root/.pyenv/versions/3.11.7/bin/python}" - "$kind" "$reps" <<'PY'
import os, statistics, sys, time
import boto3
from botocore.config import Config
kind, reps = sys.argv[1], int(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"], region_name="us-east-1",
                  config=Config(retries={"max_attempts": 0}))
bodies = {"1 KiB": os.urandom(1024), "1 MiB": os.urandom(1 << 20)}
times = {(size, op): [] for size in bodies for op in ("PUT", "GET")}
for i in range(reps):
    for size, body in bodies.items():
        key = f"{size.replace(' ', '')}-{i}"
        start = time.perf_counter(); s3.put_object(Bucket="bench", Key=key, Body=body)
        times[(size, "PUT")].append(time.perf_counter() - start)
        start = time.perf_counter(); s3.get_object(Bucket="bench", Key=key)["Body"].read()
        times[(size, "GET")].append(time.perf_counter() - start)
print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
for op in ("PUT", "GET"):
    small = statistics.median(times[("1 KiB", op)]) * 1000
    large = statistics.median(times[("1 MiB", op)]) * 1000
    print(f"{kind} {op}: 1 KiB {small:.1f} ms, 1 MiB {large:.1f} ms (medians of {reps}, one kept-alive "
          f"connection): per-object overhead ~{small:.1f} ms = {100 * small / large:.0f}% of a 1 MiB object's time")
PY
