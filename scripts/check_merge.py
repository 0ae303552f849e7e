#!/usr/bin/env python3
"""Checks a folder written by `moescope merge` with HF transformers.

Loads DIR with ``AutoModelForCausalLM.from_pretrained`` (fp32, eager attention), prints the
class transformers picked, and compares its logits with a reference:

* ``--logits FILE``: a JSON file with ``input_ids`` and ``logits`` ([T][V]), e.g. the
  ``peft_logits.json`` of tests/fixtures/adapters/<name>/, computed by PEFT on the unmerged
  model with the adapter;
* ``--base MODEL --adapter ADAPTER``: the base model loaded the same way with the adapter's
  updates (scale · B · A) added to its parameters in memory, for adapters PEFT cannot load
  (per-expert modules of a model whose experts transformers keeps fused). Input ids come from
  ``--ids`` or the base folder's ``reference.json``.

Exits 1 when the largest absolute logit difference exceeds ``--tolerance`` or the class is not
``--expect-class`` (with ``--base``: the class the base model loads as).

    python scripts/check_merge.py MERGED --logits tests/fixtures/adapters/olmoe/peft_logits.json \
        --expect-class OlmoeForCausalLM
    python scripts/check_merge.py MERGED --base tests/fixtures/models/qwen3_5_moe --adapter A

Requirements: torch, transformers (5.x or 4.57), safetensors.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

EXPERT = re.compile(r"^(?P<experts>.+\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj|w1|w3|w2)$")
ROLE = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down"}


def load(path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def logits_of(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def adapter_updates(adapter: Path) -> dict[str, torch.Tensor]:
    """module name -> scale · B · A ([out, in], fp32)."""
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    updates = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len("base_model.model."):-len(".lora_A.weight")]
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        updates[module] = (b.float() @ a.float()) * scale
    return updates


def apply_updates(model, updates: dict[str, torch.Tensor]) -> None:
    """Adds each update to the module's weight, or to its expert's slice of a fused parameter
    (transformers 5 keeps experts as `gate_up_proj` [E, 2I, H], gate rows first, and
    `down_proj` [E, H, I])."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    interleaved = getattr(model.config, "model_type", "") == "gpt_oss"
    with torch.no_grad():
        for checkpoint_name, update in updates.items():
            # A text-only class loads a multimodal checkpoint's `model.language_model.*` as `model.*`.
            names = [checkpoint_name, checkpoint_name.replace("model.language_model.", "model.", 1)]
            name = next((n for n in names if n in modules or (EXPERT.match(n) and any(
                p.startswith(EXPERT.match(n)["experts"] + ".") for p in params))), None)
            if name is None:
                raise SystemExit(f"{checkpoint_name}: no such module in {type(model).__name__}")
            if name in modules and hasattr(modules[name], "weight"):
                modules[name].weight += update.to(modules[name].weight.dtype)
                continue
            m = EXPERT.match(name)
            e, role = int(m["e"]), ROLE[m["proj"]]
            fused = params.get(f"{m['experts']}.{'down_proj' if role == 'down' else 'gate_up_proj'}")
            if fused is None:
                raise SystemExit(f"{checkpoint_name}: no such module or fused expert parameter")
            update = update.to(fused.dtype)
            out = update.shape[0]
            if interleaved:
                # gpt-oss: x·W layout, [E, H, 2·I] with gate / up in the even / odd columns, down [E, I, H].
                cols = {"gate": slice(0, 2 * out, 2), "up": slice(1, 2 * out, 2), "down": slice(0, out)}[role]
                fused[e, :, cols] += update.T
            else:
                rows = {"gate": slice(0, out), "up": slice(out, 2 * out), "down": slice(0, out)}[role]
                fused[e, rows, :] += update


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("merged", type=Path, help="the folder moescope merge wrote")
    ap.add_argument("--logits", type=Path, help="JSON with input_ids and logits")
    ap.add_argument("--base", type=Path, help="the base model folder (with --adapter)")
    ap.add_argument("--adapter", type=Path, help="the adapter folder (with --base)")
    ap.add_argument("--ids", help="comma-separated input ids (default: the JSON's or the base's reference.json)")
    ap.add_argument("--expect-class", help="the transformers class DIR must load as")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    if (args.logits is None) == (args.base is None) or (args.base is None) != (args.adapter is None):
        ap.error("give --logits FILE, or --base MODEL with --adapter ADAPTER")

    ids = [int(x) for x in args.ids.split(",")] if args.ids else None
    if args.logits:
        ref = json.loads(args.logits.read_text())
        ids = ids or ref["input_ids"]
        want = torch.tensor(ref["logits"], dtype=torch.float32)
        source = str(args.logits)
    else:
        ids = ids or json.loads((args.base / "reference.json").read_text())["input_ids"]
        base = load(args.base)
        base_class = type(base).__name__
        unadapted = logits_of(base, ids)
        apply_updates(base, adapter_updates(args.adapter))
        want = logits_of(base, ids)
        moved = (want - unadapted).abs().max().item()
        print(f"the adapter's updates move {base_class}'s logits by up to {moved:.3e}")
        source = f"{args.base} + {args.adapter} (updates added in memory)"
        del base

    merged = load(args.merged)
    cls = type(merged).__name__
    if args.base and args.expect_class is None:
        # The merged folder must load as the same class as the base model.
        args.expect_class = base_class
    got = logits_of(merged, ids)
    diff = (got - want).abs().max().item()
    ok = diff <= args.tolerance and (args.expect_class is None or cls == args.expect_class)
    print(f"{args.merged}: loaded as {cls}; max |logit difference| to {source} = {diff:.3e} "
          f"over {len(ids)} tokens -> {'OK' if ok else 'FAIL'}")
    if args.expect_class and cls != args.expect_class:
        print(f"  expected class {args.expect_class}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
