#!/bin/bash
# Build from a deduplicated image against a self-contained one, both in an s3:// library on
# s3s-fs (loopback; `cargo install s3s-fs@0.14.1 --features binary --locked`), the Debian disk
# snapshotted in place (no 4 GiB upload); 3 interleaved builds of each, release binary.
#
#   IMGPACK_CORPUS=/work/bench-corpus bash benches/dedup_s3_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${IMGPACK_CORPUS:-/work/bench-corpus}
bin=$PWD/target/release/imgpack
work=$(mktemp -d)
source benches/s3_server.sh
PATH=$HOME/.cargo/bin:$PATH
start_s3_server s3s-fs "$work" bench
trap 'kill $S3_SERVER_PID 2>/dev/null; rm -rf "$work"' EXIT
export IMGPACK_ACCOUNT=acc-bench IMGPACK_CATALOG=sqlite:$work/cat.db IMGPACK_LIBRARY=s3://bench/lib
IMGPACK_DEDUP=on $bin images snapshot --disk $corpus/debian.raw -n dedup --json > $work/d.json
IMGPACK_DEDUP=off $bin images snapshot --disk $corpus/debian.raw -n plain --json > $work/p.json
d=$(python3 -c 'import json,sys;print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["id"])' $work/d.json)
p=$(python3 -c 'import json,sys;print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["id"])' $work/p.json)
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "${REPS:-3}"); do
  for kind in dedup plain; do
    id=$d; [ $kind = plain ] && id=$p
    rm -f $work/built.raw; sync
    /usr/bin/time -f "$kind build %e s wall %U+%S cpu" $bin images build $id --disk $work/built.raw --disk-size 4G --json > /dev/null
  done
done 2>&1 | grep build
cmp <(head -c 100M $work/built.raw) <(head -c 100M $corpus/debian.raw) && echo "content ok (first 100 MiB)"
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
