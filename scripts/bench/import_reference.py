#!/usr/bin/env python3
"""Reference point for the import benchmark: the obvious Python reading of a vLLM routing file
(json.loads per line, numpy bincount per layer), counting the same thing `moescope import
--format vllm` counts. Usage: import_reference.py FILE [NUM_EXPERTS]
"""
import json
import sys
import time

import numpy as np

experts = int(sys.argv[2]) if len(sys.argv) > 2 else 256
t = time.time()
counts = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    a = np.asarray(r["prompt_routed_experts"], dtype=np.int64)  # [tokens, layers, k]
    c = counts.setdefault(r["subject"], np.zeros((a.shape[1], experts), dtype=np.int64))
    for layer in range(a.shape[1]):
        c[layer] += np.bincount(a[:, layer, :].ravel(), minlength=experts)
print(f"{time.time() - t:.1f} s, {sum(int(c.sum()) for c in counts.values())} choices counted")
