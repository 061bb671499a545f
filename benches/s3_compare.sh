#!/usr/bin/env bash
# Registration and build from an s3:// library against a local one, same run, same upload.
#
#   bash benches/s3_compare.sh [--server moto|s3s-fs] [--size SIZE_MIB] [--data DATA_MIB]
#                              [--reps N] [--qcow2 FILE] [--no-ranged] [--no-spill] [--no-single] [--no-build]
#                              [--no-raw|--no-qcow2] [--no-image-builds] [IMAGE.raw]
#
# Starts a loopback S3 server (benches/s3_server.sh: moto by default, or s3s-fs), then for a
# raw upload and the same disk as a zstd-compressed qcow2 (made by qemu-img, or --qcow2 FILE)
# times, with the release binary, interleaved in each repetition:
#   - `images register` from a local library and from the s3:// library (the qcow2 read the
#     default way, streamed into a temporary file read as it grows; unless --no-spill, also
#     spilled whole first, IMGPACK_S3_IMAGE_READ=spill, as before; unless --no-ranged, read in
#     place by ranged GETs, IMGPACK_S3_IMAGE_READ=ranged; unless --no-single, read by one
#     streaming GET instead of parallel ranged GETs, IMGPACK_S3_STREAM_READ=single, as before),
#   - a plain signed GET of the upload to /dev/null (curl), and its `images upload`,
#   - `images build` from each library, and `qemu-img convert -O raw` of the zstd qcow2
#     (unless --no-image-builds).
# --no-build uses the release binary as it is (no `cargo build`); --no-raw times the qcow2 only, --no-qcow2 the raw upload only.
# Without IMAGE a synthetic disk is made: SIZE MiB (1024) with DATA MiB (256) of
# half-compressible data. Prints the median wall time of N (3) runs of each with the median
# CPU seconds (user+sys) of the command and of the S3 server meanwhile, the largest peak RSS
# of the s3:// registrations and builds (/usr/bin/time), and the load average.
set -euo pipefail
cd "$(dirname "$0")/.."

size=1024 data=256 reps=3 image="" build=1 server=moto qcow2="" ranged=1 spill=1 single=1 kinds="raw qcow2" builds=1
while (($#)); do
    case $1 in
        --no-build) build=0; shift ;;
        --no-ranged) ranged=0; shift ;;
        --no-spill) spill=0; shift ;;
        --no-single) single=0; shift ;;
        --no-raw) kinds=qcow2; shift ;;
        --no-qcow2) kinds=raw; shift ;;
        --no-image-builds) builds=0; shift ;;
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
# The S3 server's CPU seconds so far (user+sys, from /proc).
server_cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$S3_SERVER_PID/stat"; }
# Runs a command; prints "wall cpu server_cpu" (seconds: its wall time, its user+sys, the S3
# server's user+sys meanwhile), and appends its peak RSS (KiB) to $work/rss.
timed() {
    local before; before=$(server_cpu)
    /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" >/dev/null
    read -r wall user sys rss < <(tail -1 "$work/time")
    echo "$rss" >>"$work/rss"
    echo "$wall $(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u + s}') $(awk -v a="$before" -v b="$(server_cpu)" 'BEGIN{printf "%.2f", b - a}')"
}
# Median of one column (1 wall, 2 cpu, 3 server cpu) of timed's lines.
column() { local c=$1; shift; printf '%s\n' "$@" | awk -v c="$c" '{print $c}' | median; }
walls() { local w=(); for t in "$@"; do w+=("${t%% *}"); done; echo "${w[*]}"; }
peak_mib() { sort -n "$work/rss" | tail -1 | awk '{printf "%.0f", $1 / 1024}'; }

local_lib=$work/local
s3_lib=s3://bench/lib
# The local library keeps its own catalog (catalog.db inside it), the s3:// one the sqlite file
# named by IMGPACK_CATALOG.
local_cmd=(env -u IMGPACK_CATALOG "$bin" images --library "$local_lib")
s3_cmd=("$bin" images --library "$s3_lib")
# A row: label, then timed's lines; median wall, command CPU and server CPU.
report() {
    local label=$1; shift
    printf '%-52s %8.2f s wall %8.2f s cpu %8.2f s server cpu\n' "$label" \
        "$(column 1 "$@")" "$(column 2 "$@")" "$(column 3 "$@")"
}

echo "server $server, $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for kind in $kinds; do
    upload=$image; [[ $kind == qcow2 ]] && upload=$qcow2
    t_local=() t_s3=() t_single=() t_spill=() t_ranged=() t_get=() t_put=() b_local=() b_s3=()
    : >"$work/rss"
    for rep in $(seq "$reps"); do
        mkdir -p "$local_lib/incoming/acc-bench"
        cp --sparse=always "$upload" "$local_lib/incoming/acc-bench/u$rep"
        t_local+=("$(timed "${local_cmd[@]}" register -a x86_64 -n b -s "u$rep" --json)")
        t_put+=("$(timed "${s3_cmd[@]}" upload "$upload" --name "u$rep" --json)")
        : >"$work/rss"
        t_get+=("$(timed curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
            -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o /dev/null "http://127.0.0.1:$S3_PORT/bench/lib/incoming/acc-bench/u$rep")")
        t_s3+=("$(timed "${s3_cmd[@]}" register -a x86_64 -n b -s "u$rep" --json)")
        if ((single)); then
            "${s3_cmd[@]}" upload "$upload" --name "g$rep" --json >/dev/null
            t_single+=("$(timed env IMGPACK_S3_STREAM_READ=single "${s3_cmd[@]}" register -a x86_64 -n b -s "g$rep" --json)")
        fi
        if [[ $kind == qcow2 ]] && ((spill)); then
            "${s3_cmd[@]}" upload "$upload" --name "p$rep" --json >/dev/null
            t_spill+=("$(timed env IMGPACK_S3_IMAGE_READ=spill "${s3_cmd[@]}" register -a x86_64 -n b -s "p$rep" --json)")
        fi
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
        ((builds)) || break
        rm -f "$work/built.raw"
        b_local+=("$(timed "${local_cmd[@]}" build "$local_id" --disk "$work/built.raw" --disk-size "$size_bytes" --json)")
        rm -f "$work/built.raw"
        : >"$work/rss"
        b_s3+=("$(timed "${s3_cmd[@]}" build "$s3_id" --disk "$work/built.raw" --disk-size "$size_bytes" --json)")
    done
    rm -f "$work/built.raw"
    echo "== $kind upload ($(stat -c %s "$upload") bytes), median of $reps =="
    report "register, local library" "${t_local[@]}"
    report "register, s3:// library (peak RSS ${register_rss} MiB)" "${t_s3[@]}"
    ((${#t_single[@]})) && report "register, s3:// library, one streaming GET" "${t_single[@]}"
    ((${#t_spill[@]})) && report "register, s3:// library, spilled whole first" "${t_spill[@]}"
    ((${#t_ranged[@]})) && report "register, s3:// library, ranged" "${t_ranged[@]}"
    report "plain GET of the upload to /dev/null" "${t_get[@]}"
    report "images upload (multipart PUT) of the upload" "${t_put[@]}"
    if ((builds)); then
        report "build, local library" "${b_local[@]}"
        report "build, s3:// library (peak RSS $(peak_mib) MiB)" "${b_s3[@]}"
    fi
    echo "   wall of each run: register local $(walls "${t_local[@]}") | s3 $(walls "${t_s3[@]}") | single GET $(walls "${t_single[@]}") | spilled $(walls "${t_spill[@]}") | ranged $(walls "${t_ranged[@]}") | GET $(walls "${t_get[@]}") | upload $(walls "${t_put[@]}") | build local $(walls "${b_local[@]}") | s3 $(walls "${b_s3[@]}")"
    # Every image goes before the next kind: a file-backed server keeps what is stored.
    for id in $("${s3_cmd[@]}" list --json | python3 -c 'import json,sys;[print(r["id"]) for r in json.load(sys.stdin)]'); do
        "${s3_cmd[@]}" destroy "$id" --json >/dev/null
    done
    rm -rf "$local_lib"
done
# qemu-img's default cache mode for the output (unsafe) never flushes; builds fsync the disk
# they write, so `-t writeback` (one fdatasync at close) is the like-for-like figure.
q=() q_wb=()
for rep in $(seq "$reps"); do
    ((builds)) || break
    rm -f "$work/q.raw"
    q+=("$(timed qemu-img convert -f qcow2 -O raw "$qcow2" "$work/q.raw")")
    rm -f "$work/q.raw"
    q_wb+=("$(timed qemu-img convert -t writeback -f qcow2 -O raw "$qcow2" "$work/q.raw")")
done
rm -f "$work/q.raw"
if ((builds)); then
    report "qemu-img convert -O raw of the zstd qcow2 (default cache: no flush)" "${q[@]}"
    report "qemu-img convert -t writeback -O raw of the zstd qcow2 (flushed at close)" "${q_wb[@]}"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
