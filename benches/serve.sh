#!/usr/bin/env bash
# `imgpack serve` against `qemu-nbd -r`, with the same NBD clients, on the corpus disk:
#
#   IMGPACK_CORPUS=/work/bench-corpus benches/serve.sh [--reps N] [--reads N] [--imgpack PATH]
#                                                      [--archives DIR]
#
# The archives (debian.imgpack, and debian-64k.imgpack in 64 KiB chunks) are converted once
# into DIR (default $CORPUS/cache) by the imgpack under test, and converted again there when
# what is cached is of an older archive format version than that imgpack writes (a version 1
# archive has no SHA-256s to check, so it would not measure what serving a new one costs).
#
# - whole disk: `nbdcopy URI null:` (reads every data extent, skipping holes by block status)
#   from imgpack serving debian.imgpack, and from qemu-nbd -r serving debian-zstd.qcow2 and
#   debian.qcow2;
# - random 4 KiB reads: one qemu-io process reading a fixed random sequence of N 4 KiB blocks
#   (the same sequence, the same client, for every server), default cache;
# - time to first byte: from starting `imgpack serve` to its `listening` event, and to the end
#   of a first 4 KiB read by qemu-io (which includes qemu-io's own start-up);
# - bytes the clients read against bytes the server decoded, from the server's exit summary.
# Runs are interleaved, medians of --reps; the machine is shared, so treat ratios as noisy.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPS=3 READS=2000 IMGPACK=$REPO_DIR/target/release/imgpack
while (($#)); do
  case $1 in
    --reps) REPS=${2:?}; shift ;;
    --reads) READS=${2:?}; shift ;;
    --imgpack) IMGPACK=${2:?}; shift ;;
    --archives) ARCHIVES=${2:?}; shift ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
[[ -x $IMGPACK ]] || (cd "$REPO_DIR" && cargo build --release)
for tool in qemu-nbd qemu-io nbdcopy; do
  command -v "$tool" >/dev/null || die "$tool missing (qemu-utils, libnbd-bin)"
done
C=$CORPUS_ROOT
[[ -f $C/debian.raw && -f $C/debian.qcow2 && -f $C/debian-zstd.qcow2 ]] || die "no corpus in $C (benches/corpus.sh)"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ARCHIVES=${ARCHIVES:-$C/cache}
mkdir -p "$ARCHIVES"
# The archive format version `convert` writes today, and that of an archive.
version_of() { "$IMGPACK" info "$1" 2>/dev/null | awk '$1 == "archive_version" { print $2 }'; }
PROBE=$WORK/probe.imgpack
head -c 65536 /dev/zero >"$WORK/probe.raw"
"$IMGPACK" convert --quiet "$WORK/probe.raw" -o "$PROBE"
CURRENT=$(version_of "$PROBE")
# convert_once ARCHIVE [convert flags...]: converts debian.raw unless ARCHIVE is current.
convert_once() {
  local archive=$1; shift
  [[ -f $archive && $(version_of "$archive") == "$CURRENT" ]] && return 0
  log "converting debian.raw $* into $archive (format version $CURRENT)"
  rm -f "$archive"
  "$IMGPACK" convert --quiet "$@" "$C/debian.raw" -o "$archive"
}
ARCHIVE=$ARCHIVES/debian.imgpack
convert_once "$ARCHIVE"
# The same disk in 64 KiB chunks: a random 4 KiB read decodes 64 KiB instead of 1 MiB.
ARCHIVE_64K=$ARCHIVES/debian-64k.imgpack
convert_once "$ARCHIVE_64K" --chunk-size 64K
SIZE=$(stat -c %s "$C/debian.raw")

# The fixed random sequence of 4 KiB reads, as qemu-io commands.
awk -v n="$READS" -v blocks=$((SIZE / 4096)) 'BEGIN { srand(12345); for (i = 0; i < n; i++) printf "read %d 4096\n", int(rand() * blocks) * 4096 }' >"$WORK/reads.txt"
mapfile -t READ_ARGS < <(sed 's/^/-c\n/' "$WORK/reads.txt")

# Seconds since $1, to the millisecond.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

wait_socket() { for _ in $(seq 500); do [[ -S $1 ]] && return 0; sleep 0.01; done; die "no socket $1"; }

# start NAME: starts server NAME on $WORK/NAME.sock; sets URI.
start() {
  local sock=$WORK/$1.sock
  rm -f "$sock"
  case $1 in
    imgpack) "$IMGPACK" serve "$ARCHIVE" --socket "$sock" --json >"$WORK/imgpack.out" 2>&1 & ;;
    imgpack-64k) "$IMGPACK" serve "$ARCHIVE_64K" --socket "$sock" --json >"$WORK/imgpack-64k.out" 2>&1 & ;;
    qemu-zstd) qemu-nbd -r -f qcow2 --socket "$sock" --persistent --shared=8 "$C/debian-zstd.qcow2" & ;;
    qemu-plain) qemu-nbd -r -f qcow2 --socket "$sock" --persistent --shared=8 "$C/debian.qcow2" & ;;
  esac
  SERVER=$!
  PIDS+=("$SERVER")
  wait_socket "$sock"
  URI="nbd+unix:///?socket=$sock"
}
stop() { kill -INT "$SERVER"; wait "$SERVER" 2>/dev/null || true; }
# CPU seconds (user + system) the server has used so far.
server_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$SERVER/stat"; }

declare -A T
for rep in $(seq "$REPS"); do
  for server in imgpack imgpack-64k qemu-zstd qemu-plain; do
    start "$server"
    t0=$(now); nbdcopy "$URI" null:; T[$server,copy,$rep]=$(since "$t0")
    T[$server,copycpu,$rep]=$(server_cpu)
    stop
    start "$server"
    t0=$(now); qemu-io -r -f raw "${READ_ARGS[@]}" "$URI" >/dev/null; T[$server,random,$rep]=$(since "$t0")
    stop
    if [[ $server == imgpack* ]]; then
      grep '"event":"stopped"' "$WORK/$server.out" >"$WORK/$server-random.json" || true
    fi
  done
  log "rep $rep done"
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
row() { local s=$1 k=$2 v=(); for r in $(seq "$REPS"); do v+=("${T[$s,$k,$r]}"); done; median "${v[@]}"; }

ratio() { awk -v a="$(row "$1" "$3")" -v b="$(row "$2" "$3")" 'BEGIN { printf "%.2f", a / b }'; }

# Time to first byte, and the bytes read against decoded for a whole-disk copy.
sock=$WORK/ttfb.sock
t0=$(now)
"$IMGPACK" serve "$ARCHIVE" --socket "$sock" --json >"$WORK/ttfb.out" 2>&1 &
SERVER=$!; PIDS+=("$SERVER")
until grep -q listening "$WORK/ttfb.out" 2>/dev/null; do sleep 0.001; done
listening=$(since "$t0")
qemu-io -r -f raw -c 'read 0 4096' "nbd+unix:///?socket=$sock" >/dev/null
first_read=$(since "$t0")
nbdcopy "nbd+unix:///?socket=$sock" null:
peak_rss=$(awk '/VmHWM/ { print $2 }' "/proc/$SERVER/status")
kill -INT "$SERVER"; wait "$SERVER" 2>/dev/null || true
copy_summary=$(grep '"event":"stopped"' "$WORK/ttfb.out")

field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
cat <<EOF2
## imgpack serve vs qemu-nbd -r ($(date -u +%F), $REPS interleaved reps, medians; load average $(cut -d' ' -f1-3 /proc/loadavg))

| client run | imgpack serve (1 MiB chunks) | imgpack serve (64 KiB chunks) | qemu-nbd zstd qcow2 | qemu-nbd plain qcow2 | imgpack / zstd | imgpack 64K / zstd | imgpack / plain |
|---|---:|---:|---:|---:|---:|---:|---:|
| nbdcopy whole disk (s) | $(row imgpack copy) | $(row imgpack-64k copy) | $(row qemu-zstd copy) | $(row qemu-plain copy) | $(ratio imgpack qemu-zstd copy) | $(ratio imgpack-64k qemu-zstd copy) | $(ratio imgpack qemu-plain copy) |
| server CPU for that copy (s) | $(row imgpack copycpu) | $(row imgpack-64k copycpu) | $(row qemu-zstd copycpu) | $(row qemu-plain copycpu) | $(ratio imgpack qemu-zstd copycpu) | $(ratio imgpack-64k qemu-zstd copycpu) | $(ratio imgpack qemu-plain copycpu) |
| qemu-io $READS random 4 KiB reads (s) | $(row imgpack random) | $(row imgpack-64k random) | $(row qemu-zstd random) | $(row qemu-plain random) | $(ratio imgpack qemu-zstd random) | $(ratio imgpack-64k qemu-zstd random) | $(ratio imgpack qemu-plain random) |

Time to first byte (4 GiB image): listening after ${listening} s; first 4 KiB read by qemu-io done after ${first_read} s. Server peak RSS after a whole-disk copy (default 64 MiB cache): $((peak_rss / 1024)) MiB.

Whole-disk copy: clients read $(field "$copy_summary" bytes_served) bytes; the server decoded $(field "$copy_summary" bytes_decoded) bytes ($(field "$copy_summary" chunks_decoded) chunks, $(field "$copy_summary" chunks_read_ahead) read ahead, $(field "$copy_summary" bytes_fetched) bytes fetched).
EOF2
for server in imgpack imgpack-64k; do
  [[ -s $WORK/$server-random.json ]] || continue
  s=$(cat "$WORK/$server-random.json")
  echo "Random reads, $server (last rep): clients read $(field "$s" bytes_served) bytes; the server decoded $(field "$s" bytes_decoded) bytes ($(field "$s" chunks_decoded) chunks, $(field "$s" cache_hits) cache hits)."
done
