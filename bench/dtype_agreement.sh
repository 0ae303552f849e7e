#!/usr/bin/env bash
# How often half-precision weights choose the same experts as f32: profiles the same prompts
# (the demo's held-out prompts, N per subject) with traces through
#   1. an f32 checkpoint, and a copy of it rounded to bf16 (read in place);
#   2. the same bf16 weights read in place, and converted to f32 in memory (--dtype f32),
# and prints, per pair, the share of (token, MoE layer) rows whose chosen expert sets are equal.
#
#   bash bench/dtype_agreement.sh MODEL_DIR [N] [PYTHON]   # MODEL_DIR: an f32 checkpoint
#
# MOESCOPE_BIN: the moescope binary (default target/release/moescope). PYTHON needs torch and
# safetensors (for the bf16 copy).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1
N=${2:-10}
PY=${3:-python3}
BIN=${MOESCOPE_BIN:-target/release/moescope}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# The bf16 copy: every float tensor rounded to bf16, config and tokenizer alongside.
"$PY" - "$MODEL" "$TMP/bf16" <<'PY'
import os, shutil, sys
import torch
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1:]
os.makedirs(dst)
for f in os.listdir(src):
    p = os.path.join(src, f)
    if f.endswith(".safetensors"):
        t = load_file(p)
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in t.items()},
                  os.path.join(dst, f), metadata={"format": "pt"})
    elif os.path.isfile(p):
        shutil.copy(p, dst)
PY

profile() { # OUT MODEL [ARGS...]
  local out=$1 model=$2; shift 2
  "$BIN" profile --model "$model" --data assets/demo/prompts --max-per-subject "$N" \
    --out "$TMP/$out.json" --traces "$TMP/$out.jsonl" "$@" 2>&1 | tail -1
}
profile f32 "$MODEL"
profile bf16 "$TMP/bf16"
profile bf16_as_f32 "$TMP/bf16" --dtype f32

"$PY" - "$TMP" <<'PY'
import json, sys
tmp = sys.argv[1]
def rows(name):
    lines = open(f"{tmp}/{name}.jsonl").read().splitlines()[1:]  # skip the header line
    out = []
    for line in lines:
        seq = json.loads(line)
        for layer in seq["layers"]:
            out.extend(frozenset(e) for e in layer["indices"])
    return out
for a, b in [("f32", "bf16"), ("bf16", "bf16_as_f32")]:
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb), (a, b, len(ra), len(rb))
    same = sum(x == y for x, y in zip(ra, rb))
    print(f"{a} vs {b}: {same}/{len(ra)} (token, layer) rows choose the same experts "
          f"({100 * same / len(ra):.2f} %)")
PY
