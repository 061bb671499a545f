#!/usr/bin/env bash
# Converting the corpus disk from every input format, against converting the raw disk itself:
# the per-format speed targets (qcow2 within 1.15x / 1.3x of raw, the VM formats within 1.3x).
#
#   benches/formats.sh [--reps N] [--imgpack PATH]
#
# Makes debian.{vmdk,stream.vmdk,vhd,vhdx,vdi} next to the corpus with qemu-img (cached),
# then times `imgpack convert` of each (interleaved, medians) and prints a markdown table.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPS=3 IMGPACK=$REPO_DIR/target/release/imgpack
while (($#)); do
  case $1 in
    --reps) REPS=${2:?}; shift ;;
    --imgpack) IMGPACK=${2:?}; shift ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
[[ -x $IMGPACK ]] || (cd "$REPO_DIR" && cargo build --release)
C=$CORPUS_ROOT
[[ -f $C/debian.raw ]] || bash "$BENCH_DIR/corpus.sh"
make() { # make FILE qemu-img-args...
  local out=$C/$1; shift
  [[ -f $out ]] || { log "making $out"; qemu-img convert -f raw "$@" "$C/debian.raw" "$out"; }
}
make debian.vmdk -O vmdk -o subformat=monolithicSparse
make debian-stream.vmdk -O vmdk -o subformat=streamOptimized
make debian.vhd -O vpc -o subformat=dynamic
make debian.vhdx -O vhdx -o subformat=dynamic
make debian.vdi -O vdi
inputs=(debian.raw debian.qcow2 debian-zstd.qcow2 debian.vmdk debian-stream.vmdk debian.vhd debian.vhdx debian.vdi)
scratch=$C/scratch-formats
mkdir -p "$scratch"
declare -A wall cpu
for f in "${inputs[@]}"; do warm "$C/$f"; done
for ((r = 1; r <= REPS; r++)); do
  for f in "${inputs[@]}"; do
    t=$( { /usr/bin/time -f '%e %U %S' "$IMGPACK" convert "$C/$f" -o "$scratch/out.imgpack" --quiet >/dev/null; } 2>&1 | tail -1)
    read -r w u s <<<"$t"
    wall[$f]+="$w "
    cpu[$f]+="$(awk -v u="$u" -v s="$s" 'BEGIN { print u + s }') "
    rm -f "$scratch/out.imgpack"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
raw_wall=$(median <<<"${wall[debian.raw]}")
raw_cpu=$(median <<<"${cpu[debian.raw]}")
echo "| input | wall s (median of $REPS) | vs raw | CPU s | vs raw |"
echo "| --- | ---: | ---: | ---: | ---: |"
for f in "${inputs[@]}"; do
  w=$(median <<<"${wall[$f]}") c=$(median <<<"${cpu[$f]}")
  awk -v f="$f" -v w="$w" -v c="$c" -v rw="$raw_wall" -v rc="$raw_cpu" \
    'BEGIN { printf "| %s | %.2f | %.2f | %.2f | %.2f |\n", f, w, w / rw, c, c / rc }'
done
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
