#!/usr/bin/env bash
# Regenerates the small qcow2 fixtures in this directory and SHA256SUMS, the sha256 of what
# `qemu-img convert -O raw` makes of each (the bytes imgpack must reproduce).
#
#   testdata/qcow2/make.sh
#
# Needs qemu-img and qemu-io. The fixtures let the parser be tested where qemu is absent
# (tests/qcow2_fixtures.rs); regenerate them only on purpose, and commit the result.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Writes that straddle cluster and subcluster boundaries, a zero write and a discard.
writes() {
  qemu-io -f qcow2 \
    -c "write -P 0x5a 0 3k" \
    -c "write -P 0xa5 15872 1k" \
    -c "write -P 0x11 1m 20k" \
    -c "write -z 1030k 4k" \
    -c "discard 1040k 4k" \
    -c "write -P 0x3c 2047k 1536" \
    -c "write -P 0xe7 4193792 512" \
    "$1" >/dev/null
}

rm -f ./*.qcow2 SHA256SUMS

# Version 2 (72-byte header), 512-byte clusters.
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 v2-512.qcow2 4M
writes v2-512.qcow2

# Version 3, 4 KiB clusters, data changed after an internal snapshot.
qemu-img create -q -f qcow2 -o cluster_size=4k snapshot-4k.qcow2 4M
writes snapshot-4k.qcow2
qemu-img snapshot -c before snapshot-4k.qcow2
qemu-io -f qcow2 -c "write -P 0x77 1m 6k" -c "write -z 0 2k" -c "discard 2044k 4k" \
  snapshot-4k.qcow2 >/dev/null

# zlib-compressed clusters of 4 KiB (compressed clusters share host sectors).
qemu-img convert -c -O qcow2 -o cluster_size=4k snapshot-4k.qcow2 zlib-4k.qcow2

# zstd, extended L2 entries (subclusters of 512 bytes), one compressed cluster.
# The file ends inside its last data clusters, which read as zeros past the end.
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k,compression_type=zstd zstd-extl2.qcow2 4M
qemu-io -f qcow2 -c "write -P 0x5a 0 3k" -c "write -P 0xa5 1500 1k" -c "write -z 2k 512" -c "write -P 0x3c 15872 512" \
  -c "write -c -P 0x42 64k 16k" zstd-extl2.qcow2 >/dev/null

# 1-bit refcounts, lazy refcounts, left dirty (qemu-io aborts without flushing refcounts).
qemu-img create -q -f qcow2 -o refcount_bits=1,lazy_refcounts=on,cluster_size=4k dirty-lazy.qcow2 4M
qemu-io -f qcow2 -c "write -P 0x5a 0 3k" -c "write -P 0x99 3000k 9k" -c abort dirty-lazy.qcow2 >/dev/null 2>&1 || true

for image in *.qcow2; do
  qemu-img convert -O raw "$image" "$tmp/out.raw"
  echo "$(sha256sum <"$tmp/out.raw" | cut -d' ' -f1)  $image"
done >SHA256SUMS
ls -l ./*.qcow2
cat SHA256SUMS
