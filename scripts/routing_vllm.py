#!/usr/bin/env python3
"""Record MoE routing of subject-labelled prompts with vLLM, for `moescope import`.

Run this where vLLM runs (a GPU node; vLLM >= 0.21, which can return the experts each token
was routed to). It reads a dataset of prompts with subject labels, runs every prompt through
offline `vllm.LLM` with routed-expert capture switched on, and writes one JSON line per prompt:

    {"subject": "law",
     "prompt_routed_experts": [[[e, ...] per MoE layer] per prompt token],
     "outputs": [{"routed_experts": [[[e, ...] per MoE layer] per generated token]}]}

Copy the output file to the machine with MoEScope and turn it into a profile:

    moescope import --format vllm routing.jsonl --model MODEL --out profile.json

Usage:

    python3 routing_vllm.py --model Qwen/Qwen3-30B-A3B --data prompts.jsonl \
        --out routing.jsonl --tensor-parallel-size 4 [--limit-per-subject 200] [--chat]

The dataset is JSONL (or a JSON list of objects), CSV / TSV, or Parquet (needs pyarrow). The
text comes from `--text-column`, else the first of `text`, `prompt`, `question`; the subject
from `--subject-column`, else the first of `subject`, `category`, `domain`, `topic` (without
one, every prompt gets the file's name as its subject). Prompts are sent as they are; `--chat`
wraps each one as a single user turn with the model's chat template.

Defaults chosen for profiling: prefix caching is off (vLLM reports positions served from the
prefix cache as -1, which the import skips), greedy decoding, and one generated token
(`--max-tokens 1`), so the routing recorded is that of the prompt tokens, as in MoEScope's
own profiles. The script is self-contained: copy this one file to the cluster.
"""

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

# The prompt reading both recipes share (routing_prompts.py, beside this file).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from routing_prompts import batches, load_prompts  # noqa: E402



# ---------------------------------------------------------------------------------------------
# vLLM
# ---------------------------------------------------------------------------------------------


def as_list(array) -> Optional[list]:
    """A routed-experts array (numpy int16 [tokens, moe_layers, top_k]) as nested lists."""
    if array is None:
        return None
    return array.tolist() if hasattr(array, "tolist") else list(array)


def record(subject: str, output) -> Dict[str, object]:
    """One output line for a vllm.RequestOutput."""
    # vLLM >= 0.21 with enable_return_routed_experts=True sets RequestOutput.prompt_routed_experts
    # ([prompt_len, moe_layers, top_k]; positions served from the prefix cache are -1) and
    # CompletionOutput.routed_experts ([gen_len, moe_layers, top_k]) on each of .outputs.
    return {
        "subject": subject,
        "prompt_routed_experts": as_list(getattr(output, "prompt_routed_experts", None)),
        "outputs": [{"routed_experts": as_list(getattr(c, "routed_experts", None))}
                    for c in output.outputs],
    }


def chat_format(tokenizer, text: str) -> str:
    """The prompt as one user turn in the model's chat template, ready for generation."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                         tokenize=False, add_generation_prompt=True)


def token_ids(tokenizer, text: str, chat: bool) -> List[int]:
    """The prompt's token ids as vLLM would make them from the text.

    A plain prompt gets the tokenizer's special tokens (BOS where the model has one), as vLLM
    adds them to a text prompt; a chat-formatted prompt already holds them in its template
    text, so none are added (a second BOS would change the routing of the first tokens).
    """
    if chat:
        return tokenizer.encode(chat_format(tokenizer, text), add_special_tokens=False)
    return tokenizer.encode(text)


def context_length(llm, given: Optional[int]) -> Optional[int]:
    """The engine's context length: --max-model-len, else what vLLM derived from the model."""
    if given is not None:
        return given
    try:
        return int(llm.llm_engine.model_config.max_model_len)
    except (AttributeError, TypeError, ValueError):
        return None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF hub id or local folder, as vLLM takes it")
    p.add_argument("--data", required=True, help="JSONL / JSON / CSV / TSV / Parquet prompts")
    p.add_argument("--out", required=True, help="output JSONL for `moescope import --format vllm`")
    p.add_argument("--text-column", help="text column (default: text, prompt or question)")
    p.add_argument("--subject-column",
                   help="subject column (default: subject, category, domain or topic)")
    p.add_argument("--limit-per-subject", type=int, metavar="N",
                   help="at most N prompts per subject (the first N in the file)")
    p.add_argument("--chat", action="store_true",
                   help="wrap each prompt as a user turn with the tokenizer's chat template")
    p.add_argument("--max-tokens", type=int, default=1,
                   help="tokens to generate per prompt (default 1: the prompt's routing)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="prompts handed to LLM.generate at a time (default 256)")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int,
                   help="context length for vLLM; longer prompts are skipped")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="passed to vLLM (some model repos need it)")
    args = p.parse_args()
    if args.max_tokens < 1:
        p.error("--max-tokens must be at least 1 (vLLM generates at least one token)")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.limit_per_subject is not None and args.limit_per_subject < 1:
        p.error("--limit-per-subject must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    prompts = load_prompts(args.data, args.text_column, args.subject_column,
                           args.limit_per_subject)

    from vllm import LLM, SamplingParams  # imported late so --help works without vLLM

    engine_args = dict(
        model=args.model,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        trust_remote_code=args.trust_remote_code,
        # Routing capture is an engine option (there is no per-request switch).
        enable_return_routed_experts=True,
        # Cached prefix positions are not recomputed and come back as -1: profile every token.
        enable_prefix_caching=False,
    )
    if args.max_model_len is not None:
        engine_args["max_model_len"] = args.max_model_len
    try:
        llm = LLM(**engine_args)
    except TypeError as e:
        if "enable_return_routed_experts" in str(e):
            sys.exit("this vLLM cannot return routed experts (needs vLLM >= 0.21)")
        raise
    tokenizer = llm.get_tokenizer()
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0)

    # Prompts go to vLLM as token ids (a TokensPrompt dict), so that the chat template's
    # special tokens are not doubled and prompts too long for the context can be left out
    # (vLLM rejects a prompt that does not fit with its generated tokens).
    limit = context_length(llm, args.max_model_len)
    requests = []
    too_long = 0
    for subject, text in prompts:
        ids = token_ids(tokenizer, text, args.chat)
        if limit is not None and len(ids) + args.max_tokens > limit:
            too_long += 1
            continue
        requests.append((subject, {"prompt_token_ids": ids}))
    if too_long:
        print(f"skipped {too_long} prompts longer than {limit - args.max_tokens} tokens",
              file=sys.stderr)
    if not requests:
        sys.exit("no prompts left to run")

    tmp = args.out + ".tmp"
    written = 0
    missing = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for batch in batches(requests, args.batch_size):
            outputs = llm.generate([prompt for _, prompt in batch], sampling)
            if written == 0 and not hasattr(outputs[0], "prompt_routed_experts"):
                sys.exit("this vLLM returns no routed experts "
                         "(RequestOutput.prompt_routed_experts needs vLLM >= 0.21)")
            # LLM.generate returns the outputs in the order of its inputs.
            for (subject, _), output in zip(batch, outputs):
                line = record(subject, output)
                if line["prompt_routed_experts"] is None:
                    missing += 1
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
                written += 1
            print(f"{written} / {len(requests)} prompts", file=sys.stderr)
    os.replace(tmp, args.out)
    if missing:
        print(f"warning: {missing} requests came back without prompt routing", file=sys.stderr)
    print(f"wrote {written} requests to {args.out}; on the MoEScope machine run:")
    print(f"  moescope import --format vllm {args.out} --model {args.model} --out profile.json")


if __name__ == "__main__":
    main()
