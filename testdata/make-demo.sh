#!/usr/bin/env bash
# Builds testdata/demo.raw: an 8 MiB raw disk with an MBR partition table and an ext4 file
# system (made without mounting, with mkfs.ext4 -d) holding a few text files. It is the image
# the README's quick start converts. Needs e2fsprogs and fdisk (sfdisk).
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/etc" "$work/root/home/demo"
printf 'demo image for imgpack\n' > "$work/root/etc/motd"
for i in $(seq 1 200); do echo "line $i: the quick brown fox jumps over the lazy dog"; done > "$work/root/home/demo/notes.txt"
head -c 300000 /dev/zero | tr '\0' 'x' > "$work/root/home/demo/padding.txt"
truncate -s 7M "$work/part.img"
mkfs.ext4 -q -F -E root_owner=0:0 -U 6f1c2d1e-0000-4000-8000-000000000001 -d "$work/root" "$work/part.img"
rm -f demo.raw
truncate -s 8M demo.raw
echo 'start=2048, type=83' | sfdisk -q demo.raw
dd if="$work/part.img" of=demo.raw bs=1M seek=1 conv=notrunc,sparse status=none
sha256sum demo.raw
