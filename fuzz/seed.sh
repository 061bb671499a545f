#!/usr/bin/env bash
# Seeds fuzz/corpus/TARGET/ from testdata/ and small images made by qemu-img, gzip, xz, zstd
# and imgpack itself. Run from anywhere; needs a release build of imgpack (cargo build --release)
# and qemu-img/qemu-io for the VHD, VDI and VHDX seeds (skipped with a notice where absent).
set -euo pipefail
cd "$(dirname "$0")"
root=..
imgpack=${IMGPACK:-${CARGO_TARGET_DIR:-$root/target}/release/imgpack}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkdir -p corpus/{qcow2,vhd,vdi,vmdk,vmdk_descriptor,vhdx,parallels,archive,archive_sealed,streams,images}
cp $root/testdata/qcow2/*.qcow2 corpus/qcow2/
gunzip -c $root/testdata/formats/vmdk-sparse.vmdk.gz >corpus/vmdk/sparse.vmdk
gunzip -c $root/testdata/formats/vmdk-stream.vmdk.gz >corpus/vmdk/stream.vmdk
# vmdk_descriptor: the descriptor embedded in the sparse fixture (sector 1, up to its NUL).
dd if=corpus/vmdk/sparse.vmdk bs=512 skip=1 count=20 status=none | tr -d '\000' >corpus/vmdk_descriptor/sparse.txt

# vhd, vdi, vhdx: the testdata fixtures are 3-16 MiB, past libFuzzer's default 1 MiB -max_len
# (a truncated VHDX does not even open). Small images instead.
if command -v qemu-img >/dev/null; then
  # 1 MiB holding 8 KiB of 0x5a at 4 KiB and 4 KiB of 0x33 at 512 KiB
  python3 -c 'import sys; d = bytearray(1 << 20); d[4096:12288] = b"\x5a" * 8192
d[524288:528384] = b"\x33" * 4096; sys.stdout.buffer.write(d)' >"$tmp/small.raw"
  for spec in vpc:vhd:subformat=dynamic vpc:fixed.vhd:subformat=fixed vdi:vdi:static=off \
    vdi:static.vdi:static=on vhdx:vhdx:block_size=1M,log_size=1M \
    vmdk:vmdk:subformat=monolithicSparse vmdk:stream.vmdk:subformat=streamOptimized \
    qcow2:qcow2:cluster_size=4k parallels:parallels:cluster_size=64k; do
    IFS=: read -r fmt name opt <<<"$spec"
    t=${name##*.}
    qemu-img convert -q -f raw -O "$fmt" -o "$opt" "$tmp/small.raw" "corpus/$t/small.$name"
    qemu-img create -q -f "$fmt" "corpus/$t/empty.$t" 1M
  done
else
  echo "seed.sh: qemu-img not found: no small vhd/vdi/vhdx seeds" >&2
fi

# images: every image seed above, in the compact sparse form the `images` target reads.
python3 pack_image.py corpus/images corpus/{qcow2,vhd,vdi,vmdk,vhdx}/*

# archive: small archives made by imgpack (64 KiB chunks keep them small)
head -c 200000 /dev/zero >"$tmp/z.raw"
"$imgpack" convert -q --chunk-size 64K "$tmp/z.raw" -o corpus/archive/z.imgpack
(head -c 5000 /dev/zero; head -c 70000 $root/README.md; head -c 50000 /dev/zero) >"$tmp/t.raw"
"$imgpack" convert -q --chunk-size 64K "$tmp/t.raw" -o corpus/archive/t.imgpack
# a version 1 archive (written before version 2), so both layouts are fuzzed
cp "$root/tests/fixtures/v1-64k.imgpack" corpus/archive/v1-64k.imgpack
cp corpus/archive/*.imgpack corpus/archive_sealed/

# streams: raw and qcow2 payloads in each compression, plus nested ones
for f in "$tmp/t.raw" $root/testdata/qcow2/v2-512.qcow2; do
  b=$(basename "$f")
  gzip -c "$f" >"corpus/streams/$b.gz"
  xz -c "$f" >"corpus/streams/$b.xz"
  zstd -q -c "$f" >"corpus/streams/$b.zst"
done
gzip -c "$tmp/t.raw" | xz -c >corpus/streams/t.raw.gz.xz
cp $root/testdata/formats/vmdk-stream.vmdk.gz corpus/streams/
echo "seeded: $(ls corpus | tr '\n' ' ')"
