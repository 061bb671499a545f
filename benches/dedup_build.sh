#!/usr/bin/env bash
# Issue 16's local build target: `images build` of a deduplicated image against the same disk
# registered as a self-contained archive, in one local library, release binary.
#   cold  the library's files evicted from the page cache before each build (posix_fadvise
#         DONTNEED on every file: what a build finds when the image was registered long ago)
#   warm  the library's files read into the page cache first
# Builds alternate dedup / plain, REPS of each per mode; prints every run and the medians.
#
#   IMGPACK_CORPUS=/work/bench-corpus bash benches/dedup_build.sh [--reps N] [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
source benches/common.sh

reps=5 build=1
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
export IMGPACK_ACCOUNT=acc-bench IMGPACK_LIBRARY=$work/lib

id_of() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])['id'])"; }
dedup=$(IMGPACK_DEDUP=on "$bin" images snapshot --disk "$disk" -n dedup --json --quiet | id_of)
plain=$(IMGPACK_DEDUP=off "$bin" images snapshot --disk "$disk" -n plain --json --quiet | id_of)


: >"$work/times"
sync
for mode in cold warm; do
    for rep in $(seq "$reps"); do
        for kind in dedup plain; do
            id=$dedup; [[ $kind == plain ]] && id=$plain
            rm -f "$work/server.raw"
            sync
            if [[ $mode == cold ]]; then page_cache evict "$IMGPACK_LIBRARY"; else page_cache load "$IMGPACK_LIBRARY"; fi
            /usr/bin/time -f "$mode-$kind %e %U %S" -a -o "$work/times" \
                "$bin" images build "$id" --disk "$work/server.raw" --disk-size "$size" --json --quiet >/dev/null
        done
    done
done
cmp "$work/server.raw" "$disk" && echo "built disk == debian.raw"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/times" <<'PY'
import sys, statistics
runs = {}
for line in open(sys.argv[1]):
    name, wall, user, sys_ = line.split()
    runs.setdefault(name, []).append((float(wall), float(user) + float(sys_)))
med = {n: statistics.median(w for w, _ in r) for n, r in runs.items()}
for n, r in runs.items():
    print(f"{n:12} wall {' '.join(f'{w:.2f}' for w, _ in r):36} cpu {' '.join(f'{c:.2f}' for _, c in r):36} median wall {med[n]:.2f}")
for mode in ("cold", "warm"):
    print(f"{mode}: dedup/plain build wall {med[mode + '-dedup'] / med[mode + '-plain']:.2f}x")
PY
