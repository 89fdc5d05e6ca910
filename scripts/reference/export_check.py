"""Checks `attune export` against the Python ecosystem on a real run: the merged retriever folder loaded by
sentence-transformers embeds as `attune embed --adapter` does; the merged generator folder loaded by
transformers gives PEFT's logits (the base model with the run's adapter) and continues prompts greedily as
`attune generate --adapter` does; the GGUF export's tensors and metadata as Python's `gguf` reader lists them,
and `attune generate` on it against the merged model. Prints the figures as JSON.

Run once, by hand (needs requirements.txt), after a run and its exports:
    attune train --data backend/tests/fixtures/halueval_24.csv --out /tmp/run --max-steps 4 ...
    attune export /tmp/run --format merged --out /tmp/merged
    attune export /tmp/run --format gguf --quant f16 --out /tmp/gguf-f16   (and q8_0, q4_k)
    python scripts/reference/export_check.py --attune target/release/attune --run /tmp/run --merged /tmp/merged \
        --gguf /tmp/gguf-f16 /tmp/gguf-q8_0 /tmp/gguf-q4_k
"""

import argparse
import json
import pathlib
import subprocess

import numpy as np
import torch
from gguf import GGUFReader
from peft import PeftModel
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
SENTENCES = ["What is the capital of France?", "Paris is the capital and most populous city of France.",
             "Does low-dose aspirin reduce the risk of colorectal cancer?", "Glaciers move slowly downhill."]
PROMPTS = ["The capital of France is", "Water boils at",
           "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n"]
NEW_TOKENS = 20


def attune(binary, *args):
    return subprocess.run([binary, *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attune", required=True)
    parser.add_argument("--run", required=True, type=pathlib.Path)
    parser.add_argument("--merged", required=True, type=pathlib.Path)
    parser.add_argument("--gguf", nargs="*", type=pathlib.Path, default=[])
    parser.add_argument("--models", type=pathlib.Path, default=ROOT / "models")
    args = parser.parse_args()
    figures = {}

    # Retriever: sentence-transformers on the merged folder vs attune embed with the adapter.
    text_file = args.merged / "sentences.txt"
    text_file.write_text("\n".join(SENTENCES) + "\n")
    ours = np.array([json.loads(line) for line in attune(
        args.attune, "embed", "--model", str(args.models / "all-MiniLM-L6-v2"), "--adapter",
        str(args.run / "retriever"), "--input", str(text_file), "--device", "cpu").splitlines()])
    text_file.unlink()
    st = SentenceTransformer(str(args.merged / "retriever"), device="cpu")
    theirs = st.encode(SENTENCES, normalize_embeddings=False)
    base = SentenceTransformer(str(args.models / "all-MiniLM-L6-v2"), device="cpu").encode(SENTENCES)
    figures["retriever"] = {"max_abs_diff_vs_attune_with_adapter": float(np.abs(ours - theirs).max()),
                            "max_abs_diff_merged_vs_base": float(np.abs(theirs - base).max())}

    # Generator: transformers on the merged folder vs PEFT on the base (logits) and vs attune (greedy text).
    gen_dir = args.models / "SmolLM2-135M-Instruct"
    gguf_name = next(gen_dir.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(args.merged / "generator")
    merged = AutoModelForCausalLM.from_pretrained(args.merged / "generator", dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(gen_dir, gguf_file=gguf_name, dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(base, args.run / "generator").eval()
    worst, greedy = 0.0, []
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            worst = max(worst, float((merged(ids).logits - peft(ids).logits).abs().max()))
            out = merged.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0][ids.shape[1]:]
        transformers_text = tokenizer.decode(out, skip_special_tokens=True)
        attune_text = attune(args.attune, "generate", "--model", str(gen_dir), "--adapter", str(args.run / "generator"),
                             "--prompt", prompt, "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu")
        greedy.append({"prompt": prompt, "transformers_merged": transformers_text, "attune_with_adapter": attune_text,
                       "same": attune_text.strip() == transformers_text.strip()
                       or attune_text.startswith(transformers_text) or transformers_text.startswith(attune_text)})
        for folder in args.gguf:
            gguf_text = attune(args.attune, "generate", "--model", str(folder / "generator" / "model.gguf"),
                               "--prompt", prompt, "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu")
            greedy[-1][f"attune_gguf_{folder.name}"] = gguf_text
    figures["generator"] = {"max_abs_logit_diff_merged_vs_peft": worst, "greedy": greedy}

    # GGUF: what Python's reader sees.
    for folder in args.gguf:
        reader = GGUFReader(folder / "generator" / "model.gguf")
        types = {}
        for tensor in reader.tensors:
            types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
        fields = {name: field for name, field in reader.fields.items()}
        arch = bytes(fields["general.architecture"].parts[-1]).decode()
        figures[f"gguf_{folder.name}"] = {
            "architecture": arch, "tensors": len(reader.tensors), "tensor_types": types,
            "has_chat_template": "tokenizer.chat_template" in fields,
            "tokens": len(fields["tokenizer.ggml.tokens"].data),
            "metadata_keys": sorted(k for k in fields if not k.startswith("GGUF.")),
            "first_tensors": [t.name for t in reader.tensors[:4]],
        }
    print(json.dumps(figures, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
