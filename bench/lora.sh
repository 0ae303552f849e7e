#!/usr/bin/env bash
# Selective LoRA on the embedded demo model: hot-25 % experts vs all experts vs a random
# selection at the same budget, at equal steps, one after the other in one run.
#
#   bash bench/lora.sh [DOMAIN] [STEPS]      # defaults: law 200
#
# 1. Profiles the first 300 training texts of DOMAIN and picks each layer's 25 % most-routed
#    experts (`select --rule hot --budget 0.25`), and a random selection with the same count
#    per layer (`--rule random --match-selection`).
# 2. Trains three adapters on DOMAIN's training text (blank lines dropped) with the same
#    settings, and measures the held-out perplexity of every domain before and after
#    (`--eval-data assets/demo/prompts`).
# 3. Prints a Markdown table (parameters, adapter bytes, wall time and its ratio, loss,
#    held-out perplexity on DOMAIN and on the other domains) for BENCHMARKS.md.
#
# Work files go to target/bench-lora/ (BENCH_WORK to change). MOESCOPE_BIN runs a given binary
# instead of building this checkout's (to measure two builds back to back).
set -euo pipefail
cd "$(dirname "$0")/.."
DOMAIN=${1:-law}
STEPS=${2:-200}
CORPUS=${DEMO_CORPUS:-../shared/demo-corpus}
WORK=${BENCH_WORK:-target/bench-lora}
if [ -n "${MOESCOPE_BIN:-}" ]; then
  BIN=$MOESCOPE_BIN
else
  cargo build --release
  BIN="${CARGO_TARGET_DIR:-target}/release/moescope"
fi
rm -rf "$WORK"
mkdir -p "$WORK"
grep -v '^[[:space:]]*$' "$CORPUS/train/$DOMAIN.txt" > "$WORK/$DOMAIN.txt"
head -300 "$WORK/$DOMAIN.txt" > "$WORK/${DOMAIN}_profile.txt"
"$BIN" profile --data "$WORK/${DOMAIN}_profile.txt" --out "$WORK/profile.json" --max-tokens 128
"$BIN" select "$WORK/profile.json" --rule hot --budget 0.25 --out "$WORK/hot.json" > /dev/null
"$BIN" select "$WORK/profile.json" --rule random --match-selection "$WORK/hot.json" --seed 7 \
  --out "$WORK/random.json" > /dev/null
common=(--data "$WORK/$DOMAIN.txt" --max-steps "$STEPS" --batch-size 8 --max-tokens 128
        --lr 1e-3 --seed 1 --checkpoint-every 1000 --eval-data assets/demo/prompts)
for run in hot all random; do
  case $run in
    hot) pick=(--selection "$WORK/hot.json") ;;
    all) pick=(--all-experts) ;;
    random) pick=(--selection "$WORK/random.json") ;;
  esac
  echo "== $run"
  "$BIN" train "${pick[@]}" "${common[@]}" --out "$WORK/$run"
done
python3 - "$WORK" "$DOMAIN" "$STEPS" <<'PY'
import json, math, sys
work, domain, steps = sys.argv[1], sys.argv[2], sys.argv[3]
runs = {r: json.load(open(f"{work}/{r}/training.json")) for r in ("hot", "all", "random")}
def ppl(run, target):
    rows = runs[run]["heldout"]
    mine = [h for h in rows if h["subject"] == domain]
    other = [h for h in rows if h["subject"] != domain]
    if target:
        return mine[0]["before"], mine[0]["after"]
    # Token-weighted geometric mean over the other domains (= perplexity of their pooled text).
    tok = sum(h["tokens"] for h in other)
    g = lambda k: math.exp(sum(h["tokens"] * math.log(h[k]) for h in other) / tok)
    return g("before"), g("after")
base_t, _ = ppl("hot", True)
base_o, _ = ppl("hot", False)
print(f"\n{steps} steps each, domain {domain}; before training: held-out ppl {base_t:.2f} on {domain}, {base_o:.2f} on the other 11 domains\n")
print("| run | experts | trainable params | adapter bytes | wall time (s) | time vs all | first → final loss | ppl " + domain + " | ppl other domains |")
print("|---|---|---|---|---|---|---|---|---|")
t_all = runs["all"]["train_seconds"]
for r, label in (("hot", "hot 25 %"), ("all", "all experts"), ("random", "random 25 %")):
    s = runs[r]
    _, at = ppl(r, True)
    _, ao = ppl(r, False)
    print(f"| {label} | {s['adapted_experts']} | {s['trainable_params']:,} | {s['adapter_bytes']:,} | "
          f"{s['train_seconds']:.1f} | {t_all / s['train_seconds']:.2f}x faster | "
          f"{s['first_loss']:.3f} → {s['final_loss']:.3f} | {at:.2f} | {ao:.2f} |")
PY
