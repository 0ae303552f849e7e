#!/usr/bin/env bash
# Full-scale routing-capture benchmark: MoEScope vs HF transformers on a random checkpoint with
# OLMoE-1B-7B's exact shapes and hub layout (bf16, 5 shards, 13.8 GB), on the same token ids.
# Prints one JSON line per tool and the ratios.
#
#   bash bench/scale.sh [PYTHON]      # PYTHON: an interpreter with torch + transformers 5
#
# Environment:
#   SCALE_MODEL_DIR  checkpoint folder (default /work/scale-olmoe; made if it has no index)
#   MOESCOPE_BIN     moescope binary (default target/release/moescope; built only if missing)
#   MOESCOPE_ARGS    extra args for `moescope info` / `profile` (default none); builds whose
#                    default dtype is f32 need "--dtype bf16" here (f32 would take 27.7 GB)
#   SCALE_BATCH / SCALE_SEQ / SCALE_ITERS / SCALE_WARMUP   default 4 / 128 / 2 / 0
#
# The prompts are written by peer_scale.py: BATCH*ITERS texts of whole demo-corpus prompts, each
# at least SEQ tokens; `moescope profile --max-tokens SEQ --batch-size BATCH` cuts them to the
# same SEQ ids the peer feeds, so both sides process BATCH*SEQ*ITERS tokens (each side prints its
# count). MoEScope's tokens/s is the rate `moescope profile` reports: its timer starts once the
# model is opened and covers tokenising, the forward passes and writing the profile (and, when
# weights are memory-mapped, reading them from disk); its load_s is the process wall time minus
# that. Peak RSS is the whole process's (GNU time %M / ru_maxrss), load included. Neither side
# warms up by default. Load times and mmap-read throughput depend on what the page cache holds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
MODEL=${SCALE_MODEL_DIR:-/work/scale-olmoe}
BIN=${MOESCOPE_BIN:-target/release/moescope}
ARGS=${MOESCOPE_ARGS:-}
B=${SCALE_BATCH:-4} S=${SCALE_SEQ:-128} N=${SCALE_ITERS:-2} W=${SCALE_WARMUP:-0}
TMP=${TMPDIR:-/tmp}/moescope-scale
mkdir -p "$TMP"
export OMP_NUM_THREADS=2 RAYON_NUM_THREADS=2

[ -f "$MODEL/model.safetensors.index.json" ] || "$PY" scripts/make_scale_checkpoint.py --out "$MODEL"
[ -x "$BIN" ] || cargo build --release

# measure OUT CMD...: runs CMD; writes "wall_s peak_rss_kib" to OUT (GNU time, else Python).
measure() {
  local out=$1; shift
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f '%e %M' -o "$out" "$@"
  else
    "$PY" -c 'import resource, subprocess, sys, time
t = time.perf_counter(); rc = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(f"{time.perf_counter() - t:.2f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\n")
sys.exit(rc)' "$out" "$@"
  fi
}

# The shared prompts (tokenizer only, no model load).
"$PY" bench/peer_scale.py --model "$MODEL" --batch "$B" --seq "$S" --iters "$N" \
  --write-prompts "$TMP/prompts.jsonl" --no-run

# MoEScope: info (load + architecture), then the profile.
# shellcheck disable=SC2086  # ARGS is split into words on purpose
measure "$TMP/info.time" "$BIN" info --model "$MODEL" $ARGS > "$TMP/info.txt"
# shellcheck disable=SC2086
measure "$TMP/profile.time" "$BIN" profile --model "$MODEL" $ARGS --data "$TMP/prompts.jsonl" \
  --max-tokens "$S" --batch-size "$B" --out "$TMP/profile.json" 2> "$TMP/profile.log"
ours=$("$PY" - "$BIN" "$TMP" <<'PY'
import json, re, subprocess, sys
bin_, tmp = sys.argv[1:]
info_s, info_kib = map(float, open(f"{tmp}/info.time").read().split()[-2:])
wall, kib = map(float, open(f"{tmp}/profile.time").read().split()[-2:])
tokens = sum(s["tokens"] for s in json.load(open(f"{tmp}/profile.json"))["subjects"])
# "profiled N sequences (T tokens, K subjects) in X s (R tokens/s...": X has one decimal and R
# none, so use whichever is the more precise; fall back to wall time if the line changes.
m = re.search(r" in ([\d.]+) s \(([\d.]+) tokens/s", open(f"{tmp}/profile.log").read())
secs, printed = (float(m.group(1)), float(m.group(2))) if m else (0, 0)
rate = tokens / secs if secs >= 10 else printed or tokens / wall
print(json.dumps({
    "tool": "moescope",
    "version": subprocess.run([bin_, "--version"], capture_output=True, text=True).stdout.strip(),
    "load_s": round(wall - tokens / rate, 2),
    "tokens_per_sec": round(rate, 1),
    "peak_rss_mib": round(kib / 1024),
    "tokens": tokens,
    "wall_s": wall,
    "info_s": info_s,
    "info_peak_rss_mib": round(info_kib / 1024),
}))
PY
)
echo "moescope: $ours"

# The peer on the same ids.
peer=$("$PY" bench/peer_scale.py --model "$MODEL" --batch "$B" --seq "$S" --iters "$N" --warmup "$W" \
  --prompts "$TMP/prompts.jsonl" 2> "$TMP/peer.log")
echo "peer:     $peer"
"$PY" - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if o["tokens"] != p["tokens"]:
    print(f"warning: token counts differ (moescope {o['tokens']}, peer {p['tokens']})")
print(f"tokens/s ratio (moescope / peer): {o['tokens_per_sec'] / p['tokens_per_sec']:.2f}x")
print(f"peak RSS ratio (moescope / peer): {o['peak_rss_mib'] / p['peak_rss_mib']:.2f}x")
PY
