#!/usr/bin/env python3
"""The peer of `moescope merge` in the merge benchmark: PEFT's merge in one process.

    python scripts/bench/merge_peft.py --model DIR --adapter ADAPTER --out OUT [--max-shard-size 3GB]

Loads the base model in its own dtype (`torch_dtype="auto"`: bf16 for the scale checkpoint), loads the adapter with
``PeftModel.from_pretrained``, folds it in with ``merge_and_unload()`` and writes the result
with ``save_pretrained(OUT, max_shard_size=...)``. Per-expert adapter modules need a
transformers whose MoE experts are separate modules (4.57; transformers 5 fuses them).
"""

import argparse
import time

from peft import PeftModel
from transformers import AutoModelForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-shard-size", default="3GB")
    args = ap.parse_args()
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype="auto")
    model = PeftModel.from_pretrained(model, args.adapter)
    merged = model.merge_and_unload()
    merged.save_pretrained(args.out, max_shard_size=args.max_shard_size)
    print(f"peft: merged and saved {type(merged).__name__} to {args.out} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
