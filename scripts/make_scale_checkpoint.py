#!/usr/bin/env python3
"""Writes a random checkpoint with a real MoE's exact shapes and hub layout, from a seed.

    python scripts/make_scale_checkpoint.py --out DIR [--preset olmoe-1b-7b] [--seed 0]
                                            [--layers N] [--shards 5]

The `olmoe-1b-7b` preset is OLMoE-1B-7B-0924: 16 layers, hidden 2048, 16 heads, 64 experts
(intermediate 1024), top-8, vocab 50304, untied LM head, bf16: 6.92 B parameters, 13.8 GB in
`model-0000i-of-0000N.safetensors` shards with `model.safetensors.index.json`, the keys HF
transformers writes for `OlmoeForCausalLM` (one module per expert). `--layers` keeps the
per-layer shapes and writes fewer layers (a quick check of the layout).

Weights are N(0, 0.02²) (RMSNorm weights around 1, perturbed), written shard by shard so that at
most one shard is in memory. The tokenizer is a byte-level BPE trained on the bundled demo
corpus (`../shared/demo-corpus/train`, else a small built-in text), so prompts tokenize like
real text. Needs: torch, safetensors, tokenizers.
"""
import argparse
import json
import os
import sys

PRESETS = {
    "olmoe-1b-7b": {
        "architectures": ["OlmoeForCausalLM"],
        "model_type": "olmoe",
        "hidden_size": 2048,
        "intermediate_size": 1024,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_experts": 64,
        "num_experts_per_tok": 8,
        "vocab_size": 50304,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "clip_qkv": None,
        "norm_topk_prob": False,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.01,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "pad_token_id": 1,
        "bos_token_id": None,
        "eos_token_id": 50279,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
}


def tensors_in_order(cfg):
    """(name, shape) of every tensor, in the order the hub checkpoint stores them."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // heads
    yield "model.embed_tokens.weight", (v, h)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        yield f"{p}.input_layernorm.weight", (h,)
        for e in range(cfg["num_experts"]):
            yield f"{p}.mlp.experts.{e}.down_proj.weight", (h, i)
            yield f"{p}.mlp.experts.{e}.gate_proj.weight", (i, h)
            yield f"{p}.mlp.experts.{e}.up_proj.weight", (i, h)
        yield f"{p}.mlp.gate.weight", (cfg["num_experts"], h)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        yield f"{p}.self_attn.k_norm.weight", (kv * hd,)
        yield f"{p}.self_attn.k_proj.weight", (kv * hd, h)
        yield f"{p}.self_attn.o_proj.weight", (h, h)
        yield f"{p}.self_attn.q_norm.weight", (h,)
        yield f"{p}.self_attn.q_proj.weight", (h, h)
        yield f"{p}.self_attn.v_proj.weight", (kv * hd, h)
    yield "model.norm.weight", (h,)
    if not cfg["tie_word_embeddings"]:
        yield "lm_head.weight", (v, h)


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def train_tokenizer(out, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    here = os.path.dirname(os.path.abspath(__file__))
    corpus = os.path.join(here, "..", "..", "shared", "demo-corpus", "train")
    files = sorted(
        os.path.join(corpus, f) for f in os.listdir(corpus) if f.endswith(".txt")
    ) if os.path.isdir(corpus) else []
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if files:
        tok.train(files, trainer)
    else:
        text = ["The court held that the statute applied to every expert of the layer."] * 100
        tok.train_from_iterator(text, trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast",
                   "eos_token": "<|endoftext|>", "pad_token": "<|padding|>"}, f, indent=2)
    return tok.get_vocab_size()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="olmoe-1b-7b", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, help="fewer layers, same shapes")
    ap.add_argument("--shards", type=int, default=5)
    a = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    cfg = dict(PRESETS[a.preset])
    if a.layers is not None:
        cfg["num_hidden_layers"] = a.layers
    os.makedirs(a.out, exist_ok=True)
    entries = list(tensors_in_order(cfg))
    total_bytes = sum(numel(s) for _, s in entries) * 2
    per_shard = -(-total_bytes // a.shards)
    # Split at tensor boundaries into `shards` runs of about equal bytes.
    shards, cur, cur_bytes = [], [], 0
    for name, shape in entries:
        nbytes = numel(shape) * 2
        if cur and cur_bytes + nbytes > per_shard and len(shards) < a.shards - 1:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((name, shape))
        cur_bytes += nbytes
    shards.append(cur)
    n = len(shards)
    gen = torch.Generator().manual_seed(a.seed)
    weight_map = {}
    for si, shard in enumerate(shards, start=1):
        fname = f"model-{si:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                t = 0.02 * torch.randn(shape, generator=gen)
            tensors[name] = t.to(torch.bfloat16)
            weight_map[name] = fname
        tmp = os.path.join(a.out, fname + ".tmp")
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(a.out, fname))
        print(f"{fname}: {len(shard)} tensors", file=sys.stderr)
        del tensors
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    vocab = train_tokenizer(a.out, min(cfg["vocab_size"], 50280))
    print(json.dumps({"out": a.out, "tensors": len(entries), "bytes": total_bytes,
                      "shards": n, "tokenizer_vocab": vocab}))


if __name__ == "__main__":
    main()
