#!/usr/bin/env python3
"""Peer benchmark: HF transformers routing capture on a random OLMoE-layout model.

Usage:
  python bench/peer_hf.py --make DIR        # write the random model (config, weights, tokenizer)
  python bench/peer_hf.py --model DIR       # time routing capture, print one JSON line

Config (the benchmark's fixed layout): 8 layers, hidden 512, 8 heads, expert intermediate 256,
64 experts, top-8, vocab 32000, fp32. Run: 2 threads, batch 4 x 128 tokens, router logits
captured (`output_router_logits=True`) through the base model (no LM head), so the peer does
no more work than it must. Needs: pip install torch transformers==4.57.6 tokenizers==0.22.1.
"""
import argparse
import json
import resource
import time


def config():
    from transformers import OlmoeConfig

    return OlmoeConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=256,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        num_experts=64,
        num_experts_per_tok=8,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        torch_dtype="float32",
        architectures=["OlmoeForCausalLM"],
    )


def make(out):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import OlmoeForCausalLM

    torch.manual_seed(0)
    model = OlmoeForCausalLM(config()).eval()
    model.save_pretrained(out, safe_serialization=True, max_shard_size="10GB")
    vocab = {f"t{i}": i for i in range(32000)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    tok.save(f"{out}/tokenizer.json")


def run(model_dir, batch, seq, iters, warmup):
    import torch
    from transformers import OlmoeForCausalLM

    torch.set_num_threads(2)
    model = OlmoeForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa").eval()
    base = model.model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for _ in range(warmup):
            base(input_ids=ids, attention_mask=mask, output_router_logits=True, use_cache=False)
        start = time.perf_counter()
        for _ in range(iters):
            out = base(input_ids=ids, attention_mask=mask, output_router_logits=True, use_cache=False)
            routing = [torch.topk(torch.softmax(l.float(), -1), 8, -1) for l in out.router_logits]
        secs = time.perf_counter() - start
    assert len(routing) == 8
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "impl": f"transformers {__import__('transformers').__version__} / torch {torch.__version__}",
        "tokens_per_sec": batch * seq * iters / secs,
        "peak_rss_mib": peak_mib,
        "iters": iters,
    }))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--make")
    ap.add_argument("--model")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    if a.make:
        make(a.make)
    else:
        run(a.model, a.batch, a.seq, a.iters, a.warmup)
