#!/usr/bin/env python3
"""Peer benchmark at full scale: HF transformers routing capture on a real-shape checkpoint.

    python bench/peer_scale.py --model DIR [--batch 4] [--seq 128] [--iters 2] [--warmup 0]
                               [--prompts FILE.jsonl] [--write-prompts OUT.jsonl [--no-run]]

Loads DIR (config.json, *.safetensors, tokenizer.json) with `AutoModelForCausalLM.from_pretrained`
in bf16 (`dtype=`, transformers 5's name for `torch_dtype`), SDPA attention, the default experts
kernel (grouped_mm; batched_mm gathers per-token weights and needs tens of GB here), 2 torch
threads, and captures routing the way a user would: `output_router_logits=True` through the base
model (`model.model`, no LM head), top-k of the softmaxed router logits per layer.

Token ids. Prompts are the demo corpus's held-out prompts (`<subject>.txt`, one per line, `\\n`
escapes) or a JSONL file with `subject` and `text`. Sequence j takes subject j mod (#subjects) and
joins that subject's next whole prompts with "\\n" until the text has at least S tokens; its ids
are the first S ids of `tokenizer.json`'s encoding of that text (no special tokens are added:
the scale tokenizer has no post-processor). `--iters` distinct batches of B such sequences are
timed (warm-up passes reuse the first batch). `--write-prompts` writes the B*iters texts, each a
run of whole prompts (never cut mid-text), so that `moescope profile --max-tokens S --batch-size B`
truncates the same encoding to the same S ids: both sides see exactly B*S*iters tokens.

Prints one JSON line: tool, version, experts kernel, load_s, tokens_per_sec, peak_rss_mib
(ru_maxrss, so it includes the load), tokens (timed tokens).
"""
import argparse
import glob
import json
import os
import resource
import time

DEMO_PROMPTS = "/work/shared/demo-corpus/prompts"


def unescape(line):
    """The prompt-file line format: `\\n` is a newline, `\\\\` a backslash, other backslashes kept."""
    out, i = [], 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line) and line[i + 1] in "n\\":
            out.append("\n" if line[i + 1] == "n" else "\\")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def read_prompts(path):
    """{subject: [text, ...]} in file order (subjects in first-seen / file-name order)."""
    by_subject = {}
    if path:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    by_subject.setdefault(str(row["subject"]), []).append(row["text"])
    else:
        for fn in sorted(glob.glob(os.path.join(DEMO_PROMPTS, "*.txt"))):
            with open(fn, encoding="utf-8") as f:
                lines = [unescape(l.rstrip("\r\n")) for l in f]
            by_subject[os.path.splitext(os.path.basename(fn))[0]] = [l for l in lines if l.strip()]
    return by_subject


def build_sequences(tok, by_subject, count, seq):
    """`count` (subject, text, ids) with len(ids) == seq; each text is whole prompts joined by "\\n"."""
    subjects = list(by_subject)
    cursor = {s: 0 for s in subjects}
    out, j = [], 0
    while len(out) < count:
        if not subjects:
            raise SystemExit(f"not enough prompt text for {count} sequences of {seq} tokens")
        s = subjects[j % len(subjects)]
        texts, ids = [], []
        while len(ids) < seq and cursor[s] < len(by_subject[s]):
            texts.append(by_subject[s][cursor[s]])
            cursor[s] += 1
            ids = tok.encode("\n".join(texts)).ids
        if len(ids) < seq:  # this subject ran out of prompts: drop it from the rotation
            subjects.remove(s)
            continue
        out.append((s, "\n".join(texts), ids[:seq]))
        j += 1
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--prompts", help="JSONL with subject, text (default: the demo corpus's held-out prompts)")
    ap.add_argument("--write-prompts", help="write the B*iters prompt texts here (JSONL: subject, text)")
    ap.add_argument("--no-run", action="store_true", help="only write the prompts (--write-prompts), load nothing")
    ap.add_argument("--experts", help="experts_implementation (default: transformers' own choice)")
    a = ap.parse_args()

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    seqs = build_sequences(tok, read_prompts(a.prompts), a.batch * a.iters, a.seq)
    if a.write_prompts:
        with open(a.write_prompts, "w", encoding="utf-8") as f:
            for s, text, _ in seqs:
                f.write(json.dumps({"subject": s, "text": text}, ensure_ascii=False) + "\n")
    if a.no_run:
        return

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    ids = torch.tensor([i for _, _, i in seqs]).view(a.iters, a.batch, a.seq)
    mask = torch.ones_like(ids[0])

    start = time.perf_counter()
    extra = {"experts_implementation": a.experts} if a.experts else {}
    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.bfloat16, attn_implementation="sdpa", **extra
    ).eval()
    load_s = time.perf_counter() - start
    base, top_k = model.model, model.config.num_experts_per_tok
    n_layers = model.config.num_hidden_layers

    def capture(batch):
        out = base(input_ids=batch, attention_mask=mask, output_router_logits=True, use_cache=False)
        routing = [torch.topk(torch.softmax(l.float(), -1), top_k, -1) for l in out.router_logits]
        assert len(routing) == n_layers
        return routing

    with torch.inference_mode():
        for _ in range(a.warmup):
            capture(ids[0])
        start = time.perf_counter()
        for it in range(a.iters):
            capture(ids[it])
        secs = time.perf_counter() - start
    tokens = ids.numel()
    print(json.dumps({
        "tool": "transformers",
        "version": f"transformers {transformers.__version__} / torch {torch.__version__}",
        "experts": model.config._experts_implementation,
        "load_s": round(load_s, 2),
        "tokens_per_sec": round(tokens / secs, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "tokens": tokens,
        "batch": a.batch, "seq": a.seq, "iters": a.iters, "warmup": a.warmup,
    }))


if __name__ == "__main__":
    main()
