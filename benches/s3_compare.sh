#!/usr/bin/env bash
# Registration and build from an s3:// library against a local one, same run, same upload.
#
#   bash benches/s3_compare.sh [--size SIZE_MIB] [--data DATA_MIB] [--reps N] [--no-build] [IMAGE.raw]
#
# Starts a moto server (IMGPACK_MOTO_SERVER, else moto_server on the PATH; `bash .ci/run`
# installs one) on a free loopback port, then for a raw upload and the same disk as a
# zstd-compressed qcow2 (made by qemu-img) times, with the release binary:
#   - `images register` from a local library and from the s3:// library (qcow2 spilled, the
#     default, and read in place by ranged GETs: IMGPACK_S3_IMAGE_READ=ranged),
#   - a plain download of the raw upload to /dev/null (curl),
#   - `images build` from each library, and `qemu-img convert -O raw` of the zstd qcow2.
# Without IMAGE a synthetic disk is made: SIZE MiB (1024) with DATA MiB (256) of
# half-compressible data. Prints the median wall time of N (3) runs of each.
set -euo pipefail
cd "$(dirname "$0")/.."

size=1024 data=256 reps=3 image="" build=1
while (($#)); do
    case $1 in
        --no-build) build=0; shift ;;
        --size) size=$2; shift 2 ;;
        --data) data=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        *) image=$1; shift ;;
    esac
done

((build)) && cargo build --release --quiet
bin=$PWD/target/release/imgpack
moto=${IMGPACK_MOTO_SERVER:-moto_server}
work=$(mktemp -d)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$moto" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf -X PUT "http://127.0.0.1:$port/bench" >/dev/null && break; sleep 0.1; done

export AWS_ENDPOINT=http://127.0.0.1:$port AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret IMGPACK_ACCOUNT=acc-bench
export IMGPACK_CATALOG=sqlite:$work/s3-catalog.db

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
qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$image" "$work/disk.qcow2"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
seconds() { local s; s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }

local_lib=$work/local
s3_lib=s3://bench/lib
report() { printf '%-44s %8.2f s\n' "$1" "$2"; }

for kind in raw qcow2; do
    upload=$image; [[ $kind == qcow2 ]] && upload=$work/disk.qcow2
    declare -a t_local=() t_s3=() t_ranged=() t_get=() b_local=() b_s3=()
    for rep in $(seq "$reps"); do
        mkdir -p "$local_lib/incoming/acc-bench"
        cp "$upload" "$local_lib/incoming/acc-bench/u$rep"
        t_local+=("$(seconds "$bin" images --library "$local_lib" register -a x86_64 -n b -s "u$rep" --json)")
        "$bin" images --library "$s3_lib" upload "$upload" --name "u$rep" --json >/dev/null
        "$bin" images --library "$s3_lib" upload "$upload" --name "s$rep" --json >/dev/null
        t_get+=("$(seconds curl -sf -o /dev/null "http://127.0.0.1:$port/bench/lib/incoming/acc-bench/u$rep")")
        t_s3+=("$(seconds "$bin" images --library "$s3_lib" register -a x86_64 -n b -s "u$rep" --json)")
        t_ranged+=("$(IMGPACK_S3_IMAGE_READ=ranged seconds "$bin" images --library "$s3_lib" register -a x86_64 -n b -s "s$rep" --json)")
    done
    local_id=$("$bin" images --library "$local_lib" list --json | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["id"])')
    s3_id=$("$bin" images --library "$s3_lib" list --json | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["id"])')
    for rep in $(seq "$reps"); do
        rm -f "$work/built.raw"
        b_local+=("$(seconds "$bin" images --library "$local_lib" build "$local_id" --disk "$work/built.raw" --disk-size "${size}M" --json)")
        rm -f "$work/built.raw"
        b_s3+=("$(seconds "$bin" images --library "$s3_lib" build "$s3_id" --disk "$work/built.raw" --disk-size "${size}M" --json)")
    done
    echo "== $kind upload ($(stat -c %s "$upload") bytes), median of $reps =="
    report "register, local library" "$(printf '%s\n' "${t_local[@]}" | median)"
    report "register, s3:// library" "$(printf '%s\n' "${t_s3[@]}" | median)"
    [[ $kind == qcow2 ]] && report "register, s3:// library, ranged" "$(printf '%s\n' "${t_ranged[@]}" | median)"
    report "plain GET of the upload to /dev/null" "$(printf '%s\n' "${t_get[@]}" | median)"
    report "build, local library" "$(printf '%s\n' "${b_local[@]}" | median)"
    report "build, s3:// library" "$(printf '%s\n' "${b_s3[@]}" | median)"
    rm -rf "$local_lib"
done
q=()
for rep in $(seq "$reps"); do
    rm -f "$work/q.raw"
    q+=("$(seconds qemu-img convert -f qcow2 -O raw "$work/disk.qcow2" "$work/q.raw")")
done
report "qemu-img convert -O raw of the zstd qcow2" "$(printf '%s\n' "${q[@]}" | median)"
