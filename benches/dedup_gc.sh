#!/usr/bin/env bash
# Issue 16's gc target: `images gc` over a library of 20 deduplicated images "finishes in
# seconds and removes exactly the unreferenced chunks".
#
#   bash benches/dedup_gc.sh [--bin PATH] [--s3 moto|s3s-fs] [--size-mib N]
#
# Synthetic disks (the Debian disk 20 times would take minutes here): a base disk of N MiB
# (64 by default) of random data, then 19 variants of it, variant k with 2 MiB of its own
# random data at MiB (2k mod N). With 1 MiB chunks the base stores N frames and each variant
# exactly 2 new ones (reusing the other N-2). Destroying the 10 odd variants leaves their 20
# frames referenced by nothing: gc must remove exactly those 20 and keep N + 18, and every
# surviving image must still build byte for byte. Prints gc's wall and CPU time and checks all
# of it (exit status 1 on any difference). `--s3 KIND` puts the library on a loopback S3 server
# (benches/s3_server.sh; IMGPACK_MOTO_SERVER for moto) with a SQLite catalog beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$PWD/target/release/imgpack size=64 s3=
while (($#)); do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        --s3) s3=$2; shift 2 ;;
        --size-mib) size=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
work=$(mktemp -d)
trap 'if [[ -n ${S3_SERVER_PID:-} ]]; then kill "$S3_SERVER_PID" 2>/dev/null; fi; rm -rf "$work"' EXIT
export IMGPACK_LIBRARY=$work/lib IMGPACK_DEDUP=on IMGPACK_ACCOUNT=acc-bench
if [[ -n $s3 ]]; then
    source benches/s3_server.sh
    start_s3_server "$s3" "$work" bench
    export IMGPACK_LIBRARY=s3://bench/lib IMGPACK_CATALOG=sqlite:$work/catalog.db
fi
export -n IMGPACK_OPERATOR 2>/dev/null || true
json_field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])[sys.argv[1]])" "$1"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

head -c $((size << 20)) /dev/urandom >"$work/base.raw"
ids=() disks=()
for k in $(seq 0 19); do
    disk=$work/disk-$k.raw
    cp --sparse=always "$work/base.raw" "$disk"
    ((k)) && dd if=/dev/urandom of="$disk" bs=1M seek=$(((2 * k) % size)) count=2 conv=notrunc status=none
    out=$("$bin" images snapshot --disk "$disk" -n "gc-$k" --json --quiet)
    ids+=("$(json_field id <<<"$out")") disks+=("$disk")
    expect_new=$(( k ? 2 : size ))
    [[ $(json_field new_chunks <<<"$out") == "$expect_new" ]] || fail "image $k stored $(json_field new_chunks <<<"$out") new chunks, expected $expect_new"
done
for k in $(seq 1 2 19); do
    IMGPACK_ACCOUNT=acc-bench "$bin" images destroy "${ids[$k]}" >/dev/null
done
/usr/bin/time -f "gc wall %e s, user %U s, sys %S s" -o "$work/gc.time" \
    env IMGPACK_ACCOUNT=brightbox "$bin" images gc --json >"$work/gc.json"
cat "$work/gc.time"
report=$(cat "$work/gc.json")
echo "gc: $report"
[[ $(json_field removed_chunks <<<"$report") == 20 ]] || fail "gc removed $(json_field removed_chunks <<<"$report") chunks, expected 20"
[[ $(json_field kept_chunks <<<"$report") == $((size + 18)) ]] || fail "gc kept $(json_field kept_chunks <<<"$report") chunks, expected $((size + 18))"
if [[ $IMGPACK_LIBRARY != s3://* ]]; then
    objects=$(find "$IMGPACK_LIBRARY/chunks" -type f | wc -l)
    [[ $objects == $((size + 18)) ]] || fail "$objects chunk objects left, expected $((size + 18))"
fi
again=$(env IMGPACK_ACCOUNT=brightbox "$bin" images gc --json)
[[ $(json_field removed_chunks <<<"$again") == 0 ]] || fail "a second gc removed more: $again"
for k in $(seq 0 2 19); do
    rm -f "$work/built.raw"
    "$bin" images build "${ids[$k]}" --disk "$work/built.raw" --disk-size $((size << 20)) --quiet >/dev/null
    cmp "$work/built.raw" "${disks[$k]}" || fail "image $k does not build byte for byte after gc"
done
echo "ok: 20 images, 10 destroyed, gc removed exactly the 20 unreferenced chunks, kept $((size + 18)), the 10 survivors build byte-exact"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
