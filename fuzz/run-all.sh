#!/usr/bin/env bash
# Runs fuzz targets one after another, SECONDS each, resuming fuzz/corpus/TARGET (seed it first
# with fuzz/seed.sh), and prints each run's final libFuzzer line. Findings go to
# fuzz/artifacts/TARGET/. Logs: fuzz/logs/TARGET.log.
#   fuzz/run-all.sh 600 images qcow2 vmdk      # 10 minutes each
#   fuzz/run-all.sh 120                        # every target, 2 minutes each
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: run-all.sh SECONDS [TARGET...]}
shift
targets=("$@")
((${#targets[@]})) || targets=(images qcow2 vmdk vhdx vhd vdi streams archive archive_sealed convert detect size)
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O >/dev/null
mkdir -p logs
for t in "${targets[@]}"; do
  # The image targets' seeds are larger than libFuzzer's default 1 MiB -max_len.
  case $t in
    vhd) len=(-max_len=2200000) ;;
    vdi) len=(-max_len=1100000) ;;
    vhdx) len=(-max_len=9500000) ;;
    *) len=() ;;
  esac
  mkdir -p "corpus/$t" "artifacts/$t"
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=1024 \
    -timeout=10 -print_final_stats=1 "${len[@]}" >"logs/$t.log" 2>&1 || true
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' || echo '?')
  last=$(grep -E '^#[0-9]+' "logs/$t.log" | tail -1)
  echo "$t: runs=$runs  $last  artifacts: $(ls "artifacts/$t" | wc -l)"
done
