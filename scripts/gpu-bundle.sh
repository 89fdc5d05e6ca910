#!/usr/bin/env bash
#! Prepares build/gpu-check/ on the development machine: everything scripts/gpu-check.sh needs on a
#! GPU machine that has no network, no Rust toolchain and no model files — the `make cuda` binary
#! and model *shapes* (config.json + tokenizer, no weights; benchmarks use seeded random weights).
#
#   scripts/gpu-bundle.sh [BINARY]     (default build/cuda/attune; the CPU build works for a dry run)
#
# Writes build/gpu-check/attune.xz (the binary) and build/gpu-check/shapes/:
#
#   minilm     all-MiniLM-L6-v2's own config and tokenizer (retriever, 22.7M parameters)
#   smollm2    SmolLM2-135M-Instruct's config, tokenizer and chat template, exported from the GGUF
#   llama-1b   Llama-3.2-1B's dimensions (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192)
#              with SmolLM2's tokenizer and vocabulary (49,152): 1.07B parameters
#   tiny-bert, tiny-llama   the same tokenizers with tiny dimensions, for the GPU-vs-CPU agreement check
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${1:-build/cuda/attune}"
MODELS_DIR="${MODELS_DIR:-./models}"
OUT=build/gpu-check
[[ -x "$BIN" ]] || { echo "gpu-bundle: no binary at $BIN (run 'make cuda')" >&2; exit 1; }
[[ -d "$MODELS_DIR/all-MiniLM-L6-v2" ]] || { echo "gpu-bundle: no models in $MODELS_DIR (run 'make models')" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT/shapes"
# The CUDA binary (PTX for every kernel inside) is over 70 MB, above what travels to the GPU machine:
# it goes xz-compressed (about 10 MB) and gpu-check.sh unpacks it there with Python's lzma.
xz -T0 -6 -c "$BIN" > "$OUT/attune.xz"

minilm="$OUT/shapes/minilm"
mkdir -p "$minilm"
(cd "$MODELS_DIR/all-MiniLM-L6-v2" && cp -r config.json tokenizer.json tokenizer_config.json special_tokens_map.json \
  modules.json sentence_bert_config.json config_sentence_transformers.json 1_Pooling "$OLDPWD/$minilm/")

# A CPU build of attune reads the GGUF (the CUDA binary may not run here).
EXPORTER="${EXPORTER:-target/release/attune}"
[[ -x "$EXPORTER" ]] || EXPORTER="$BIN"
"$EXPORTER" export-shape --models-dir "$MODELS_DIR" --out "$OUT/shapes/smollm2"

python3 - "$OUT/shapes" <<'PY'
import json, pathlib, shutil, sys
shapes = pathlib.Path(sys.argv[1])
def derive(source, name, **changes):
    folder = shapes / name
    shutil.copytree(shapes / source, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
derive("smollm2", "llama-1b", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
       num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5,
       max_position_embeddings=8192, tie_word_embeddings=True)
derive("smollm2", "tiny-llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
       num_attention_heads=4, num_key_value_heads=2)
derive("minilm", "tiny-bert", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
       num_attention_heads=4, max_position_embeddings=512)
PY
du -sh "$OUT"
