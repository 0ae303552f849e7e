#!/usr/bin/env python3
"""Writes a GGUF file with Qwen3-30B-A3B's exact architecture and tensor shapes, random weights.

    python scripts/bench/make_qwen3_30b_gguf.py --out FILE [--type q4_k|q8_0] [--layers N]
                                                [--seed 0]

The file is what llama.cpp's converter and quantizer would write for Qwen3-30B-A3B
(`Qwen3MoeForCausalLM`): GGUF v3, architecture `qwen3moe`, llama.cpp's tensor names, and the
hyper-parameters of the real model: hidden 2048, 48 layers, 32 query heads and 4 KV heads of
dim 128, 128 experts with top-8 routing (normalised top-k), expert intermediate 768, vocab
151936, RMSNorm eps 1e-6, RoPE theta 1e6, untied LM head, context 40960.

Per-tensor types follow llama.cpp's quantizer (`llama_tensor_get_type` in src/llama-quant.cpp):

* `--type q4_k` is a Q4_K_M file (file type 15): every 2-D/3-D weight Q4_K, except
  `output.weight` Q6_K, and `attn_v` and `ffn_down_exps` Q6_K in the layers where llama.cpp's
  `use_more_bits(i, n)` holds (i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2; 24 of 48 layers).
* `--type q8_0` is a Q8_0 file (file type 7): every 2-D/3-D weight Q8_0.

In both, the norms and the router (`ffn_gate_inp`) are F32, as the quantizer leaves them.
`--layers N` writes the first N layers only (same shapes, `block_count` = N), for when a full
file does not fit on disk; the Q4_K_M rule is then applied with n = N, as the quantizer would.

Weights are random but valid blocks, written as raw bytes (no float is quantised here): the
quant payloads are uniform random bits and the f16 block scales are chosen so that dequantised
weights have a standard deviation of 0.02-0.03 and zero mean (Q8_0: d in
[2e-4, 4e-4]; Q4_K: d in [1e-4, 2e-4], dmin = 7.5 d, 6-bit scales and mins in [16, 47];
Q6_K: d in [6.5e-5, 1e-4], int8 scales +-[8, 24]). Norm weights are 1 + N(0, 0.01²), router
weights N(0, 0.02²). Activations stay finite through all 48 layers.

The tokenizer metadata is a synthetic byte-level BPE that llama.cpp's vocab loader accepts
(`tokenizer.ggml.model` = gpt2, `pre` = qwen2): the 256 byte-level symbols in GPT-2 order,
2 756 two-symbol tokens with their merges (letters and `Ġ`+letter), filler tokens up to id
151642, Qwen3's 26 special tokens at their real ids (151643 `<|endoftext|>` .. 151668
`</think>`) and `[PAD151669]`.. padding up to 151936, as the HF converter writes them.
Text therefore tokenizes (mostly into single bytes and pairs), but not like Qwen3's vocab.

Tensors are generated and written one chunk at a time, so memory stays under ~200 MB whatever
the file size. Sizes: Q4_K_M 48 layers ≈ 18.6 GB (17.3 GiB); Q8_0 ≈ 0.66 GB + 0.662 GB a
layer (48 layers ≈ 32.4 GB). Needs only numpy.
"""
import argparse
import os
import struct
import sys
import time

import numpy as np

# --- Qwen3-30B-A3B (config.json of Qwen/Qwen3-30B-A3B) ---------------------------------------
HIDDEN = 2048
N_LAYERS = 48
N_HEAD = 32
N_HEAD_KV = 4
HEAD_DIM = 128
N_EXPERT = 128
N_EXPERT_USED = 8
FF_EXP = 768
FF_DENSE = 6144  # intermediate_size (unused by the MoE layers, written as feed_forward_length)
VOCAB = 151936
RMS_EPS = 1e-6
ROPE_THETA = 1e6
CONTEXT = 40960

# --- GGUF constants ---------------------------------------------------------------------------
GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32

T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, \
    T_UINT64, T_INT64, T_FLOAT64 = range(13)

GGML_F32, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K = 0, 8, 12, 14
# type -> (elements per block, bytes per block)
BLOCK = {GGML_F32: (1, 4), GGML_Q8_0: (32, 34), GGML_Q4_K: (256, 144), GGML_Q6_K: (256, 210)}
TYPE_NAME = {GGML_F32: "F32", GGML_Q8_0: "Q8_0", GGML_Q4_K: "Q4_K", GGML_Q6_K: "Q6_K"}

FTYPE_Q8_0 = 7
FTYPE_Q4_K_M = 15

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5

# Qwen3's added tokens, from id 151643 on: (text, is_special). Special ones are CONTROL tokens,
# the others USER_DEFINED, as the HF converter marks them.
QWEN3_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
FIRST_ADDED = 151643
BOS_ID = 151643  # <|endoftext|>
EOS_ID = 151645  # <|im_end|>
PAD_ID = 151643

CHUNK_BLOCKS = 1 << 18  # blocks generated at a time (Q4_K: 36 MiB)


# --- vocabulary -------------------------------------------------------------------------------
def bytes_to_unicode():
    """GPT-2's byte -> printable symbol map, in its order (printables first)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_vocab():
    """Returns (tokens, token_types, merges) for a valid 151936-token byte-level BPE."""
    tokens = bytes_to_unicode()
    merges = []
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + \
        [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    for a in ["Ġ"] + letters:
        for b in letters:
            merges.append(f"{a} {b}")
            tokens.append(a + b)
    i = 0
    while len(tokens) < FIRST_ADDED:
        tokens.append(f"tok{i}")
        i += 1
    types = [TOKEN_NORMAL] * len(tokens)
    for text, special in QWEN3_ADDED:
        tokens.append(text)
        types.append(TOKEN_CONTROL if special else TOKEN_USER_DEFINED)
    while len(tokens) < VOCAB:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(TOKEN_UNUSED)
    assert len(tokens) == VOCAB and len(set(tokens)) == VOCAB
    tokset = set(tokens)
    for m in merges:
        a, b = m.split(" ")
        assert a in tokset and b in tokset and a + b in tokset
    return tokens, types, merges


# --- GGUF serialisation -----------------------------------------------------------------------
def gguf_str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


SCALAR_FMT = {T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I",
              T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q",
              T_FLOAT64: "<d"}


def gguf_kv(key, vtype, value, elem_type=None):
    out = [gguf_str(key), struct.pack("<I", vtype)]
    if vtype == T_STRING:
        out.append(gguf_str(value))
    elif vtype == T_ARRAY:
        out.append(struct.pack("<IQ", elem_type, len(value)))
        if elem_type == T_STRING:
            out.extend(gguf_str(v) for v in value)
        else:
            out.append(np.asarray(value, dtype=np.dtype(SCALAR_FMT[elem_type])).tobytes())
    else:
        out.append(struct.pack(SCALAR_FMT[vtype], value))
    return b"".join(out)


def metadata(n_layers, ftype):
    tokens, types, merges = build_vocab()
    a = "qwen3moe"
    kv = [
        ("general.architecture", T_STRING, a),
        ("general.type", T_STRING, "model"),
        ("general.name", T_STRING, "Qwen3 30B A3B (random weights)"),
        ("general.basename", T_STRING, "Qwen3"),
        ("general.size_label", T_STRING, "30B-A3B"),
        ("general.file_type", T_UINT32, ftype),
        ("general.quantization_version", T_UINT32, 2),
        (f"{a}.block_count", T_UINT32, n_layers),
        (f"{a}.context_length", T_UINT32, CONTEXT),
        (f"{a}.embedding_length", T_UINT32, HIDDEN),
        (f"{a}.feed_forward_length", T_UINT32, FF_DENSE),
        (f"{a}.attention.head_count", T_UINT32, N_HEAD),
        (f"{a}.attention.head_count_kv", T_UINT32, N_HEAD_KV),
        (f"{a}.rope.freq_base", T_FLOAT32, ROPE_THETA),
        (f"{a}.attention.layer_norm_rms_epsilon", T_FLOAT32, RMS_EPS),
        (f"{a}.expert_used_count", T_UINT32, N_EXPERT_USED),
        (f"{a}.attention.key_length", T_UINT32, HEAD_DIM),
        (f"{a}.attention.value_length", T_UINT32, HEAD_DIM),
        (f"{a}.expert_count", T_UINT32, N_EXPERT),
        (f"{a}.expert_feed_forward_length", T_UINT32, FF_EXP),
        ("tokenizer.ggml.model", T_STRING, "gpt2"),
        ("tokenizer.ggml.pre", T_STRING, "qwen2"),
        ("tokenizer.ggml.tokens", T_ARRAY, tokens, T_STRING),
        ("tokenizer.ggml.token_type", T_ARRAY, types, T_INT32),
        ("tokenizer.ggml.merges", T_ARRAY, merges, T_STRING),
        ("tokenizer.ggml.eos_token_id", T_UINT32, EOS_ID),
        ("tokenizer.ggml.padding_token_id", T_UINT32, PAD_ID),
        ("tokenizer.ggml.bos_token_id", T_UINT32, BOS_ID),
        ("tokenizer.ggml.add_bos_token", T_BOOL, False),
    ]
    return kv


# --- tensor plan ------------------------------------------------------------------------------
def use_more_bits(i, n):
    """llama.cpp's rule for the layers that get more bits in Q4_K_M / Q5_K_M."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_plan(n_layers, qtype):
    """List of (name, ne (ggml order: row length first), ggml type, init kind)."""
    q4 = qtype == "q4_k"
    base = GGML_Q4_K if q4 else GGML_Q8_0
    out_t = GGML_Q6_K if q4 else GGML_Q8_0
    plan = [
        ("token_embd.weight", (HIDDEN, VOCAB), base, "w"),
        ("output_norm.weight", (HIDDEN,), GGML_F32, "norm"),
        ("output.weight", (HIDDEN, VOCAB), out_t, "w"),
    ]
    q_dim, kv_dim = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    for i in range(n_layers):
        more = q4 and use_more_bits(i, n_layers)
        hi = GGML_Q6_K if more else base
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (HIDDEN,), GGML_F32, "norm"),
            (p + "attn_q.weight", (HIDDEN, q_dim), base, "w"),
            (p + "attn_k.weight", (HIDDEN, kv_dim), base, "w"),
            (p + "attn_v.weight", (HIDDEN, kv_dim), hi, "w"),
            (p + "attn_output.weight", (q_dim, HIDDEN), base, "w"),
            (p + "attn_k_norm.weight", (HEAD_DIM,), GGML_F32, "norm"),
            (p + "attn_q_norm.weight", (HEAD_DIM,), GGML_F32, "norm"),
            (p + "ffn_norm.weight", (HIDDEN,), GGML_F32, "norm"),
            (p + "ffn_gate_inp.weight", (HIDDEN, N_EXPERT), GGML_F32, "router"),
            (p + "ffn_gate_exps.weight", (HIDDEN, FF_EXP, N_EXPERT), base, "w"),
            (p + "ffn_down_exps.weight", (FF_EXP, HIDDEN, N_EXPERT), hi, "w"),
            (p + "ffn_up_exps.weight", (HIDDEN, FF_EXP, N_EXPERT), base, "w"),
        ]
    return plan


def nbytes(ne, gtype):
    blk, size = BLOCK[gtype]
    assert ne[0] % blk == 0, (ne, gtype)
    return int(np.prod(ne, dtype=np.int64)) // blk * size


# --- random block generators ------------------------------------------------------------------
def f16_bytes(rng, n, lo, hi):
    return rng.uniform(lo, hi, n).astype("<f2").view(np.uint8).reshape(n, 2)


def gen_q8_0(rng, n):
    b = np.frombuffer(rng.bytes(n * 34), dtype=np.uint8).reshape(n, 34).copy()
    b[:, 0:2] = f16_bytes(rng, n, 2e-4, 4e-4)
    return b


def gen_q4_k(rng, n):
    b = np.frombuffer(rng.bytes(n * 144), dtype=np.uint8).reshape(n, 144).copy()
    d = rng.uniform(1e-4, 2e-4, n)
    b[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(n, 2)
    b[:, 2:4] = (7.5 * d).astype("<f2").view(np.uint8).reshape(n, 2)
    sc = rng.integers(16, 48, (n, 8), dtype=np.uint8)
    m = rng.integers(16, 48, (n, 8), dtype=np.uint8)
    # 6-bit scale/min packing of block_q4_K.scales (inverse of get_scale_min_k4)
    b[:, 4:8] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    b[:, 8:12] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    b[:, 12:16] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    return b


def gen_q6_k(rng, n):
    b = np.frombuffer(rng.bytes(n * 210), dtype=np.uint8).reshape(n, 210).copy()
    mag = rng.integers(8, 25, (n, 16)).astype(np.int8)
    sign = np.where(rng.integers(0, 2, (n, 16)) == 1, 1, -1).astype(np.int8)
    b[:, 192:208] = (mag * sign).view(np.uint8)
    b[:, 208:210] = f16_bytes(rng, n, 6.5e-5, 1e-4)
    return b


GEN = {GGML_Q8_0: gen_q8_0, GGML_Q4_K: gen_q4_k, GGML_Q6_K: gen_q6_k}


def write_tensor(f, rng, ne, gtype, kind):
    if gtype == GGML_F32:
        n = int(np.prod(ne))
        if kind == "norm":
            a = 1.0 + 0.01 * rng.standard_normal(n)
        else:
            a = 0.02 * rng.standard_normal(n)
        f.write(a.astype("<f4").tobytes())
        return
    blk, _ = BLOCK[gtype]
    total = int(np.prod(ne, dtype=np.int64)) // blk
    done = 0
    while done < total:
        n = min(CHUNK_BLOCKS, total - done)
        f.write(memoryview(GEN[gtype](rng, n)))
        done += n


def pad_to(f, pos):
    rem = (-pos) % ALIGNMENT
    if rem:
        f.write(b"\0" * rem)
    return pos + rem


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .gguf path")
    ap.add_argument("--type", choices=["q4_k", "q8_0"], default="q4_k",
                    help="q4_k: llama.cpp's Q4_K_M mix; q8_0: Q8_0 (default q4_k)")
    ap.add_argument("--layers", type=int, default=N_LAYERS,
                    help=f"number of layers to write (default {N_LAYERS}, the real count)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true",
                    help="print the tensor plan and the file size, write nothing")
    args = ap.parse_args()
    if not 1 <= args.layers <= N_LAYERS:
        ap.error(f"--layers must be in 1..{N_LAYERS}")

    ftype = FTYPE_Q4_K_M if args.type == "q4_k" else FTYPE_Q8_0
    plan = tensor_plan(args.layers, args.type)

    # header, metadata and tensor infos, with data offsets relative to the aligned data start
    infos, offset, counts = [], 0, {}
    for name, ne, gtype, _ in plan:
        size = nbytes(ne, gtype)
        infos.append(gguf_str(name) + struct.pack("<I", len(ne)) +
                     struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", gtype, offset))
        offset += size
        offset += (-offset) % ALIGNMENT
        c = counts.setdefault(TYPE_NAME[gtype], [0, 0])
        c[0] += 1
        c[1] += size
    data_size = offset
    kv = metadata(args.layers, ftype)
    head = GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(plan), len(kv)) + \
        b"".join(gguf_kv(*e) for e in kv) + b"".join(infos)
    header_size = len(head) + (-len(head)) % ALIGNMENT
    total = header_size + data_size

    n_params = sum(int(np.prod(ne, dtype=np.int64)) for _, ne, _, _ in plan)
    print(f"{args.type}: {args.layers} layers, {len(plan)} tensors, {n_params / 1e9:.2f} B params, "
          f"{total} bytes ({total / 2**30:.2f} GiB)")
    for t, (n, s) in sorted(counts.items()):
        print(f"  {t:5s} {n:5d} tensors {s / 2**30:8.2f} GiB")
    if args.dry_run:
        for name, ne, gtype, _ in plan:
            print(f"  {name:32s} {TYPE_NAME[gtype]:5s} {ne}")
        return

    out_dir = os.path.dirname(os.path.abspath(args.out))
    free = os.statvfs(out_dir).f_bavail * os.statvfs(out_dir).f_frsize
    if free < total:
        sys.exit(f"not enough disk in {out_dir}: need {total} bytes, {free} free "
                 f"(use --layers to write fewer layers)")

    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    tmp = args.out + ".part"
    with open(tmp, "wb", buffering=1 << 22) as f:
        f.write(head)
        pos = pad_to(f, len(head))
        assert pos == header_size
        written = 0
        for k, (name, ne, gtype, kind) in enumerate(plan):
            write_tensor(f, rng, ne, gtype, kind)
            written += nbytes(ne, gtype)
            written = pad_to(f, written)
            if name.endswith("ffn_up_exps.weight") or k == len(plan) - 1:
                el = time.time() - t0
                print(f"  {name:28s} {written / 2**30:7.2f} / {data_size / 2**30:.2f} GiB "
                      f"{el:6.0f} s ({written / 2**20 / max(el, 1e-9):.0f} MiB/s)", flush=True)
        assert written == data_size
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {os.path.getsize(args.out)} bytes in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
