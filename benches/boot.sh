#!/usr/bin/env bash
# Boots the corpus disk's Debian system in a real VM straight from an archive served by
# `imgpack serve`, and reports how much of the image the boot read:
#
#   IMGPACK_CORPUS=/work/bench-corpus benches/boot.sh [--imgpack PATH] [--accel kvm|tcg]
#                                                     [--archive PATH]
#
# --archive serves that archive of the corpus disk (e.g. the format-2 one benches/serve.sh
# --archives DIR made) instead of $CORPUS/cache/debian.imgpack.
#
# The corpus disk (benches/corpus.sh) holds a debootstrapped Debian 12 root file system in
# partition 1 but no kernel or boot loader, so qemu boots the host's Debian kernel and
# initramfs (package linux-image-amd64) with root=/dev/vda1 on the NBD export; the guest's
# init is a shell that prints /etc/os-release and a marker, then powers off. qemu keeps the
# guest's writes in a temporary file (snapshot=on), so the export stays read-only.
# Needs qemu-system-x86 (from the suite of the installed qemu-utils: see below) and
# linux-image-amd64 (installed here when missing). TCG is the
# default because nested KVM on the project's machines fails (`failed to set MSR`).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

IMGPACK=$REPO_DIR/target/release/imgpack ACCEL=tcg ARCHIVE=
while (($#)); do
  case $1 in
    --imgpack) IMGPACK=${2:?}; shift ;;
    --accel) ACCEL=${2:?}; shift ;;
    --archive) ARCHIVE=${2:?}; shift ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
[[ -x $IMGPACK ]] || (cd "$REPO_DIR" && cargo build --release)
KERNEL=$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)
if ! command -v qemu-system-x86_64 >/dev/null; then
  # Not installed here on purpose: qemu-system-x86 must come from the same suite as the
  # machine's qemu-utils. On these machines qemu-utils is bookworm-backports' 10.0.2, and
  # installing qemu-system-x86 from bookworm replaces it with 7.2 (it happened once).
  die "qemu-system-x86_64 missing: install qemu-system-x86 from the suite of your qemu-utils \
($(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null)), e.g. with bookworm-backports in the \
apt sources: apt-get install -t bookworm-backports qemu-system-x86"
fi
if [[ -z $KERNEL ]]; then
  log "installing linux-image-amd64 (a kernel and initramfs for the guest)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    linux-image-amd64 initramfs-tools >/dev/null
  KERNEL=$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)
fi
INITRD=/boot/initrd.img-${KERNEL#/boot/vmlinuz-}
[[ -f $INITRD ]] || die "no initramfs $INITRD for $KERNEL"
C=$CORPUS_ROOT
[[ -f $C/debian.raw ]] || die "no corpus in $C (benches/corpus.sh)"
ARCHIVE=${ARCHIVE:-$C/cache/debian.imgpack}
[[ -f $ARCHIVE ]] || { log "converting debian.raw"; mkdir -p "$C/cache"; "$IMGPACK" convert --quiet "$C/debian.raw" -o "$ARCHIVE"; }

WORK=$(mktemp -d)
SERVER=
cleanup() { [[ -z $SERVER ]] || kill "$SERVER" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
"$IMGPACK" serve "$ARCHIVE" --socket "$WORK/nbd.sock" --json >"$WORK/serve.json" 2>"$WORK/serve.err" &
SERVER=$!
for _ in $(seq 100); do [[ -S $WORK/nbd.sock ]] && break; sleep 0.05; done
[[ -S $WORK/nbd.sock ]] || die "imgpack serve did not start: $(cat "$WORK/serve.err")"

log "booting $KERNEL with root on nbd+unix:///?socket=$WORK/nbd.sock ($ACCEL)"
start=$(now)
timeout 900 qemu-system-x86_64 -accel "$ACCEL" -smp 1 -m 1G -nographic -no-reboot \
  -kernel "$KERNEL" -initrd "$INITRD" \
  -append 'console=ttyS0 root=/dev/vda1 ro panic=-1 init=/bin/sh -- -c "cat /etc/os-release; echo BOOTED-FROM-IMGPACK; echo o > /proc/sysrq-trigger"' \
  -drive "file=nbd+unix:///?socket=$WORK/nbd.sock,format=raw,if=virtio,snapshot=on" \
  >"$WORK/console.log" 2>&1 || true
seconds=$(elapsed_since "$start")
grep -q '^BOOTED-FROM-IMGPACK' "$WORK/console.log" || { tail -n 40 "$WORK/console.log" >&2; die "the guest did not boot"; }
kill -TERM "$SERVER"
wait "$SERVER" || true
SERVER=
grep -a '^PRETTY_NAME' "$WORK/console.log"
echo "boot to the guest's shell and power-off: ${seconds} s ($ACCEL)"
tail -n1 "$WORK/serve.json"
python3 - "$WORK/serve.json" <<'EOF'
import json, sys
stats = json.loads(open(sys.argv[1]).read().splitlines()[-1])
mib = lambda n: f"{n / 2**20:.1f} MiB"
print(f"guest read {mib(stats['bytes_served'])} of a {mib(stats['virtual_size'])} disk; "
      f"the server decoded {stats['chunks_decoded']} chunks ({mib(stats['bytes_decoded'])}, "
      f"{stats['chunks_read_ahead']} of them read ahead)")
EOF
