#!/usr/bin/env bash
# Registration throughput with 1, 2 and 4 registrar processes sharing one S3 bucket (moto on
# loopback) and one PostgreSQL catalog: the figures of docs/SCALE.md.
#
#   benches/scale.sh [--uploads N] [--size MiB] [--reps N] [--imgpack PATH]
#
#   --uploads N     uploads registered per run (default 8)
#   --size MiB      virtual size of each upload (default 128; half of it holds data: a stretch
#                   of a tar of /usr, so it compresses as a system disk does)
#   --reps N        interleaved repetitions, medians reported (default 3)
#   --imgpack PATH  imgpack binary (default target/release/imgpack, built first)
#
# Needs moto_server (IMGPACK_MOTO_SERVER or on the PATH; .ci/run installs it), PostgreSQL's
# server binaries (/usr/lib/postgresql/*/bin) and curl. For each run: a fresh bucket prefix
# and database, the uploads put with `imgpack images upload` (not timed), then R processes
# each registering every R-th upload (no two ask for the same one), timed from start to the
# last exit. Reports the median wall time per R and the throughput in uploads per second.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UPLOADS=8 SIZE=128 REPS=3 IMGPACK=""
while (($#)); do
  case $1 in
    --uploads) UPLOADS=${2:?}; shift ;;
    --size) SIZE=${2:?}; shift ;;
    --reps) REPS=${2:?}; shift ;;
    --imgpack) IMGPACK=${2:?}; shift ;;
    -h|--help) sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z $IMGPACK ]]; then
  cargo build --release --bin imgpack >&2
  IMGPACK=$PWD/target/release/imgpack
fi
MOTO=${IMGPACK_MOTO_SERVER:-$(command -v moto_server || true)}
[[ -x $MOTO ]] || { echo "moto_server not found (IMGPACK_MOTO_SERVER)" >&2; exit 1; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $PGBIN/initdb ]] || { echo "PostgreSQL server binaries not found" >&2; exit 1; }

WORK=$(mktemp -d)
as_owner=()
if [[ $(id -u) -eq 0 ]]; then chown postgres:postgres "$WORK"; as_owner=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PG_PORT=$(free_port) S3_PORT=$(free_port)
MOTO_PID=""
cleanup() {
  [[ -n $MOTO_PID ]] && kill "$MOTO_PID" 2>/dev/null || true
  "${as_owner[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"${as_owner[@]}" "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
"${as_owner[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
  -o "-k $WORK -p $PG_PORT -c listen_addresses=127.0.0.1" start >/dev/null
"$MOTO" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 100); do curl -s "http://127.0.0.1:$S3_PORT/" >/dev/null && break; sleep 0.1; done
curl -s -X PUT "http://127.0.0.1:$S3_PORT/bench" >/dev/null
export AWS_ENDPOINT=http://127.0.0.1:$S3_PORT AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret IMGPACK_ACCOUNT=acc-bench

# Uploads like a system disk: half data (a stretch of a tar of /usr), half zeros.
half=$((SIZE / 2))
tar -c /usr 2>/dev/null | head -c "$((UPLOADS * half + 8))M" >"$WORK/usr.tar" || true
for ((n = 0; n < UPLOADS; n++)); do
  truncate -s "${SIZE}M" "$WORK/disk$n.raw"
  dd if="$WORK/usr.tar" of="$WORK/disk$n.raw" bs=1M skip=$((n * half)) count="$half" seek=1 conv=notrunc status=none
done
rm -f "$WORK/usr.tar"

run() { # R: registers the uploads with R processes; prints the wall seconds
  local r=$1 run; run=$(date +%s%N)
  export IMGPACK_LIBRARY=s3://bench/run$run IMGPACK_CATALOG=postgres://postgres@127.0.0.1:$PG_PORT/bench$run
  "${as_owner[@]}" "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" "bench$run"
  for ((n = 0; n < UPLOADS; n++)); do "$IMGPACK" images upload -q "$WORK/disk$n.raw" >/dev/null; done
  local start=$EPOCHREALTIME
  for ((k = 0; k < r; k++)); do
    (for ((n = k; n < UPLOADS; n += r)); do
      "$IMGPACK" images register -q -a x86_64 -n "disk$n" -s "disk$n.raw" >/dev/null
    done) &
  done
  wait
  awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'
  local count; count=$("$IMGPACK" images list --json | python3 -c 'import json,sys; print(sum(1 for i in json.load(sys.stdin) if i["status"] in ("available","public","private")))')
  [[ $count -eq $UPLOADS ]] || { echo "error: $count of $UPLOADS registered" >&2; exit 1; }
}

declare -A times
for ((rep = 1; rep <= REPS; rep++)); do
  for r in 1 2 4; do
    t=$(run "$r")
    times[$r]+="$t "
    echo "rep $rep: $r registrar(s) ${t}s" >&2
  done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "$UPLOADS uploads of ${SIZE} MiB (${half} MiB of /usr files each) into s3:// (moto) + PostgreSQL, $(nproc) cores, $REPS reps, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| registrar processes | median wall (s) | uploads/s | runs |"
echo "|---|---|---|---|"
for r in 1 2 4; do
  m=$(median "${times[$r]}")
  echo "| $r | $m | $(awk -v u="$UPLOADS" -v m="$m" 'BEGIN { printf "%.2f", u / m }') | ${times[$r]}|"
done
