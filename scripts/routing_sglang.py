#!/usr/bin/env python3
"""Record MoE routing of subject-labelled prompts with an SGLang server, for `moescope import`.

Run this next to a running SGLang server that returns routed experts. Launch it with routing
capture on and the radix (prefix) cache off, so that every prompt token is computed and
recorded:

    python -m sglang.launch_server --model-path MODEL --enable-return-routed-experts \
        --disable-radix-cache [--tp 8]

The script reads a dataset of prompts with subject labels, posts them to the server's native
`/generate` endpoint with `"return_routed_experts": true` (several prompts per request as a
list `text`, several requests in flight), and writes one JSON line per prompt: the `/generate`
response object as returned (its `meta_info.routed_experts` is base64 of little-endian int32,
rows of num_hidden_layers * top_k experts, one row per token) with the prompt's `"subject"`
added. Copy the output file to the machine with MoEScope and turn it into a profile:

    moescope import --format sglang routing.jsonl --model MODEL --out profile.json

Usage:

    python3 routing_sglang.py --data prompts.jsonl --out routing.jsonl \
        [--url http://localhost:30000] [--limit-per-subject 200] [--concurrency 8]

The dataset is JSONL (or a JSON list of objects), CSV / TSV, or Parquet (needs pyarrow). The
text comes from `--text-column`, else the first of `text`, `prompt`, `question`; the subject
from `--subject-column`, else the first of `subject`, `category`, `domain`, `topic` (without
one, every prompt gets the file's name as its subject). Prompts are sent as they are (apply a
chat template to the text column beforehand if that is what should be profiled). Decoding is
greedy with one new token (`--max-new-tokens 1`), which covers the prompt's routing, as in
MoEScope's own profiles. Only the Python standard library is needed: copy this one file.
"""

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

# The prompt reading both recipes share (routing_prompts.py, beside this file).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from routing_prompts import batches, load_prompts  # noqa: E402



# ---------------------------------------------------------------------------------------------
# SGLang server
# ---------------------------------------------------------------------------------------------


class Server:
    """The SGLang HTTP server at `url`."""

    def __init__(self, url: str, timeout: float, retries: int, api_key: Optional[str]):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def call(self, path: str, body: Optional[dict] = None):
        """GET (no body) or POST JSON to `path`; the decoded JSON reply. Retries network errors
        and 5xx replies with a growing pause; a 4xx reply is an error at once."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=data, headers=self.headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return json.loads(reply.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:500]
                if e.code < 500 or attempt == self.retries:
                    raise RuntimeError(f"{path}: HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                if attempt == self.retries:
                    raise RuntimeError(f"{self.url}{path}: {e}") from None
            time.sleep(2 ** attempt)
        raise AssertionError("unreachable")

    def info(self, path: str) -> dict:
        """A GET endpoint's reply, or {} if the server does not have it."""
        try:
            reply = self.call(path)
        except RuntimeError:
            return {}
        return reply if isinstance(reply, dict) else {}


def check_server(server: Server) -> Optional[str]:
    """Checks the server's settings where it reports them; returns its model path."""
    settings = server.info("/get_server_info")  # the server arguments, among other things
    if settings.get("enable_return_routed_experts") is False:
        sys.exit("the server was launched without --enable-return-routed-experts")
    if settings.get("disable_radix_cache") is False:
        print("warning: the radix cache is on (launch with --disable-radix-cache): prompts "
              "sharing a prefix with earlier ones are not all computed", file=sys.stderr)
    model = server.info("/get_model_info").get("model_path")
    return model if isinstance(model, str) else None


def generate(server: Server, texts: List[str], max_new_tokens: int) -> List[dict]:
    """Routing of a batch of prompts: one /generate response object per text, in order."""
    body = {
        # A list `text` is a batch; the reply is then a list in the same order.
        "text": texts,
        "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0},
        # Per-request switch; the server must also run with --enable-return-routed-experts.
        "return_routed_experts": True,
    }
    reply = server.call("/generate", body)
    if isinstance(reply, dict):
        reply = [reply]
    if not isinstance(reply, list) or len(reply) != len(texts):
        raise RuntimeError(f"/generate: expected {len(texts)} results, got {str(reply)[:200]}")
    return reply


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="JSONL / JSON / CSV / TSV / Parquet prompts")
    p.add_argument("--out", required=True,
                   help="output JSONL for `moescope import --format sglang`")
    p.add_argument("--url", default="http://localhost:30000", help="the SGLang server")
    p.add_argument("--model",
                   help="model for the printed import command (default: the server's path)")
    p.add_argument("--text-column", help="text column (default: text, prompt or question)")
    p.add_argument("--subject-column",
                   help="subject column (default: subject, category, domain or topic)")
    p.add_argument("--limit-per-subject", type=int, metavar="N",
                   help="at most N prompts per subject (the first N in the file)")
    p.add_argument("--max-new-tokens", type=int, default=1,
                   help="tokens to generate per prompt (default 1: the prompt's routing)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per request (default 16)")
    p.add_argument("--concurrency", type=int, default=4,
                   help="requests in flight at once (default 4)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per request (default 600)")
    p.add_argument("--retries", type=int, default=2,
                   help="retries of a request after a network error or 5xx reply (default 2)")
    p.add_argument("--api-key", help="the server's --api-key, if it has one")
    args = p.parse_args()
    for name in ("max_new_tokens", "batch_size", "concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit_per_subject is not None and args.limit_per_subject < 1:
        p.error("--limit-per-subject must be at least 1")
    if args.retries < 0:
        p.error("--retries must be at least 0")
    return args


def main() -> None:
    args = parse_args()
    prompts = load_prompts(args.data, args.text_column, args.subject_column,
                           args.limit_per_subject)
    server = Server(args.url, args.timeout, args.retries, args.api_key)
    model = args.model or check_server(server) or "MODEL"

    chunks = list(batches(prompts, args.batch_size))
    tmp = args.out + ".tmp"
    written = 0
    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            # map() runs up to --concurrency requests at once and yields replies in input order.
            replies = pool.map(
                lambda chunk: generate(server, [text for _, text in chunk], args.max_new_tokens),
                chunks)
            for chunk, results in zip(chunks, replies):
                for (subject, _), result in zip(chunk, results):
                    meta = result.get("meta_info") if isinstance(result, dict) else None
                    if not isinstance(meta, dict) or not meta.get("routed_experts"):
                        sys.exit("the server returned no meta_info.routed_experts: launch it "
                                 "with --enable-return-routed-experts (an SGLang version that "
                                 "has it)")
                    f.write(json.dumps({"subject": subject, **result},
                                       separators=(",", ":")) + "\n")
                    written += 1
                print(f"{written} / {len(prompts)} prompts", file=sys.stderr)
    except RuntimeError as e:
        if written == 0:
            os.remove(tmp)
            sys.exit(f"error: {e}")
        sys.exit(f"error: {e} (the first {written} requests are in {tmp})")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    os.replace(tmp, args.out)
    print(f"wrote {written} requests to {args.out}; on the MoEScope machine run:")
    print(f"  moescope import --format sglang {args.out} --model {model} --out profile.json")


if __name__ == "__main__":
    main()
