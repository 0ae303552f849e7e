#!/usr/bin/env bash
# Routing-capture benchmark: MoEScope vs HF transformers on the same random OLMoE-layout model,
# run back to back. Prints both JSON lines and the ratios; BENCHMARKS.md records a run.
#
#   bash bench/run.sh [PYTHON]     # PYTHON: an interpreter with torch + transformers
#
# BENCH_ROUTING_BIN runs a given build of the bench_routing example instead of building this
# checkout's (to measure two builds back to back).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
MODEL=${BENCH_MODEL_DIR:-/tmp/moescope-bench-olmoe}
if [ ! -f "$MODEL/model.safetensors" ]; then
  "$PY" bench/peer_hf.py --make "$MODEL"
fi
if [ -n "${BENCH_ROUTING_BIN:-}" ]; then
  BIN=$BENCH_ROUTING_BIN
else
  cargo build --release --example bench_routing
  BIN="${CARGO_TARGET_DIR:-target}"/release/examples/bench_routing
fi
export OMP_NUM_THREADS=2 RAYON_NUM_THREADS=2
ours=$("$BIN" "$MODEL" 4 128 10 2)
peer=$("$PY" bench/peer_hf.py --model "$MODEL" --batch 4 --seq 128 --iters 10 --warmup 2)
echo "moescope: $ours"
echo "peer:     $peer"
"$PY" - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"tokens/s ratio (moescope / peer): {o['tokens_per_sec'] / p['tokens_per_sec']:.2f}x")
print(f"peak RSS ratio (moescope / peer): {o['peak_rss_mib'] / p['peak_rss_mib']:.2f}x")
PY
