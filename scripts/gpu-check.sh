#!/usr/bin/env bash
#! One command for the GPU machine (no Rust toolchain, no network there): checks that the `make cuda`
#! binary computes what the CPU computes, then benchmarks it beside PyTorch on the same GPU.
#
# Prepare on the development machine:   make cuda && scripts/gpu-bundle.sh   (→ build/gpu-check/)
# Run on the GPU machine, repo root:     scripts/gpu-check.sh                  (results in $OUT)
#
#   1. agreement: `attune bench agree` — tiny models (the real tokenizers, tiny dimensions, seeded
#      weights) on the GPU vs the CPU, in f32 and bf16: embeddings, logits, the e2e loss, every LoRA
#      gradient. Fails the script if any comparison is outside its tolerance.
#   2. benchmarks, each by `attune bench device --random-init` and by
#      scripts/reference/bench_gpu.py (torch + transformers + peft) on the same GPU:
#        small: all-MiniLM-L6-v2-shaped retriever + SmolLM2-135M-shaped generator
#               (embeddings/s, retriever step, e2e step, prefill and decode tokens/s)
#        1b:    the same retriever + a Llama-3.2-1B-shaped generator (e2e step, prefill, decode)
#   3. the report: Attune vs PyTorch, ratio, MFU (scripts/reference/bench_gpu.py report).
#
# Environment: OUT (results folder; default build/gpu-check/out), PYTHON (default python3, the one
# with torch), GPU_CHECK_SECONDS (overall budget, default 480; each stage gets what is left),
# ATTUNE_CHECK_DEVICE=cpu with ATTUNE_CHECK_QUICK=1 for a dry run of the whole script on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."

BUNDLE="${BUNDLE:-build/gpu-check}"
BIN="${ATTUNE_BIN:-/tmp/attune-gpu-check/attune}"
SHAPES="$BUNDLE/shapes"
OUT="${OUT:-$BUNDLE/out}"
WORK="$(mktemp -d /tmp/gpu-check.XXXX)"
PY="${PYTHON:-python3}"
DEVICE="${ATTUNE_CHECK_DEVICE:-cuda}"
QUICK="${ATTUNE_CHECK_QUICK:-0}"
BUDGET="${GPU_CHECK_SECONDS:-420}"
START=$(date +%s)
mkdir -p "$OUT"
: > "$WORK/summary.txt"
# $OUT gets few files (the device tool returns at most 8): summary.txt, report.txt, agree.json and
# all.tar.gz with every stage's output and log; they are written on exit.
finish() {
  cp "$WORK/summary.txt" "$OUT/" 2>/dev/null
  cp "$WORK/report.txt" "$WORK/agree.json" "$OUT/" 2>/dev/null
  tar -C "$WORK" -czf "$OUT/all.tar.gz" . 2>/dev/null
}
trap finish EXIT

log() { echo "[gpu-check +$(( $(date +%s) - START ))s] $*" | tee -a "$WORK/summary.txt" >&2; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# run NAME SECONDS CMD...: stdout to NAME.out, stderr to NAME.log (in $WORK), bounded in time.
run() {
  local name="$1" limit="$2"; shift 2
  local remaining; remaining=$(left)
  (( limit > remaining )) && limit=$remaining
  if (( limit < 10 )); then log "$name: skipped, out of time"; return 124; fi
  log "$name: start (limit ${limit}s)"
  local began; began=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.log"
  local rc=$?
  log "$name: rc $rc in $(( $(date +%s) - began ))s"
  (( rc != 0 )) && tail -n 15 "$WORK/$name.log" | sed 's/^/    /' | tee -a "$WORK/summary.txt" >&2
  return $rc
}

if [[ -f "$BUNDLE/attune.xz" ]]; then
  mkdir -p "$(dirname "$BIN")"
  "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$BUNDLE/attune.xz" "$BIN"
  chmod +x "$BIN"
fi
[[ -x "$BIN" ]] || { log "no $BUNDLE/attune.xz: run 'make cuda && scripts/gpu-bundle.sh' on the development machine"; exit 1; }

if [[ "$DEVICE" == cuda* ]]; then
  # The CUDA 13 libraries from the Python environment's nvidia wheels (torch's); libcuda.so.1 from
  # the driver, on the loader's default path or in one of the usual driver folders.
  libdirs="$("$PY" - <<'PY'
import pathlib, site, sys
roots = [pathlib.Path(p) for p in site.getsitepackages() + [site.getusersitepackages()] + sys.path if p]
dirs = set()
for root in roots:
    for lib in (root / "nvidia").glob("**/lib*.so*") if (root / "nvidia").is_dir() else []:
        if any(name in lib.name for name in ("cublas", "curand", "nvrtc", "cudart")):
            dirs.add(str(lib.parent))
print(":".join(sorted(dirs)))
PY
)"
  for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/compat /usr/local/cuda/lib64/stubs; do
    [[ -e "$d/libcuda.so.1" ]] && ! ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1 ' && libdirs="$libdirs:$d" && break
  done
  export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1 | tee -a "$WORK/summary.txt"
  ldd "$BIN" | grep -E "not found|libcuda|cublas|curand|nvrtc|cudart" | tee "$WORK/ldd.txt" | tee -a "$WORK/summary.txt"
  PYDTYPE=bf16
else
  PYDTYPE=f32
fi

if [[ "$QUICK" == 1 ]]; then
  SMALL_R=tiny-bert; SMALL_G=tiny-llama; BIG_G=tiny-llama
  ATTUNE_SIZES=(--embed-texts 64 --embed-batch 16 --retriever-batch 8 --steps 1 --new-tokens 8)
  PY_SIZES=(--steps 1)
else
  SMALL_R=minilm; SMALL_G=smollm2; BIG_G=llama-1b
  ATTUNE_SIZES=()
  PY_SIZES=()
fi

status=0
run agree 90 "$BIN" bench agree --retriever "$SHAPES/tiny-bert" --generator "$SHAPES/tiny-llama" \
  --device "$DEVICE" --json "$WORK/agree.json" || status=1
cat "$WORK/agree.out" | tee -a "$WORK/summary.txt"

bench() {  # bench NAME RETRIEVER GENERATOR PARTS
  local name="$1" retriever="$2" generator="$3" parts="$4"
  run "attune-$name" 150 "$BIN" bench device --random-init --device "$DEVICE" --retriever "$SHAPES/$retriever" \
    --generator "$SHAPES/$generator" --parts "$parts" "${ATTUNE_SIZES[@]}" \
    && tail -n 1 "$WORK/attune-$name.out" > "$WORK/attune-$name.json"
  run "torch-$name" 120 "$PY" scripts/reference/bench_gpu.py measure --shapes "$SHAPES" --retriever "$retriever" \
    --generator "$generator" --parts "$parts" --device "$DEVICE" --dtype "$PYDTYPE" "${PY_SIZES[@]}" \
    && tail -n 1 "$WORK/torch-$name.out" > "$WORK/torch-$name.json"
}
bench small "$SMALL_R" "$SMALL_G" embed,retriever-step,e2e-step,decode
bench 1b "$SMALL_R" "$BIG_G" e2e-step,decode

"$PY" scripts/reference/bench_gpu.py report "$WORK" 2>&1 | tee "$WORK/report.txt" | tee -a "$WORK/summary.txt"
log "done in $(( $(date +%s) - START ))s; agreement $([[ $status == 0 ]] && echo passed || echo FAILED)"
exit $status
