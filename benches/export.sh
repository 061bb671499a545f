#!/usr/bin/env bash
# Export benchmarks (issue 14): imgpack export from the archive against qemu-img convert from
# the raw disk, per format, plus the sparse-disk rule (a 1 TiB disk holding 64 MiB of data
# against a dense 64 MiB disk). Runs are interleaved (ours, theirs, ours, ...) and medians
# reported, with output sizes; every output is removed (and `sync` run) before the next run.
#
#   IMGPACK_CORPUS=/work/bench-corpus bash benches/export.sh [--reps N] [--only NAME...] [--check]
#
# --check: after the first run of each imgpack export of the Debian disk, `qemu-img compare`
# the output with debian.raw and `qemu-img check` it (where qemu can check the format); any
# difference or error stops the script. Costs a full read of each output, not timed.
#
# Wall time is what the targets are about; CPU time (user + sys, from /usr/bin/time) is
# printed too, because on a shared machine it moves much less than wall time.
#
# Needs the corpus of benches/corpus.sh (debian.raw, sparse-1t.raw, dense-64m.raw), qemu-img,
# and a release build (built here if missing). Archives are made once into $SCRATCH.
set -euo pipefail
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

reps=3
only=()
check=false
while (($#)); do
  case $1 in
    --check) check=true; shift ;;
    --reps) reps=$2; shift 2 ;;
    --only) shift; while (($#)) && [[ $1 != --* ]]; do only+=("$1"); shift; done ;;
    *) die "unknown argument $1" ;;
  esac
done
SCRATCH=${SCRATCH:-/tmp/imgpack-bench-export}
mkdir -p "$SCRATCH"
BIN=$REPO_DIR/target/release/imgpack
[[ -x $BIN ]] || (cd "$REPO_DIR" && cargo build --release --quiet)
command -v qemu-img >/dev/null || die "qemu-img not found"

archive_of() { # NAME: the archive of $CORPUS_ROOT/NAME.raw, made once
  local a=$SCRATCH/$1.imgpack
  [[ -s $a ]] || "$BIN" convert "$CORPUS_ROOT/$1.raw" -o "$a" --quiet >/dev/null
  printf '%s' "$a"
}
debian=$(archive_of debian)
sparse=$(archive_of sparse-1t)
dense=$(archive_of dense-64m)
raw=$CORPUS_ROOT/debian.raw
out=$SCRATCH/out

# name | command (OUT stands for the output path)
benchmarks=(
  "qcow2-c-imgpack|$BIN export $debian -o OUT -O qcow2 -c --quiet"
  "qcow2-c-qemu|qemu-img convert -c -W -O qcow2 -o compression_type=zstd $raw OUT"
  "qcow2-imgpack|$BIN export $debian -o OUT -O qcow2 --quiet"
  "qcow2-qemu|qemu-img convert -O qcow2 $raw OUT"
  "vhdx-imgpack|$BIN export $debian -o OUT -O vhdx --quiet"
  "vhdx-qemu|qemu-img convert -O vhdx $raw OUT"
  "vhd-imgpack|$BIN export $debian -o OUT -O vhd --quiet"
  "vhd-qemu|qemu-img convert -O vpc $raw OUT"
  # qemu-img's default output cache (unsafe) never flushes; imgpack's outputs are fsynced
  # before they appear, so -t writeback (one fdatasync at close) is the like-for-like anchor.
  "qcow2-qemu-writeback|qemu-img convert -t writeback -O qcow2 $raw OUT"
  "vhdx-qemu-writeback|qemu-img convert -t writeback -O vhdx $raw OUT"
  "vhd-qemu-writeback|qemu-img convert -t writeback -O vpc $raw OUT"
  "vmdk-imgpack|$BIN export $debian -o OUT -O vmdk --quiet"
  "vmdk-qemu|qemu-img convert -O vmdk -o subformat=streamOptimized $raw OUT"
)
for format in qcow2 "qcow2 -c" vmdk "vmdk --subformat monolithicSparse" vhd vhdx raw; do
  tag=${format// /}
  benchmarks+=("sparse1t-$tag|$BIN export $sparse -o OUT -O $format --quiet")
  benchmarks+=("dense64m-$tag|$BIN export $dense -o OUT -O $format --quiet")
done

selected() {
  ((${#only[@]} == 0)) && return 0
  local o
  for o in "${only[@]}"; do [[ $1 == "$o"* ]] && return 0; done
  return 1
}

# NAME OUT: qemu-img finds OUT identical to debian.raw and (but VHD, which it cannot check)
# free of errors and leaks.
check_output() {
  local format
  format=$(qemu-img info --output=json "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
  qemu-img compare -q -f "$format" -F raw "$2" "$raw" || die "$1: qemu-img compare finds a difference"
  if [[ $format == vpc ]]; then
    log "checked $1 ($format): identical to debian.raw (qemu-img cannot check VHD)"
    return
  fi
  qemu-img check -q "$2" || die "$1: qemu-img check finds errors"
  log "checked $1 ($format): identical to debian.raw, qemu-img check clean"
}

declare -A times cpus sizes
for ((rep = 1; rep <= reps; rep++)); do
  for entry in "${benchmarks[@]}"; do
    name=${entry%%|*} command=${entry#*|}
    selected "$name" || continue
    rm -f "$out"; sync
    # shellcheck disable=SC2086 # the command is split into words on purpose
    /usr/bin/time -f '%e %U %S' -o "$SCRATCH/time" ${command//OUT/$out} >/dev/null
    read -r t user sys <"$SCRATCH/time"
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    times[$name]+="$t "
    cpus[$name]+="$cpu "
    sizes[$name]=$(stat -c %s "$out")
    log "rep $rep $name: $t s wall, $cpu s CPU, ${sizes[$name]} bytes"
    if $check && ((rep == 1)) && [[ $name == *-imgpack ]]; then
      check_output "$name" "$out"
    fi
  done
done
rm -f "$out"

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
printf '| run | wall s (median of %s) | CPU s (user+sys) | output bytes |\n|---|---:|---:|---:|\n' "$reps"
for entry in "${benchmarks[@]}"; do
  name=${entry%%|*}
  [[ -n ${times[$name]:-} ]] || continue
  printf '| %s | %s | %s | %s |\n' "$name" "$(median "${times[$name]}")" "$(median "${cpus[$name]}")" "${sizes[$name]}"
done
