#!/usr/bin/env bash
# Issue 16's targets on the Debian benchmark disk, interleaved in one run, release binary:
#   first    `images snapshot` of debian.raw into an empty deduplicated library (a full registration)
#   plain    the same into a self-contained archive (IMGPACK_DEDUP=off), the baseline
#   again    the identical disk again into the deduplicated library (every chunk reused)
#   snap100  a snapshot of a server built from the image after 100 MiB of new random data
#            written at 1 GiB (dd conv=notrunc)
#   build    `images build` of the deduplicated image and of the self-contained one, the
#            library's files evicted from the page cache first (a registration leaves its
#            frames cached but not its archive, written around the cache); build_dedup2 builds
#            the deduplicated image again. benches/dedup_build.sh times cold and warm
#            builds in more repetitions.
#
#   IMGPACK_CORPUS=/work/bench-corpus bash benches/dedup.sh [--reps N] [--no-build]
#
# `images snapshot --disk` reads the disk in place through the same pipeline as `images
# register` of an upload, without copying 4 GiB into incoming/. Prints each run's wall, user
# and sys seconds (/usr/bin/time), the medians, the bytes stored by each step and the load.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
source benches/common.sh

reps=3 build=1
while (($#)); do
    case $1 in
        --reps) reps=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
((build)) && cargo build --release --quiet --bin imgpack
bin=$PWD/target/release/imgpack
disk=${IMGPACK_CORPUS:-/work/bench-corpus}/debian.raw
size=$(stat -c %s "$disk")
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
export IMGPACK_ACCOUNT=acc-bench

timed() { # NAME CMD... : appends "NAME wall user sys" to $work/times
    local name=$1; shift
    sync
    /usr/bin/time -f "$name %e %U %S" -a -o "$work/times" "$@" >"$work/last.json"
}
json_field() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])" "$work/last.json" "$1"; }
chunk_bytes() { du -sb "$1/chunks" 2>/dev/null | cut -f1 || echo 0; }

: >"$work/times"
for rep in $(seq "$reps"); do
    lib=$work/lib-$rep
    mkdir -p "$lib"
    export IMGPACK_LIBRARY=$lib
    IMGPACK_DEDUP=on timed first "$bin" images snapshot --disk "$disk" -n first --json --quiet
    first=$(json_field id)
    echo "rep $rep first: new_chunks $(json_field new_chunks) new_stored_bytes $(json_field new_stored_bytes) compressed_size $(json_field compressed_size)"
    IMGPACK_DEDUP=off timed plain "$bin" images snapshot --disk "$disk" -n plain --json --quiet
    plain=$(json_field id)
    before=$(chunk_bytes "$lib")
    IMGPACK_DEDUP=on timed again "$bin" images snapshot --disk "$disk" -n again --json --quiet
    again=$(json_field id)
    echo "rep $rep again: reused_chunks $(json_field reused_chunks) new_chunks $(json_field new_chunks) chunk bytes added $(( $(chunk_bytes "$lib") - before )) index $(stat -c %s "$lib/images/$again.index")"
    page_cache evict "$lib"
    timed build_dedup "$bin" images build "$first" --disk "$work/server.raw" --disk-size "$size" --json --quiet
    rm -f "$work/server.raw"
    page_cache evict "$lib"
    timed build_plain "$bin" images build "$plain" --disk "$work/server.raw" --disk-size "$size" --json --quiet
    rm -f "$work/server.raw"
    timed build_dedup2 "$bin" images build "$first" --disk "$work/server.raw" --disk-size "$size" --json --quiet
    dd if=/dev/urandom of="$work/server.raw" bs=1M seek=1024 count=100 conv=notrunc status=none
    before=$(chunk_bytes "$lib")
    IMGPACK_DEDUP=on timed snap100 "$bin" images snapshot --disk "$work/server.raw" -n nightly --json --quiet
    snap=$(json_field id)
    echo "rep $rep snap100: new_chunks $(json_field new_chunks) new_bytes $(json_field new_bytes) reused_chunks $(json_field reused_chunks) chunk bytes added $(( $(chunk_bytes "$lib") - before )) index $(stat -c %s "$lib/images/$snap.index")"
    # Each repetition's library is kept until the end: ext4 scans past recently deleted
    # inodes when it allocates new ones, so deleting 1,374 frame files just before the next
    # first registration would add their cost to it (15% of its CPU, measured with perf).
    rm -f "$work/server.raw"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/times" <<'PY'
import sys, statistics
runs = {}
for line in open(sys.argv[1]):
    name, wall, user, sys_ = line.split()
    runs.setdefault(name, []).append((float(wall), float(user) + float(sys_)))
med = {n: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for n, r in runs.items()}
for n, r in runs.items():
    print(f"{n:12} wall {' '.join(f'{w:.2f}' for w, _ in r):30} cpu {' '.join(f'{c:.2f}' for _, c in r):30} median wall {med[n][0]:.2f} cpu {med[n][1]:.2f}")
def ratio(a, b):
    print(f"{a}/{b}: wall {med[a][0]/med[b][0]:.2f}x cpu {med[a][1]/med[b][1]:.2f}x")
for a, b in [("again", "first"), ("again", "plain"), ("snap100", "first"), ("snap100", "plain"), ("first", "plain"), ("build_dedup", "build_plain")]:
    ratio(a, b)
PY
