#!/usr/bin/env bash
# Registration and build from an s3:// library against a local one, same run, same upload.
#
#   bash benches/s3_compare.sh [--server moto|s3s-fs] [--size SIZE_MIB] [--data DATA_MIB]
#                              [--reps N] [--qcow2 FILE] [--no-ranged] [--no-build] [IMAGE.raw]
#
# Starts a loopback S3 server (benches/s3_server.sh: moto by default, or s3s-fs), then for a
# raw upload and the same disk as a zstd-compressed qcow2 (made by qemu-img, or --qcow2 FILE)
# times, with the release binary:
#   - `images register` from a local library and from the s3:// library (qcow2 spilled, the
#     default, and, unless --no-ranged, read in place by ranged GETs: IMGPACK_S3_IMAGE_READ=ranged),
#   - a plain signed GET of the upload to /dev/null (curl),
#   - `images build` from each library, and `qemu-img convert -O raw` of the zstd qcow2.
# Without IMAGE a synthetic disk is made: SIZE MiB (1024) with DATA MiB (256) of
# half-compressible data. Prints the median wall time of N (3) runs of each, the largest peak
# RSS of the s3:// registrations and builds (/usr/bin/time), and the load average.
set -euo pipefail
cd "$(dirname "$0")/.."

size=1024 data=256 reps=3 image="" build=1 server=moto qcow2="" ranged=1
while (($#)); do
    case $1 in
        --no-build) build=0; shift ;;
        --no-ranged) ranged=0; shift ;;
        --server) server=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --data) data=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --qcow2) qcow2=$2; shift 2 ;;
        *) image=$1; shift ;;
    esac
done

((build)) && cargo build --release --quiet
bin=$PWD/target/release/imgpack
work=$(mktemp -d)
source benches/s3_server.sh
trap 'kill $S3_SERVER_PID 2>/dev/null; rm -rf "$work"' EXIT
start_s3_server "$server" "$work" bench
export IMGPACK_ACCOUNT=acc-bench IMGPACK_CATALOG=sqlite:$work/s3-catalog.db

if [[ -z $image ]]; then
    image=$work/disk.raw
    truncate -s "${size}M" "$image"
    # Half random, half zeros in every MiB: compresses about 2:1, like real disks' data.
    python3 - "$image" "$data" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    for i in range(int(sys.argv[2])):
        f.seek(i * 3 << 20)
        f.write(os.urandom(512 << 10) + bytes(512 << 10))
PY
fi
size_bytes=$(stat -c %s "$image")
if [[ -z $qcow2 ]]; then
    qcow2=$work/disk.qcow2
    qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$image" "$qcow2"
fi

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Runs a command; prints its wall seconds, and appends its peak RSS (KiB) to $work/rss.
timed() {
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null
    read -r wall rss < <(tail -1 "$work/time")
    echo "$rss" >>"$work/rss"
    echo "$wall"
}
peak_mib() { sort -n "$work/rss" | tail -1 | awk '{printf "%.0f", $1 / 1024}'; }

local_lib=$work/local
s3_lib=s3://bench/lib
# The local library keeps its own catalog (catalog.db inside it), the s3:// one the sqlite file
# named by IMGPACK_CATALOG.
local_cmd=(env -u IMGPACK_CATALOG "$bin" images --library "$local_lib")
s3_cmd=("$bin" images --library "$s3_lib")
report() { printf '%-48s %8.2f s\n' "$1" "$2"; }

echo "server $server, $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for kind in raw qcow2; do
    upload=$image; [[ $kind == qcow2 ]] && upload=$qcow2
    t_local=() t_s3=() t_ranged=() t_get=() b_local=() b_s3=()
    : >"$work/rss"
    for rep in $(seq "$reps"); do
        mkdir -p "$local_lib/incoming/acc-bench"
        cp --sparse=always "$upload" "$local_lib/incoming/acc-bench/u$rep"
        t_local+=("$(timed "${local_cmd[@]}" register -a x86_64 -n b -s "u$rep" --json)")
        : >"$work/rss"
        "${s3_cmd[@]}" upload "$upload" --name "u$rep" --json >/dev/null
        t_get+=("$(timed curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
            -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o /dev/null "http://127.0.0.1:$S3_PORT/bench/lib/incoming/acc-bench/u$rep")")
        t_s3+=("$(timed "${s3_cmd[@]}" register -a x86_64 -n b -s "u$rep" --json)")
        if [[ $kind == qcow2 ]] && ((ranged)); then
            "${s3_cmd[@]}" upload "$upload" --name "s$rep" --json >/dev/null
            t_ranged+=("$(timed env IMGPACK_S3_IMAGE_READ=ranged "${s3_cmd[@]}" register -a x86_64 -n b -s "s$rep" --json)")
        fi
    done
    register_rss=$(peak_mib)
    local_id=$("${local_cmd[@]}" list --json | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["id"])')
    s3_id=$("${s3_cmd[@]}" list --json | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["id"])')
    : >"$work/rss"
    for rep in $(seq "$reps"); do
        rm -f "$work/built.raw"
        b_local+=("$(timed "${local_cmd[@]}" build "$local_id" --disk "$work/built.raw" --disk-size "$size_bytes" --json)")
        rm -f "$work/built.raw"
        : >"$work/rss"
        b_s3+=("$(timed "${s3_cmd[@]}" build "$s3_id" --disk "$work/built.raw" --disk-size "$size_bytes" --json)")
    done
    rm -f "$work/built.raw"
    echo "== $kind upload ($(stat -c %s "$upload") bytes), median of $reps =="
    report "register, local library" "$(printf '%s\n' "${t_local[@]}" | median)"
    report "register, s3:// library (peak RSS ${register_rss} MiB)" "$(printf '%s\n' "${t_s3[@]}" | median)"
    ((${#t_ranged[@]})) && report "register, s3:// library, ranged" "$(printf '%s\n' "${t_ranged[@]}" | median)"
    report "plain GET of the upload to /dev/null" "$(printf '%s\n' "${t_get[@]}" | median)"
    report "build, local library" "$(printf '%s\n' "${b_local[@]}" | median)"
    report "build, s3:// library (peak RSS $(peak_mib) MiB)" "$(printf '%s\n' "${b_s3[@]}" | median)"
    echo "   runs: register local ${t_local[*]} | s3 ${t_s3[*]} | GET ${t_get[*]} | build local ${b_local[*]} | s3 ${b_s3[*]}"
    # Every image goes before the next kind: a file-backed server keeps what is stored.
    for id in $("${s3_cmd[@]}" list --json | python3 -c 'import json,sys;[print(r["id"]) for r in json.load(sys.stdin)]'); do
        "${s3_cmd[@]}" destroy "$id" --json >/dev/null
    done
    rm -rf "$local_lib"
done
q=()
for rep in $(seq "$reps"); do
    rm -f "$work/q.raw"
    q+=("$(timed qemu-img convert -f qcow2 -O raw "$qcow2" "$work/q.raw")")
done
rm -f "$work/q.raw"
report "qemu-img convert -O raw of the zstd qcow2" "$(printf '%s\n' "${q[@]}" | median)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
