#!/usr/bin/env bash
# Two imgpack binaries against each other and against the floor, on the
# corpus' debian.raw, at zstd levels 1, 2 and 3.
#
#   benches/before-after.sh OLD_IMGPACK NEW_IMGPACK [--quick] [--reps N]
#
# Each repetition runs, per level: OLD convert, NEW convert, the floor meter
# (benches/floor.rs), interleaved. Prints one line per run (tool, level, wall,
# user, sys, peak RSS KiB, archive bytes or zstd CPU seconds, load average),
# then the medians per tool and level with wall / floor (floor = zstd CPU /
# cores), wall / (floor + SHA-256) (the chunk SHA-256 an archive records) and wall / parallel floor (the wall time of zstd on as many threads
# as cores at once, benches/floor.rs). For CPU-time decisions on a shared machine, read the user+sys
# columns; wall is only meaningful when the load average is near 0.
set -euo pipefail

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

OLD="" NEW="" QUICK=0 REPS=3
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --reps) REPS=${2:?--reps needs a number}; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die "unknown argument: $1" ;;
    *) if [[ -z $OLD ]]; then OLD=$(realpath "$1"); elif [[ -z $NEW ]]; then NEW=$(realpath "$1"); else die "too many arguments"; fi ;;
  esac
  shift
done
[[ -x $OLD && -x $NEW ]] || { usage >&2; die "need two imgpack binaries"; }
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer"

if ((QUICK)); then C=$CORPUS_ROOT/quick CORPUS_ARGS=(--quick); else C=$CORPUS_ROOT CORPUS_ARGS=(); fi
bash "$BENCH_DIR/corpus.sh" "${CORPUS_ARGS[@]}" >/dev/null
FLOOR=$(cd "$REPO_DIR" && cargo bench --bench floor --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "floor" and m.get("executable"):
        print(m["executable"])')
[[ -x $FLOOR ]] || die "cargo bench --bench floor --no-run did not build the floor meter"

S=$(mktemp -d "$C/before-after.XXXXXX")
trap 'rm -rf "$S"' EXIT
cd "$C"
cat debian.raw >/dev/null # warm the page cache
RUNS=$S/runs.txt
for ((rep = 1; rep <= REPS; rep++)); do
  for level in 1 2 3; do
    for side in old new; do
      bin=$OLD
      [[ $side == new ]] && bin=$NEW
      rm -f "$S/out.imgpack"
      /usr/bin/time -f '%e %U %S %M' -o "$S/time" "$bin" convert debian.raw -o "$S/out.imgpack" \
        --quiet --level "$level" >/dev/null
      echo "$side $level $(tail -n 1 "$S/time") $(file_size "$S/out.imgpack") $(cut -d' ' -f1 /proc/loadavg)"
    done
    line=$("$FLOOR" debian.raw --level "$level")
    cpu=$(sed -E 's/.*zstd_cpu_s=([0-9.]+).*/\1/' <<<"$line")
    sha=$(sed -E 's/.*sha256_cpu_s=([0-9.]+).*/\1/' <<<"$line")
    pwall=$(sed -E 's/.*parallel_wall_s=([0-9.]+).*/\1/' <<<"$line")
    echo "floor $level - - - - $cpu $(cut -d' ' -f1 /proc/loadavg) $pwall $sha"
  done | tee -a "$RUNS"
  sync
done
python3 - "$RUNS" "$(nproc)" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
cores = int(sys.argv[2])
def med(tool, level, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == tool and r[1] == level)
print("\n| level | floor s | floor + SHA-256 s | parallel floor s | old wall | new wall | new / floor | new / (floor + SHA-256) | new / parallel floor | old CPU | new CPU | old bytes | new bytes |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for level in ("1", "2", "3"):
    floor = med("floor", level, 6) / cores
    floor2 = floor + med("floor", level, 9) / cores
    pfloor = med("floor", level, 8)
    old, new = med("old", level, 2), med("new", level, 2)
    cpu = {s: med(s, level, 3) + med(s, level, 4) for s in ("old", "new")}
    print(f"| {level} | {floor:.2f} | {floor2:.2f} | {pfloor:.2f} | {old:.2f} | {new:.2f} | {new / floor:.2f}x | {new / floor2:.2f}x | {new / pfloor:.2f}x | {cpu['old']:.2f} | "
          f"{cpu['new']:.2f} | {int(med('old', level, 6)):,} | {int(med('new', level, 6)):,} |")
PY
