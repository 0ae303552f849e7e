#!/bin/sh
# Import benchmark (BENCHMARKS.md, "Importing engine routing"): writes DeepSeek-V3-shaped
# routing of TOKENS tokens (default 1,000,000) as vLLM and SGLang responses into DIR, then times
# `moescope import` on each with /usr/bin/time (wall time and peak RSS), then the obvious Python
# reading of the vLLM file (scripts/bench/import_reference.py: json + numpy) as a reference.
#
#   scripts/bench/import_scale.sh DIR [TOKENS]
set -eu
dir=${1:?usage: import_scale.sh DIR [TOKENS]}
tokens=${2:-1000000}
cargo build --release --quiet --bin moescope --example make_import_bench
target/release/examples/make_import_bench "$dir" "$tokens"
ls -l "$dir"
for format in vllm sglang; do
    echo "== $format"
    /usr/bin/time -f "%e s wall, %M KB peak RSS, %P CPU" \
        target/release/moescope import --format "$format" "$dir/$format.jsonl" \
        --model "$dir" --out "$dir/$format-profile.json"
done
echo "== python json + numpy (vllm)"
/usr/bin/time -f "%e s wall, %M KB peak RSS, %P CPU" \
    python3 scripts/bench/import_reference.py "$dir/vllm.jsonl"
