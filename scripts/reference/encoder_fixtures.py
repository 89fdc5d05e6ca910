"""Writes backend/tests/fixtures/encoders/<family>/: a tiny random-initialised retriever encoder of each family
Attune loads besides BERT — XLM-RoBERTa (multilingual-e5, bge-m3: positions counted from the padding index)
and ModernBERT (rotary, gated GELU MLP, alternating global and sliding-window attention) — as transformers saves
it (`config.json`, `model.safetensors`), a PEFT LoRA adapter on Attune's default retriever targets (`adapter/`,
random non-zero A and B), and `reference.json`: transformers' last hidden states of a right-padded batch, and
(in `lora_grads.safetensors`) PEFT's gradients of a loss on them. Attune's encoders are tested against these
numbers (backend/tests/it/families_reference.rs).

Run once, by hand (needs torch, transformers, peft, safetensors from requirements.txt):
    python scripts/reference/encoder_fixtures.py
"""

import json
import pathlib

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModel, ModernBertConfig, XLMRobertaConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "backend" / "tests" / "fixtures" / "encoders"
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              max_position_embeddings=64)
FAMILIES = {
    "xlm-roberta": (XLMRobertaConfig(**COMMON, pad_token_id=1, type_vocab_size=1, layer_norm_eps=1e-5,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), 1),
    # local_attention 4: a sliding-window layer sees two positions either side.
    "modernbert": (ModernBertConfig(**COMMON, pad_token_id=0, local_attention=4, global_attn_every_n_layers=2,
                                    bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3), 0),
}
# Attune's default retriever LoRA targets: BERT's names and ModernBERT's fused projection.
LORA_TARGETS = ["query", "key", "value", "Wqkv"]
LENGTHS = [10, 7]


def randomise(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.3 * torch.randn_like(param))


def main() -> None:
    for index, (name, (cfg, pad)) in enumerate(FAMILIES.items()):
        torch.manual_seed(100 + index)
        out = OUT / name
        out.mkdir(parents=True, exist_ok=True)
        model = AutoModel.from_config(cfg, add_pooling_layer=False) if name == "xlm-roberta" else AutoModel.from_config(cfg)
        model = model.float().eval()
        randomise(model)
        model.save_pretrained(out)
        longest = max(LENGTHS)
        ids = torch.full((len(LENGTHS), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(LENGTHS), longest), dtype=torch.long)
        for row, length in enumerate(LENGTHS):
            ids[row, :length] = torch.randint(4, cfg.vocab_size, (length,))
            mask[row, :length] = 1
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, init_lora_weights=False)
        peft_model = get_peft_model(model, lora)
        peft_model.train()
        lora_hidden = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        loss = ((lora_hidden * weights) ** 2).sum() / weights.sum()
        loss.backward()
        grads = {n.replace(".default", ""): p.grad.detach().contiguous()
                 for n, p in peft_model.named_parameters() if p.requires_grad}
        save_file(grads, out / "lora_grads.safetensors")
        peft_model.save_pretrained(out / "adapter")
        (out / "reference.json").write_text(json.dumps({
            "generated_by": "scripts/reference/encoder_fixtures.py",
            "torch": torch.__version__,
            "input_ids": ids.tolist(),
            "attention_mask": mask.tolist(),
            "hidden": [[[round(float(v), 6) for v in position] for position in row] for row in hidden],
            "lora_loss": float(loss.detach()),
        }) + "\n")
        print(f"{name}: hidden {tuple(hidden.shape)}, LoRA loss {float(loss):.6f}, {len(grads)} LoRA gradients")


if __name__ == "__main__":
    main()
