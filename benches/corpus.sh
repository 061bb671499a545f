#!/usr/bin/env bash
# Build (and cache) the imgpack benchmark corpus.
#
#   benches/corpus.sh [--quick]
#
# Output directory: ${IMGPACK_CORPUS:-<repo>/target/bench-corpus}
# (--quick builds the small variant in its quick/ subdirectory).
# Every file is built only when missing or older than what it is made from,
# so a second run is a no-op. See benches/README-bench.md.
set -euo pipefail

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

QUICK=0
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

# Debian system installed into the full corpus' disk.
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
INCLUDE=linux-image-amd64,systemd-sysv,udev,openssh-server,python3,perl,git,curl,ca-certificates,iproute2,iputils-ping,less,vim-tiny,locales,man-db,rsync,gnupg,cron,logrotate,sudo

MIB=$((1 << 20))
if ((QUICK)); then
  OUT=$CORPUS_ROOT/quick
  DISK_MIB=512     # disk holds copies of this machine's /usr files
  JUNK_SLICES=6    # "deleted files" left in free space: 6 x 8 MiB
  JUNK_SLICE_MIB=8
  XZ_LEVEL=0       # keeps the quick build short; same multi-block format
  TEXT_FILE=text-256m.raw TEXT_MIB=256
  RANDOM_FILE=random-256m.raw RANDOM_MIB=256
  ZERO_FILE=zero-1g.raw ZERO_MIB=1024
else
  OUT=$CORPUS_ROOT
  DISK_MIB=4096    # disk holds a debootstrapped Debian system
  JUNK_SLICES=10   # "deleted files" left in free space: 10 x 32 MiB
  JUNK_SLICE_MIB=32
  XZ_LEVEL=6
  TEXT_FILE=text-1g.raw TEXT_MIB=1024
  RANDOM_FILE=random-1g.raw RANDOM_MIB=1024
  ZERO_FILE=zero-4g.raw ZERO_MIB=4096
fi
SPARSE_EXTENTS=16 # sparse-1t.raw: dense-64m.raw's 64 MiB in 16 x 4 MiB extents
CACHE=$OUT/cache
WORK=$OUT/work

mkdir -p "$OUT" "$CACHE" "$OUT/.stats"
exec 9>"$OUT/.lock"
flock -n 9 || { log "waiting for another corpus.sh on $OUT"; flock 9; }

cleanup() {
  local mnt
  # debootstrap mounts /proc etc. inside its target; never leave them behind.
  if [[ -d $WORK ]]; then
    while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done < <(
      awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r)
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

T_START=$(now)
if ((QUICK)); then ensure_tools base; else ensure_tools debootstrap; fi

# ---------------------------------------------------------------- file trees
# A tarball of the tree that goes into the disk's file system is cached in
# $CACHE, so rebuilding the disk does not repeat debootstrap.

build_debian_tarball() {
  local key tar root t
  key=$(printf '%s %s %s' "$SUITE" "$MIRROR" "$INCLUDE" | sha256sum | cut -c1-10)
  tar=$CACHE/rootfs-$SUITE-$key.tar.zst
  if [[ ! -s $tar ]]; then
    [[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
    t=$(now)
    root=$WORK/debootstrap
    rm -rf "$root"
    mkdir -p "$root"
    log "debootstrap --variant=minbase $SUITE from $MIRROR (several minutes) ..."
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" \
      >"$WORK/debootstrap.log" 2>&1; then
      tail -n 20 "$WORK/debootstrap.log" >&2
      die "debootstrap failed (log above); try DEBIAN_SUITE=/DEBIAN_MIRROR= or --quick"
    fi
    log "debootstrap done in $(elapsed_since "$t") s, $(du -sh "$root" | cut -f1); caching tarball"
    tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' --acls --sort=name \
      -I 'zstd -T0 -3' -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf "$root"
  fi
  echo "$tar"
}

# Quick mode: a deterministic (for a given machine) selection of /usr files.
build_usr_tarball() {
  local tar=$CACHE/usr-tree.tar.zst list=$WORK/usr-files.txt
  if [[ ! -s $tar ]]; then
    mkdir -p "$WORK"
    : >"$list"
    # root:budget MiB; every second regular file below 16 MiB, in path order
    local spec dir budget
    for spec in /usr/bin:40 /usr/lib:80 /usr/share:50 /usr/include:10; do
      dir=${spec%%:*} budget=${spec#*:}
      [[ -d $dir ]] || continue
      find "$dir" -xdev -type f -readable -size -16M -printf '%s\t%P\n' | sort -t$'\t' -k2 |
        awk -F'\t' -v b=$((budget * MIB)) -v d="${dir#/}" \
          'NR % 2 == 0 && s + $1 <= b { s += $1; print d "/" $2 }' >>"$list"
    done
    tar -C / --sort=name -I 'zstd -T0 -3' -cf "$tar.tmp" -T "$list"
    mv "$tar.tmp" "$tar"
  fi
  echo "$tar"
}

# ---------------------------------------------------------------- the disk
# build_disk TREE_TARBALL OUTPUT
# GPT disk of DISK_MIB, one partition from 1 MiB to (end - 1 MiB) holding an
# ext4 file system made with `mkfs.ext4 -d` (no mount needed). Before mkfs the
# partition's free area is seeded with slices of real file data (the tree's
# tar stream): mkfs with nodiscard,lazy_itable_init=1 leaves them in unused
# blocks, like deleted files on a used server's disk.
build_disk() {
  local tar=$1 out=$2
  local part=$WORK/part.img disk=$WORK/disk.raw tree=$WORK/tree junk=$WORK/junk.tar
  local part_bytes=$(((DISK_MIB - 2) * MIB)) part_mib=$((DISK_MIB - 2))
  local tree_mib junk_bytes slice=$((JUNK_SLICE_MIB * MIB)) first last i src dst t
  t=$(now)
  rm -rf "$tree" && mkdir -p "$tree"
  tar -C "$tree" --numeric-owner --xattrs --xattrs-include='*' --acls -I zstd -xpf "$tar"
  tree_mib=$(du -sm "$tree" | cut -f1)
  zstd -q -dc "$tar" >"$junk"
  junk_bytes=$(file_size "$junk")

  rm -f "$part" && truncate -s "$part_bytes" "$part"
  # mke2fs -d packs file data at the start of the file system; put the junk
  # well above it, spread evenly up to the end of the partition.
  first=$((tree_mib * 5 / 4 + 64))
  last=$((part_mib - JUNK_SLICE_MIB - 16))
  ((last > first)) || die "disk too small for tree ($tree_mib MiB)"
  for ((i = 0; i < JUNK_SLICES; i++)); do
    dst=$(((first + (last - first) * i / (JUNK_SLICES - 1)) * MIB))
    src=$(((junk_bytes - slice) * i / (JUNK_SLICES - 1) / 4096 * 4096))
    dd if="$junk" of="$part" bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes \
      skip="$src" seek="$dst" count="$slice" conv=notrunc status=none
  done
  rm -f "$junk"

  log "mkfs.ext4 -d ($tree_mib MiB tree) into a $part_mib MiB partition"
  mkfs.ext4 -q -F -L rootfs -U 6a1c0f3e-3b7d-4e59-9a51-2f0d6c1b7e01 \
    -E nodiscard,lazy_itable_init=1,hash_seed=0b5ad1ce-6d8a-4c1e-8a2f-5e3b9c7d1f00 \
    -d "$tree" "$part"
  rm -rf "$tree"
  e2fsck -fn "$part" >"$WORK/e2fsck.log" 2>&1 || { cat "$WORK/e2fsck.log" >&2; die "e2fsck failed"; }
  dumpe2fs -h "$part" 2>/dev/null |
    awk -F: '/^Block count/ { n = $2 } /^Free blocks/ { f = $2 } /^Block size/ { b = $2 }
             END { printf "%d\n", (n - f) * b }' >"$OUT/.stats/$(basename "$out").fs-used"

  rm -f "$disk" && truncate -s "$((DISK_MIB * MIB))" "$disk"
  sfdisk --quiet --no-reread --no-tell-kernel "$disk" <<EOF
label: gpt
label-id: 3F6A1E52-0C1B-4D7E-9F3A-6B2C8D4E5F10
unit: sectors
start=2048, size=$((part_bytes / 512)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=8B1D2C3E-4F5A-4B6C-8D7E-9F0A1B2C3D4E, name="rootfs"
EOF
  dd if="$part" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
  rm -f "$part"
  fallocate --dig-holes "$disk"
  mv "$disk" "$out"
  log "built $(basename "$out") in $(elapsed_since "$t") s"
}

# ---------------------------------------------------------------- helpers
# make_from OUTPUT DEP -- COMMAND...: run COMMAND (writing "$OUTPUT.tmp")
# unless OUTPUT exists and is newer than DEP ("" = no dependency); then
# rename it into place.
make_from() {
  local out=$1 dep=$2 t
  shift 3
  if [[ -n $dep ]]; then fresh_than "$out" "$dep" && return 0; else [[ -e $out ]] && return 0; fi
  t=$(now)
  rm -f "$out.tmp"
  "$@"
  mv "$out.tmp" "$out"
  log "built $(basename "$out") in $(elapsed_since "$t") s"
}

# ---------------------------------------------------------------- build
cd "$OUT"

if [[ ! -s debian.raw ]]; then
  mkdir -p "$WORK"
  if ((QUICK)); then tree_tar=$(build_usr_tarball); else tree_tar=$(build_debian_tarball); fi
  build_disk "$tree_tar" "$OUT/debian.raw"
fi

make_from debian.qcow2 debian.raw -- \
  qemu-img convert -f raw -O qcow2 debian.raw debian.qcow2.tmp
make_from debian-zstd.qcow2 debian.raw -- \
  qemu-img convert -f raw -c -O qcow2 -o compression_type=zstd debian.raw debian-zstd.qcow2.tmp
make_from debian.raw.gz debian.raw -- \
  sh -c 'pigz -6 -c debian.raw > debian.raw.gz.tmp'
# xz -T2 always writes multiple independent blocks (block size 3 x dict size)
make_from debian.raw.xz debian.raw -- \
  sh -c "xz -T2 -$XZ_LEVEL -c debian.raw > debian.raw.xz.tmp"

if [[ ! -s dense-64m.raw ]]; then
  t=$(now)
  gen_text dense-64m.raw.tmp $((64 * MIB)) 64
  mv dense-64m.raw.tmp dense-64m.raw
  log "built dense-64m.raw in $(elapsed_since "$t") s"
fi

# 1 TiB sparse file; its 16 extents of 4 MiB are dense-64m.raw's 16 quarters,
# the first at offset 0, the last ending at 1 TiB, the others scattered.
make_sparse() {
  local tmp=sparse-1t.raw.tmp i ext=4 off
  rm -f "$tmp" && truncate -s 1T "$tmp"
  for ((i = 0; i < SPARSE_EXTENTS; i++)); do
    if ((i == 0)); then
      off=0
    elif ((i == SPARSE_EXTENTS - 1)); then
      off=$(((1 << 20) - ext))
    else # MiB offset: i * 64 GiB + a pseudo-random MiB-aligned shift
      off=$((i * 65536 + (i * 7919 * 13) % 60000))
    fi
    dd if=dense-64m.raw of="$tmp" bs=1M skip=$((i * ext)) seek="$off" count="$ext" \
      conv=notrunc status=none
  done
}
make_from sparse-1t.raw dense-64m.raw -- make_sparse

make_from "$RANDOM_FILE" "" -- \
  dd if=/dev/urandom of="$RANDOM_FILE.tmp" bs=1M count="$RANDOM_MIB" iflag=fullblock status=none
make_from "$ZERO_FILE" "" -- truncate -s $((ZERO_MIB * MIB)) "$ZERO_FILE.tmp"
make_from "$TEXT_FILE" "" -- gen_text "$TEXT_FILE.tmp" $((TEXT_MIB * MIB)) 1024

# ---------------------------------------------------------------- stats
# Per file: apparent size, allocated bytes, non-zero 4 KiB blocks (x 4096),
# size after `zstd -3` (raw files only; not for the 1 TiB sparse file).
FILES=(debian.raw debian.qcow2 debian-zstd.qcow2 debian.raw.gz debian.raw.xz
  sparse-1t.raw dense-64m.raw "$RANDOM_FILE" "$ZERO_FILE" "$TEXT_FILE")
for f in "${FILES[@]}"; do
  st=.stats/$f
  fresh_than "$st" "$f" && continue
  t=$(now)
  nz=- z3=-
  case $f in
    *.raw)
      nz=$(($(nonzero_blocks "$f") * 4096))
      [[ $f == sparse-1t.raw ]] || z3=$(zstd -T0 -3 -q -c "$f" | wc -c)
      ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$f" "$(file_size "$f")" "$(file_alloc "$f")" "$nz" "$z3" >"$st.tmp"
  mv "$st.tmp" "$st"
  log "measured $f in $(elapsed_since "$t") s"
done

human() {
  [[ $1 == - ]] && { echo -; return; }
  numfmt --to=iec-i --suffix=B --format='%.2f' "$1" 2>/dev/null || echo "$1"
}
{
  echo "| file | virtual | allocated | non-zero data | zstd -3 |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for f in "${FILES[@]}"; do
    IFS=$'\t' read -r name size alloc nz z3 <".stats/$f"
    virt=$size
    [[ $name == *.qcow2 ]] &&
      virt=$(qemu-img info --output=json "$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    printf '| %s | %s | %s | %s | %s |\n' "$name" "$(human "$virt")" "$(human "$alloc")" \
      "$(human "$nz")" "$(human "$z3")"
  done
} >corpus.md

if [[ -s .stats/debian.raw.fs-used ]]; then
  echo "debian.raw: ext4 blocks in use: $(human "$(cat .stats/debian.raw.fs-used)")" >>corpus.md
fi
cat corpus.md
echo
qemu-img info debian.raw | sed -n '1,4p'
sfdisk -l debian.raw 2>/dev/null | tail -n 2
log "corpus ready in $OUT ($(elapsed_since "$T_START") s)"
