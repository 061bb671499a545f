#!/bin/sh
# Makes the VHD, VDI, VMDK, VHDX and Parallels fixtures of tests/formats_hostile.rs with qemu-img, from one
# patterned 3 MiB disk (data across grain and block boundaries, zero regions between), and
# records the sha256 of what `qemu-img convert -O raw` makes of each. The images are stored
# gzipped (they are mostly zeros); the tests inflate them.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/disk.raw" <<'PY'
import random, sys
size = 3 * 1024 * 1024 + 1536
disk = bytearray(size)
rng = random.Random(8)
for offset, length in [(0, 4096), (65536 - 100, 300), (1048576 - 7, 20),
                       (2097152 - 512, 1024), (2500000, 10000), (size - 600, 600)]:
    for i in range(length):
        disk[offset + i] = rng.randrange(1, 256)
open(sys.argv[1], "wb").write(disk)
PY
: > SHA256SUMS
make() {
    name=$1 format=$2 options=$3
    qemu-img convert -f raw -O "$format" -o "$options" "$tmp/disk.raw" "$tmp/$name"
    qemu-img convert -f "$format" -O raw "$tmp/$name" "$tmp/$name.raw"
    echo "$(sha256sum < "$tmp/$name.raw" | cut -d' ' -f1)  $name" >> SHA256SUMS
    gzip -9n < "$tmp/$name" > "$name.gz"
}
make vhd-dynamic.vhd vpc subformat=dynamic
make vhd-fixed.vhd vpc subformat=fixed
make vdi-dynamic.vdi vdi static=off
make vdi-static.vdi vdi static=on
make vmdk-sparse.vmdk vmdk subformat=monolithicSparse
make vmdk-stream.vmdk vmdk subformat=streamOptimized
make vhdx-dynamic.vhdx vhdx subformat=dynamic,block_size=1M
make vhdx-fixed.vhdx vhdx subformat=fixed,block_size=1M
make parallels.hds parallels cluster_size=64k
