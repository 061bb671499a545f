#!/usr/bin/env bash
# The digest measurements of the README's "Digests" section, interleaved, printing
# "what wall user sys" per run (take medians; on a shared machine compare CPU, user + sys).
#   BASE=/path/to/imgpack-before-digests NEW=target/release/imgpack \
#   CORPUS=/work/bench-corpus bash benches/digest.sh [REPS]
# BASE is an imgpack built before format version 2 (commit 9a8c1b3): convert without digests.
set -euo pipefail
reps=${1:-5}
corpus=${CORPUS:?set CORPUS to the directory benches/corpus.sh made}
new=${NEW:-target/release/imgpack}
base=${BASE:?set BASE to an imgpack without digests}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/imgpack-digest-bench.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
timed() { /usr/bin/time -f "$1 %e %U %S" "${@:2}" >/dev/null; }
"$base" convert "$corpus/debian.raw" -o "$scratch/v1.imgpack" --quiet >/dev/null
"$new" convert "$corpus/debian.raw" -o "$scratch/v2.imgpack" --quiet >/dev/null
for _ in $(seq "$reps"); do
    for which in base new; do
        bin=$base; [[ $which == new ]] && bin=$new
        timed "convert-$which" "$bin" convert "$corpus/debian.raw" -o "$scratch/out.imgpack" --quiet
        rm -f "$scratch/out.imgpack"; sync
    done
    for version in v1 v2; do
        timed "extract-$version" "$new" extract "$scratch/$version.imgpack" -o "$scratch/out.raw" --quiet
        rm -f "$scratch/out.raw"; sync
        timed "verify-$version" "$new" verify "$scratch/$version.imgpack"
    done
    timed "extract-sha256" "$new" extract "$scratch/v2.imgpack" -o "$scratch/out.raw" --quiet --sha256
    rm -f "$scratch/out.raw"; sync
    for file in text-1g.raw debian.raw dense-64m.raw; do
        timed "sha256sum-$file" sha256sum "$corpus/$file"
        timed "digest-$file" "$new" digest "$corpus/$file"
    done
    timed "digest-sparse-1t.raw" "$new" digest "$corpus/sparse-1t.raw"
done 2>&1 | sort
