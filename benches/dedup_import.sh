#!/bin/bash
# Registration of an uploaded .imgpack vs of the raw disk into a deduplicated local library:
# the raw disk into an empty library, `images download -O imgpack`, that archive into an empty
# library (frames stored as they are) and into the first one (every chunk reused). Run from a
# scratch directory (it makes L1, L2, L3 and a.imgpack there and removes them); BIN defaults
# to the debug build.
set -e
trap 'rm -rf L1 L2 L3 a.imgpack' EXIT
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/debug/imgpack}
SRC=${IMGPACK_CORPUS:-/work/bench-corpus}/dense-64m.raw
export IMGPACK_DEDUP=on IMGPACK_ACCOUNT=acc-xxxxx
t() { /usr/bin/time -f "$1 wall=%e cpu=%U+%S" "${@:2}" >/dev/null; }
for rep in 1 2 3; do
  rm -rf L1 L2 L3 a.imgpack
  mkdir -p L1/incoming/acc-xxxxx L2/incoming/acc-xxxxx L3/incoming/acc-xxxxx
  cp $SRC L1/incoming/acc-xxxxx/d.raw
  t raw-first env IMGPACK_LIBRARY=L1 $BIN images register -a x86_64 -n d -s d.raw --json
  ID=$(IMGPACK_LIBRARY=L1 $BIN images list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
  t download env IMGPACK_LIBRARY=L1 $BIN images download $ID -O imgpack -o a.imgpack --json
  cp a.imgpack L2/incoming/acc-xxxxx/a.imgpack
  t archive-first env IMGPACK_LIBRARY=L2 $BIN images register -a x86_64 -n a -s a.imgpack --json
  cp a.imgpack L1/incoming/acc-xxxxx/a.imgpack
  t archive-again env IMGPACK_LIBRARY=L1 $BIN images register -a x86_64 -n a -s a.imgpack --json
  cp $SRC L3/incoming/acc-xxxxx/d.raw
  t raw-first-2 env IMGPACK_LIBRARY=L3 $BIN images register -a x86_64 -n d -s d.raw --json
done
rm -rf L1 L2 L3 a.imgpack
