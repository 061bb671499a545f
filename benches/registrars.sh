#!/usr/bin/env bash
# Two registrar processes sharing one PostgreSQL catalog and one library, against one process
# converting the same 8 uploads two at a time (issue 13's "no lost work to contention" target:
# at most 1.1x).
#
#   benches/registrars.sh [--reps N] [--size MiB] [--imgpack PATH]
#
#   --reps N        interleaved repetitions, medians reported (default 3)
#   --size MiB      virtual size of each upload (default 256; half of it holds data: files
#                   from a tar of /usr, so it compresses as a system disk does)
#   --imgpack PATH  imgpack binary (default target/release/imgpack, built first)
#   --store KIND    where the library lives: local (default: a directory), moto or s3s-fs (an
#                   s3:// library on a loopback server, benches/s3_server.sh; the uploads are
#                   stored with `images upload` before the clock starts; one-j2 stays the
#                   local `batch --jobs 2`, the engine's one process with two jobs)
#
# Starts its own throwaway PostgreSQL cluster (as the `postgres` user when run as root, like
# tests/common/postgres.rs), makes 8 uploads once, and for every repetition times, on a fresh
# library and a fresh database each time:
#   two      two `imgpack images register` processes at once, each walking the 8 uploads from
#            its own end (0..7 and 7..0) and registering whatever is still there; an upload
#            the other one is registering is refused by the catalog at once, one already
#            registered is gone ("no file")
#   one-j2   `imgpack batch --jobs 2` of the 8 uploads: one process, two conversions at a
#            time on one pool (`images register` has no --jobs: this is the engine's one
#            process with two jobs, with no catalog at all, so the ratio also holds the
#            catalog's cost)
#   one-seq  one registrar registering the 8 uploads one after the other
# Reports the median wall time of each and the ratio two / one-j2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS=3 SIZE=256 IMGPACK="" STORE=local
while (($#)); do
  case $1 in
    --reps) REPS=${2:?}; shift ;;
    --size) SIZE=${2:?}; shift ;;
    --imgpack) IMGPACK=${2:?}; shift ;;
    --store) STORE=${2:?}; shift ;;
    -h|--help) sed -n '2,31s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z $IMGPACK ]]; then
  cargo build --release --bin imgpack >&2
  IMGPACK=$PWD/target/release/imgpack
fi

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $PGBIN/initdb ]] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }
WORK=$(mktemp -d)
as_owner=()
if [[ $(id -u) -eq 0 ]]; then
  chown postgres:postgres "$WORK"
  as_owner=(runuser -u postgres --)
fi
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cleanup() {
  "${as_owner[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"${as_owner[@]}" "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
# fsync stays on: the catalog's commits cost what they would in production.
"${as_owner[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
  -o "-k $WORK -p $PORT -c listen_addresses=127.0.0.1" start >/dev/null

ACCOUNT=acc-bench
if [[ $STORE != local ]]; then
  source benches/s3_server.sh
  start_s3_server "$STORE" "$WORK" bench
fi
UPLOADS=$(mktemp -d -p /var/tmp)
trap 'kill ${S3_SERVER_PID:-} 2>/dev/null; cleanup; rm -rf "$UPLOADS"' EXIT
# Data like a real disk's: system files (a tar of /usr, a different stretch in each upload),
# so compression, not fsync, is what the time is spent on.
half=$((SIZE / 2))
tar -c /usr 2>/dev/null | head -c "$((8 * half + 8))M" >"$UPLOADS/usr.tar" || true
for n in 0 1 2 3 4 5 6 7; do
  f=$UPLOADS/disk$n.raw
  truncate -s "${SIZE}M" "$f"
  dd if="$UPLOADS/usr.tar" of="$f" bs=1M skip=$((n * half)) count="$half" seek=1 conv=notrunc status=none
done
rm -f "$UPLOADS/usr.tar"

fresh() { # a new library holding the uploads, and a new database: prints "LIBRARY URL"
  local run; run=$(date +%s%N)
  local lib=$WORK/lib$run
  mkdir -p "$lib/incoming/$ACCOUNT" "$lib/images"
  cp --sparse=always "$UPLOADS"/disk*.raw "$lib/incoming/$ACCOUNT/"
  "${as_owner[@]}" "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" "bench$run"
  local url=postgres://postgres@127.0.0.1:$PORT/bench$run
  if [[ $STORE != local ]]; then
    local s3lib=s3://bench/lib$run n
    for n in 0 1 2 3 4 5 6 7; do
      IMGPACK_LIBRARY=$s3lib IMGPACK_CATALOG=$url IMGPACK_ACCOUNT=$ACCOUNT \
        "$IMGPACK" images upload "$lib/incoming/$ACCOUNT/disk$n.raw" --json >/dev/null
    done
    rm -rf "$lib"
    lib=$s3lib
  fi
  echo "$lib $url"
}
registrar() { # LIBRARY URL N...: registers disk$N.raw for each N still there
  local lib=$1 url=$2; shift 2
  for n in "$@"; do
    [[ $lib == s3://* || -e $lib/incoming/$ACCOUNT/disk$n.raw ]] || continue
    IMGPACK_LIBRARY=$lib IMGPACK_CATALOG=$url IMGPACK_ACCOUNT=$ACCOUNT \
      "$IMGPACK" images register -q -a x86_64 -n "disk$n" -s "disk$n.raw" >/dev/null 2>>"$WORK/refusals" || true
  done
}
seconds() { local start=$EPOCHREALTIME; "$@"; awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
check() { # LIBRARY URL: all 8 registered once
  local archives
  if [[ $1 == s3://* ]]; then
    archives=$(IMGPACK_LIBRARY=$1 IMGPACK_CATALOG=$2 IMGPACK_ACCOUNT=$ACCOUNT "$IMGPACK" images list --json |
      python3 -c 'import json,sys;print(sum(r["status"] == "available" for r in json.load(sys.stdin)))')
  else
    archives=$(find "$1/images" -name '*.imgpack' | wc -l)
  fi
  [[ $archives -eq 8 ]] || { echo "error: $archives archives in $1, expected 8" >&2; exit 1; }
}

two() {
  read -r lib url < <(fresh)
  seconds bash -c "$(declare -f registrar); ACCOUNT=$ACCOUNT IMGPACK=$IMGPACK WORK=$WORK
    registrar $lib $url 0 1 2 3 4 5 6 7 & registrar $lib $url 7 6 5 4 3 2 1 0 & wait"
  check "$lib" "$url"; rm -rf "$lib"
}
batch_j2() { "$IMGPACK" batch "$1/incoming/$ACCOUNT" --out-dir "$1/images" --jobs 2 --quiet >/dev/null; }
one_j2() {
  read -r lib _ < <(STORE=local fresh)
  seconds batch_j2 "$lib"
  check "$lib"; rm -rf "$lib"
}
one_seq() {
  read -r lib url < <(fresh)
  seconds registrar "$lib" "$url" 0 1 2 3 4 5 6 7
  check "$lib" "$url"; rm -rf "$lib"
}

declare -A times
for ((rep = 1; rep <= REPS; rep++)); do
  for mode in two one_j2 one_seq; do
    t=$($mode)
    times[$mode]+="$t "
    echo "rep $rep $mode ${t}s" >&2
  done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "store $STORE; 8 uploads of ${SIZE} MiB (${half} MiB of /usr files each), $(nproc) cores, $REPS reps, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| mode | median wall (s) | runs |"
echo "|---|---|---|"
for mode in two one_j2 one_seq; do
  echo "| $mode | $(median "${times[$mode]}") | ${times[$mode]}|"
done
awk -v a="$(median "${times[two]}")" -v b="$(median "${times[one_j2]}")" \
  'BEGIN { printf "two registrars / one process --jobs 2: %.2fx (target <= 1.10x)\n", a / b }'
echo "refusals seen by the racing registrars: $(grep -c 'already being registered' "$WORK/refusals" || true) busy, $(grep -c 'no file' "$WORK/refusals" || true) gone, $(grep -c 'already registered as' "$WORK/refusals" || true) already registered"
