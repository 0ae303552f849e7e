#!/usr/bin/env bash
# Merging a LoRA adapter into a full-size checkpoint: `moescope merge` against PEFT
# (`PeftModel.from_pretrained(...).merge_and_unload()` + `save_pretrained`, in
# scripts/bench/merge_peft.py), one after the other on the same files. Wall time and peak RSS
# from /usr/bin/time -v; each output is deleted as soon as it is measured (the disk holds one).
#
#   scripts/bench/merge_scale.sh MODEL_DIR WORK_DIR
#
# MODEL_DIR: the OLMoE-1B-7B-shaped checkpoint of scripts/make_scale_checkpoint.py (bf16,
# 13.8 GB, 5 shards). The adapter (made once in WORK_DIR/adapter by the make_random_adapter
# example) is rank 16, alpha 32, on 8 experts (gate, up, down) of each of the 16 layers plus
# every layer's q/k/v/o projections: 448 modules. PEFT runs with transformers 4.57, whose
# OLMoE experts are separate modules (PYTHONPATH=$TF457, default /tmp/tf457:
# `pip install --target /tmp/tf457 --no-deps "transformers<5" "tokenizers<0.23" "huggingface_hub<1"`).
# Before each run the shards are read once so that both start from the same page cache.
set -euo pipefail
model=$1
work=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
moescope=${MOESCOPE:-$root/target/release/moescope}
make_adapter=${MAKE_ADAPTER:-$root/target/release/examples/make_random_adapter}
tf457=${TF457:-/tmp/tf457}
mkdir -p "$work"
# The outputs go even when a run fails (a full disk, say).
trap 'rm -rf "$work/merged-moescope" "$work/merged-peft"' EXIT
adapter=$work/adapter
if [ ! -f "$adapter/adapter_model.safetensors" ]; then
  "$make_adapter" --model "$model" --out "$adapter" --rank 16 --alpha 32 --experts 8 --attention
fi
warm() { cat "$model"/*.safetensors > /dev/null; }
report() { grep -E "Elapsed \(wall|Maximum resident" "$1" | sed "s/^\s*/  $2: /"; }

echo "== moescope merge"
warm
/usr/bin/time -v "$moescope" merge --model "$model" --adapter "$adapter" --out "$work/merged-moescope" \
  2> "$work/moescope_time.txt"
report "$work/moescope_time.txt" moescope
du -sh "$work/merged-moescope"
rm -rf "$work/merged-moescope"

echo "== PEFT merge_and_unload + save_pretrained"
warm
PYTHONPATH=$tf457 /usr/bin/time -v python3 "$root/scripts/bench/merge_peft.py" --model "$model" \
  --adapter "$adapter" --out "$work/merged-peft" --max-shard-size 3GB 2> "$work/peft_time.txt"
report "$work/peft_time.txt" peft
du -sh "$work/merged-peft"
rm -rf "$work/merged-peft"

wall() { grep "Elapsed (wall" "$1" | awk '{print $NF}' | awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }'; }
rss() { grep "Maximum resident" "$1" | awk '{print $NF}'; }
m_wall=$(wall "$work/moescope_time.txt"); p_wall=$(wall "$work/peft_time.txt")
m_rss=$(rss "$work/moescope_time.txt"); p_rss=$(rss "$work/peft_time.txt")
awk -v mw="$m_wall" -v pw="$p_wall" -v mr="$m_rss" -v pr="$p_rss" 'BEGIN {
  printf "moescope %.1f s, %.0f MB peak RSS; peft %.1f s, %.0f MB peak RSS\n", mw, mr / 1024, pw, pr / 1024
  printf "peft / moescope: %.2fx wall time, %.1fx peak RSS\n", pw / mw, pr / mr }'
