#!/usr/bin/env bash
# Issue 14, qcow2 -c: does the zstd library explain imgpack's size or speed against qemu-img?
# Compresses every Nth non-zero 64 KiB cluster of debian.raw, one frame per cluster at level
# 3 (as qcow2 stores them), with the system libzstd (qemu-img's) and with the zstd bundled in
# imgpack's build (zstd-sys), and prints bytes out, clusters that did not shrink, CPU time.
#
#   IMGPACK_CORPUS=/work/bench-corpus bash benches/export-zstd.sh [N]   (N: default 4)
#
# Needs a release build (for zstd-sys's libzstd.a), gcc and python3. Scratch in $SCRATCH.
set -euo pipefail
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"
SCRATCH=${SCRATCH:-/tmp/imgpack-bench-export}
mkdir -p "$SCRATCH"
archive=$(find "$REPO_DIR/target/release/build" -path '*zstd-sys-*/out/libzstd.a' | head -1)
[[ -n $archive ]] || die "no zstd-sys libzstd.a: build with cargo build --release first"
# The bundled symbols are hidden: export them through small wrappers.
cat >"$SCRATCH/w.c" <<'C'
#include <stddef.h>
typedef struct ZSTD_CCtx_s ZSTD_CCtx;
ZSTD_CCtx* ZSTD_createCCtx(void);
size_t ZSTD_compress2(ZSTD_CCtx*, void*, size_t, const void*, size_t);
size_t ZSTD_compressCCtx(ZSTD_CCtx*, void*, size_t, const void*, size_t, int);
unsigned ZSTD_isError(size_t);
const char* ZSTD_versionString(void);
#define E __attribute__((visibility("default")))
E ZSTD_CCtx* w_createCCtx(void){return ZSTD_createCCtx();}
E size_t w_compress2(ZSTD_CCtx*c,void*d,size_t dc,const void*s,size_t n){return ZSTD_compress2(c,d,dc,s,n);}
E size_t w_compressCCtx(ZSTD_CCtx*c,void*d,size_t dc,const void*s,size_t n,int l){return ZSTD_compressCCtx(c,d,dc,s,n,l);}
E unsigned w_isError(size_t r){return ZSTD_isError(r);}
E const char* w_versionString(void){return ZSTD_versionString();}
C
gcc -O2 -shared -fPIC -o "$SCRATCH/libzstd-bundled.so" "$SCRATCH/w.c" "$archive"
uptime
BUNDLED=$SCRATCH/libzstd-bundled.so RAW=$CORPUS_ROOT/debian.raw python3 - "${1:-4}" <<'PY'
import ctypes, os, sys, time, resource
class W:
    def __init__(self, lib, prefix): self.lib, self.p = lib, prefix
    def __getattr__(self, n): return getattr(self.lib, self.p + n[5:] if n.startswith("ZSTD_") else n)
libs = {"system (qemu-img's)": W(ctypes.CDLL("libzstd.so.1"), "ZSTD_"), "bundled (imgpack's)": W(ctypes.CDLL(os.environ["BUNDLED"]), "w_")}
for name, lib in libs.items():
    lib.ZSTD_versionString.restype = ctypes.c_char_p
    lib.ZSTD_createCCtx.restype = ctypes.c_void_p
    lib.ZSTD_compress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    lib.ZSTD_compress2.restype = ctypes.c_size_t
    lib.ZSTD_compressCCtx.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    lib.ZSTD_compressCCtx.restype = ctypes.c_size_t
    lib.ZSTD_isError.restype = ctypes.c_uint
CS = 65536
f = open(os.environ["RAW"], "rb"); fd = f.fileno()
size = os.fstat(fd).st_size
clusters = []
pos = 0; step = int(sys.argv[1]) if len(sys.argv) > 1 else 4
k = 0
while pos < size:
    try: d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError: break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    c = d // CS * CS
    while c < h:
        if k % step == 0:
            b = os.pread(fd, CS, c)
            if b.count(0) != len(b): clusters.append(b)
        k += 1; c += CS
    pos = h
print(f"{len(clusters)} non-zero clusters sampled (every {step}th)")
dst = ctypes.create_string_buffer(CS)
for name, lib in libs.items():
    cctx = lib.ZSTD_createCCtx()
    for api in ["compress2", "compressCCtx"]:
        total = 0; plain = 0
        t = time.process_time()
        for b in clusters:
            if api == "compress2":
                n = lib.ZSTD_compress2(cctx, dst, CS - 1, b, CS)
            else:
                n = lib.ZSTD_compressCCtx(cctx, dst, CS - 1, b, CS, 3)
            if lib.ZSTD_isError(n): plain += 1; total += CS
            else: total += n
        t = time.process_time() - t
        print(f"{name} {lib.ZSTD_versionString().decode()} {api}: {total} bytes, {plain} stored plain, {t:.2f} s CPU ({len(clusters)*CS/t/1e6:.0f} MB/s)")
PY
