"""Writes backend/tests/fixtures/families/<family>/: a tiny random-initialised decoder of each generator family
Attune loads besides SmolLM2's Llama (Llama 3.x with `llama3` rope scaling, Qwen2/2.5, Qwen3, Mistral with a
sliding window), as transformers saves it (`config.json`, `model.safetensors`), the same weights written as GGUF
the way llama.cpp's converter names and permutes them (`model.gguf`; not for Mistral, whose sliding window GGUF's
`llama` architecture cannot express), a PEFT LoRA adapter on every projection (`adapter/`, random non-zero A
and B), and `reference.json`: transformers' logits at every position of a 12-token sequence, its greedy
continuation of a 6-token prompt, the LoRA model's cross-entropy loss on the sequence, and (in
`lora_grads.safetensors`) PEFT's gradients of that loss for every A and B. Attune's decoder is tested against
these numbers (backend/tests/it/families_reference.rs). Also `tokenizer-qwen2.gguf` and `tokenizer-llama-bpe.gguf`:
small byte-level BPE tokenizers with Qwen2's and Llama 3's pre-tokenizer regexes, as GGUF metadata, with the
Hugging Face tokenizer's ids of a few strings in `tokenizers.json`.

Run once, by hand (needs torch, transformers, peft, gguf, safetensors from requirements.txt):
    python scripts/reference/family_fixtures.py
"""

import json
import math
import pathlib

import numpy as np
import torch
from gguf import GGUFWriter
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "backend" / "tests" / "fixtures" / "families"
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=64, bos_token_id=None,
              eos_token_id=None, pad_token_id=None)
FAMILIES = {
    # wavelengths 6.3, 63, 628, 6283 against 16 / 4 and 16 / 1: one smoothed, three divided by the factor.
    "llama3": LlamaConfig(**COMMON, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                          rope_theta=10000.0),
    "qwen2": Qwen2Config(**COMMON, rope_theta=1000000.0, tie_word_embeddings=True),
    # head_dim 16 is not hidden_size / heads (8): Qwen3 says it explicitly.
    "qwen3": Qwen3Config(**COMMON, head_dim=16, rope_theta=1000000.0),
    "mistral": MistralConfig(**COMMON, sliding_window=4, rope_theta=10000.0),
}
GGUF_ARCH = {"llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
SEQUENCE = [5, 17, 33, 2, 61, 40, 9, 28, 50, 3, 12, 44]
PROMPT = SEQUENCE[:6]
NEW_TOKENS = 10
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def randomise(model: torch.nn.Module) -> None:
    """Weights far from transformers' 0.02-std initialisation, so that every tensor moves the logits."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.3 * torch.randn_like(param))


def greedy(model, prompt):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
    return out[0][len(prompt):].tolist()


def permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: rows of each head from halves (HF's rotate_half) to interleaved pairs."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def llama3_rope_factors(cfg) -> np.ndarray:
    """llama.cpp's `rope_freqs.weight`: the divisor of each frequency that llama3 scaling applies."""
    scaling = cfg.rope_parameters
    base, dim = scaling["rope_theta"], cfg.head_dim
    old, factor = scaling["original_max_position_embeddings"], scaling["factor"]
    low_wavelen, high_wavelen = old / scaling["low_freq_factor"], old / scaling["high_freq_factor"]
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - scaling["low_freq_factor"]) / (scaling["high_freq_factor"] - scaling["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf(name: str, cfg, model, path: pathlib.Path) -> None:
    arch = GGUF_ARCH[name]
    writer = GGUFWriter(str(path), arch)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_vocab_size(cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    names = {"embed_tokens": "token_embd", "norm": "output_norm"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for hf, tensor in model.state_dict().items():
        data = tensor.detach().numpy().astype(np.float32)
        if hf == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            gguf = "output.weight"
        elif hf.startswith("model.layers."):
            layer, rest = hf[len("model.layers."):].split(".", 1)
            module, kind = rest.rsplit(".", 1)
            gguf = f"blk.{layer}.{parts[module]}.{kind}"
            if arch == "llama" and module == "self_attn.q_proj":
                data = permute(data, cfg.num_attention_heads)
            elif arch == "llama" and module == "self_attn.k_proj":
                data = permute(data, cfg.num_key_value_heads)
        else:
            module, kind = hf[len("model."):].rsplit(".", 1)
            gguf = f"{names[module]}.{kind}"
        writer.add_tensor(gguf, data)
    if name == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# The pre-tokenizer regexes of Qwen2/2.5/3's and Llama 3's tokenizer.json (llama.cpp: `qwen2`, `llama-bpe`);
# they differ in how digits group.
PRE_TOKENIZERS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
TRAINING_TEXT = [
    "The capital of France is Paris. Paris is the most populous city of France.",
    "Water boils at 100 degrees Celsius at sea level; at 3,000 metres it boils near 90 degrees.",
    "Don't panic: it's only 1234567 bytes, they'll say, and we've checked it twice.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Café naïve résumé — Übergrößenträger; 東京は日本の首都です。",
]
TOKENIZER_STRINGS = ["Hello, world!", "1234567890 and 3.14159", "  two spaces\n\nnew paragraph", "it's 42°C",
                     "<|im_start|>user\nWhat boils at 100 degrees?<|im_end|>", "東京 Café 1,000,000", "x\r\n\ty"]
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def write_tokenizer_gguf(pre: str, path: pathlib.Path) -> list:
    """A small byte-level BPE trained with `pre`'s regex, written as GGUF tokenizer metadata the way llama.cpp's
    converter writes it; returns the Hugging Face tokenizer's ids of TOKENIZER_STRINGS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENIZERS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer)
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer = GGUFWriter(str(path), "qwen2" if pre == "qwen2" else "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [{"text": s, "ids": tokenizer.encode(s, add_special_tokens=False).ids} for s in TOKENIZER_STRINGS]


def main() -> None:
    tokenizer_cases = {pre: write_tokenizer_gguf(pre, OUT / f"tokenizer-{pre}.gguf") for pre in PRE_TOKENIZERS}
    (OUT / "tokenizers.json").write_text(json.dumps({"generated_by": "scripts/reference/family_fixtures.py",
                                                     "cases": tokenizer_cases}, ensure_ascii=False) + "\n")
    for index, (name, cfg) in enumerate(FAMILIES.items()):
        torch.manual_seed(index)
        out = OUT / name
        out.mkdir(parents=True, exist_ok=True)
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
        randomise(model)
        if cfg.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(out)
        with torch.no_grad():
            logits = model(torch.tensor([SEQUENCE])).logits[0]
        continuation = greedy(model, PROMPT)
        if name in GGUF_ARCH:
            write_gguf(name, cfg, model, OUT / f"{name}.gguf")
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, init_lora_weights=False)
        peft_model = get_peft_model(model, lora)
        peft_model.train()
        ids = torch.tensor([SEQUENCE])
        lora_logits = peft_model(ids).logits[0]
        loss = torch.nn.functional.cross_entropy(lora_logits[:-1], ids[0, 1:])
        loss.backward()
        grads = {}
        for param_name, param in peft_model.named_parameters():
            if param.requires_grad:
                grads[param_name.replace(".default", "")] = param.grad.detach().contiguous()
        save_file(grads, out / "lora_grads.safetensors")
        peft_model.save_pretrained(out / "adapter")
        (out / "reference.json").write_text(json.dumps({
            "generated_by": "scripts/reference/family_fixtures.py",
            "torch": torch.__version__,
            "sequence": SEQUENCE,
            "logits": [[round(float(v), 6) for v in row] for row in logits],
            "prompt": PROMPT,
            "greedy_continuation": continuation,
            "lora_loss": float(loss),
        }) + "\n")
        print(f"{name}: logits {tuple(logits.shape)}, greedy {continuation}, LoRA loss {float(loss):.6f}, "
              f"{len(grads)} LoRA gradients")


if __name__ == "__main__":
    main()
