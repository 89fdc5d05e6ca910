#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 600) on one core, one after another, growing
# fuzz/corpus/TARGET (committed: `make test` replays it on stable). Needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). Prints a table of targets, executions and crashes.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(document synthesis_output triples_file gguf_metadata client_message)
seed() { # the first seeds of each corpus, from the repository's fixtures
  local dir=corpus/$1
  mkdir -p "$dir"
  [ -n "$(ls -A "$dir")" ] && return
  case $1 in
    document)
      for f in ../backend/tests/fixtures/two_pages.pdf ../backend/tests/fixtures/scanned.pdf; do
        { printf '\x00'; cat "$f"; } > "$dir/$(basename "$f").seed"; done
      printf '\x01Cats sleep.\n\nDogs bark.\n' > "$dir/text.seed"
      printf '\x02# Title\n\nText under it.\n\n## Part\n\nMore.\n' > "$dir/markdown.seed" ;;
    synthesis_output) head -c 4000 ../backend/tests/fixtures/smollm2_question_outputs.jsonl > "$dir/outputs.seed" ;;
    triples_file)
      { printf '\x00'; head -c 3000 ../backend/tests/fixtures/halueval_24.csv; } > "$dir/csv.seed"
      printf '\x01{"question":"Q?","passage":"P.","answer":"A"}\n' > "$dir/jsonl.seed" ;;
    gguf_metadata) printf 'GGUF\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00' > "$dir/header.seed" ;;
    client_message) printf '{"type":"ping","nonce":1}' > "$dir/ping.seed" ;;
  esac
}
cargo +nightly fuzz build -O >/dev/null
printf '%-18s %12s %8s\n' target executions crashes
for target in "${targets[@]}"; do
  seed "$target"
  log=$(mktemp)
  # -rss_limit_mb: a parser must not need more than 2 GiB; -timeout: nor 10 s for one input.
  cargo +nightly fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -timeout=10 -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || true
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  crashes=$(ls "artifacts/$target" 2>/dev/null | wc -l)
  printf '%-18s %12s %8s\n' "$target" "$execs" "$crashes"
  cp "$log" "/tmp/fuzz-$target.log"
done
