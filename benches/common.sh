# shellcheck shell=bash
# Shared helpers for benches/corpus.sh and benches/compare.sh.
# Sourced, never executed directly.
# shellcheck disable=SC2034 # variables are used by the sourcing scripts

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
CORPUS_ROOT=${IMGPACK_CORPUS:-$REPO_DIR/target/bench-corpus}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Seconds since the epoch with sub-second precision (bash 5 builtin).
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# ensure_tools base|debootstrap
# Installs the Debian packages the benchmarks need, only when a tool is
# missing; runs `apt-get update` first whenever something must be installed.
ensure_tools() {
  local -a pkgs=()
  local want_debootstrap=0
  [[ $1 == debootstrap ]] && want_debootstrap=1
  # command package
  local pair cmd pkg
  for pair in qemu-img:qemu-utils pigz:pigz xz:xz-utils zstd:zstd \
              mkfs.ext4:e2fsprogs e2fsck:e2fsprogs dumpe2fs:e2fsprogs \
              sfdisk:fdisk hyperfine:hyperfine python3:python3 \
              fallocate:util-linux; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || pkgs+=("$pkg")
  done
  [[ -x /usr/bin/time ]] || pkgs+=(time)
  if ((want_debootstrap)); then
    command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
  fi
  ((${#pkgs[@]})) || return 0
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  log "installing missing packages: ${pkgs[*]}"
  [[ $(id -u) -eq 0 ]] || die "not root: run 'apt-get update && apt-get install -y ${pkgs[*]}' first"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
}

# nonzero_blocks FILE -> prints the number of 4 KiB blocks that are not all
# zero. Only data extents are read (SEEK_DATA/SEEK_HOLE), so a 1 TiB sparse
# file costs as much as its data.
nonzero_blocks() {
  python3 - "$1" <<'PY'
import os, sys
BS = 4096
CHUNK = 8 << 20
ZCHUNK = bytes(CHUNK)
ZBLK = bytes(BS)
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
count = 0
pos = 0
while pos < size:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:  # ENXIO: no data after pos
        break
    end = os.lseek(fd, start, os.SEEK_HOLE)
    start -= start % BS
    os.lseek(fd, start, os.SEEK_SET)
    off = start
    while off < end:
        buf = os.read(fd, min(CHUNK, end - off))
        if not buf:
            break
        if buf != ZCHUNK[:len(buf)]:
            mv = memoryview(buf)
            for i in range(0, len(buf), BS):
                if mv[i:i + BS] != ZBLK[:len(mv[i:i + BS])]:
                    count += 1
        off += len(buf)
    pos = max(end, off)
print(count)
PY
}

# warm FILE... : read the data extents of each file once (holes are skipped)
# so that the page cache is in the same state for every tool of a group.
warm() {
  python3 - "$@" <<'PY'
import os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        os.lseek(fd, start, os.SEEK_SET)
        left = end - start
        while left > 0:
            b = os.read(fd, min(16 << 20, left))
            if not b:
                break
            left -= len(b)
        pos = end
    os.close(fd)
PY
}

# page_cache evict|load DIR: drops every file under DIR from the page cache (posix_fadvise
# DONTNEED: no root needed, nothing else evicted) or reads every one into it, so that two
# layouts of the same data (one archive, or many frame objects) are timed in the same state.
page_cache() {
  python3 - "$1" "$2" <<'PY'
import os, sys
mode, root = sys.argv[1], sys.argv[2]
for top, _, files in os.walk(root):
    for name in files:
        fd = os.open(os.path.join(top, name), os.O_RDONLY)
        try:
            if mode == "evict":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 1 << 20):
                    pass
        finally:
            os.close(fd)
PY
}

# gen_text PATH BYTES SEED: deterministic, text-heavy data (prose with a
# Zipf-distributed vocabulary, syslog-like lines, CSV rows, JSON records).
gen_text() {
  python3 - "$@" <<'PY'
import itertools, random, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
letters = "etaoinshrdlcumwfgypbvkjxqz"
lw = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4,
      2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1]
vocab = []
for _ in range(20000):
    n = min(12, int(rng.expovariate(1 / 4.5)) + 1)
    vocab.append("".join(rng.choices(letters, weights=lw, k=n)))
cum = list(itertools.accumulate(1 / (r + 1) ** 1.07 for r in range(len(vocab))))
def words(k):
    return " ".join(rng.choices(vocab, cum_weights=cum, k=k))
hosts = ["web%02d" % i for i in range(12)] + ["db1", "db2", "cache", "lb"]
svcs = ["nginx", "sshd", "cron", "kernel", "systemd", "postgres", "app", "dockerd"]
levels = ["INFO"] * 8 + ["WARN"] * 2 + ["ERROR", "DEBUG"]
pool = []
t = 1_700_000_000
for _ in range(250_000):
    r = rng.random()
    t += rng.randint(0, 3)
    if r < 0.40:
        s = words(rng.randint(4, 20))
        pool.append(s[:1].upper() + s[1:] + ".")
    elif r < 0.78:
        pool.append("%d.%03d %s %s[%d]: %s %s id=%08x took=%dms" % (
            t, rng.randint(0, 999), rng.choice(hosts), rng.choice(svcs),
            rng.randint(100, 40000), rng.choice(levels), words(rng.randint(3, 10)),
            rng.getrandbits(32), rng.randint(1, 5000)))
    elif r < 0.90:
        pool.append(",".join(str(rng.randint(0, 10 ** rng.randint(1, 7)))
                             for _ in range(rng.randint(4, 12))))
    else:
        pool.append('{"user": "%s", "id": %d, "score": %.4f, "tags": ["%s", "%s"]}' % (
            words(1), rng.randint(1, 10 ** 6), rng.random(), words(1), words(1)))
with open(path, "wb") as f:
    left = size
    while left > 0:
        chunk = ("\n".join(rng.choices(pool, k=40_000)) + "\n").encode()[:left]
        f.write(chunk)
        left -= len(chunk)
PY
}

# file_size FILE -> apparent size in bytes
file_size() { stat -c %s "$1"; }
# file_alloc FILE -> allocated bytes on disk
file_alloc() { echo $(($(stat -c '%b * %B' "$1"))); }

# fresh_than TARGET DEP... : true when TARGET exists and is newer than every DEP
fresh_than() {
  local target=$1 dep
  shift
  [[ -e $target ]] || return 1
  for dep in "$@"; do
    [[ $target -nt $dep ]] || return 1
  done
}
