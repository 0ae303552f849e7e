#!/usr/bin/env bash
# Profiling throughput and peak memory on Qwen3-30B-A3B-shaped GGUF files: MoEScope's
# `profile` against llama.cpp's `llama-bench` prompt processing, one after the other, on the
# same files and the same 2 threads.
#
#   scripts/bench/gguf_vs_llamacpp.sh LLAMA_BENCH FILE.gguf...
#
# Make the files with scripts/bench/make_qwen3_30b_gguf.py (random weights, real shapes and
# llama.cpp tensor types). MoEScope profiles the 12 demo-corpus subjects, one prompt each,
# truncated to 64 tokens (689 tokens); llama-bench processes one 512-token prompt (-p 512),
# weights loaded into memory (-lm none: memory-mapped, a file this close to the machine's
# memory size is paged out under it). Peak RSS from /usr/bin/time -v.
set -euo pipefail
bench=$1
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
moescope=${MOESCOPE:-$root/target/release/moescope}
prompts=$root/../shared/demo-corpus/prompts
for file in "$@"; do
  echo "== $(basename "$file")"
  /usr/bin/time -v "$moescope" profile --model "$file" --data "$prompts" --max-per-subject 1 \
    --max-tokens 64 --out "$(mktemp --suffix .json)" 2> /tmp/moescope_time.txt | tail -1
  grep -E "profiled|Maximum resident|Elapsed" /tmp/moescope_time.txt | sed 's/^/  moescope: /'
  /usr/bin/time -v "$bench" -m "$file" -p 512 -n 0 -t 2 -r 2 -lm none -o md \
    2> /tmp/llama_time.txt | grep -E "pp512|model"
  grep -E "Maximum resident|Elapsed" /tmp/llama_time.txt | sed 's/^/  llama-bench: /'
done
