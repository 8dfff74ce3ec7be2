#!/usr/bin/env python3
"""Independent check of a GGUF written by `edgeq export`, with the `gguf`
package (llama.cpp's own Python reader, from PyPI).

    check_gguf.py MODEL.gguf DEQUANT_DIR [--expect-exact NAME,...]

Structure: magic/version, llama or qwen2 architecture, the hyperparameters
llama.cpp requires, tokenizer metadata, every tensor's type and shape.
Values: every tensor dequantized by gguf-py must equal edgeq's
dequantization of the source EQF (`edgeq inspect --dequant-dir`), to within
f32 rounding (tensors requantized on export: within their reported error).
Prints a summary line; exits 1 on any mismatch.
"""
import json
import sys
from pathlib import Path

import numpy as np
import gguf

path, ddir = Path(sys.argv[1]), Path(sys.argv[2])
report = json.loads(Path(sys.argv[3]).read_text()) if len(sys.argv) > 3 else []
exact = {r["name"]: r["exact"] for r in report}
r = gguf.GGUFReader(path)
fields = {k: f for k, f in r.fields.items()}


def val(key):
    f = fields[key]
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]


errors = []
arch = val("general.architecture")
if arch not in ("llama", "qwen2"):
    errors.append(f"architecture {arch!r}")
for k in ["context_length", "embedding_length", "feed_forward_length", "block_count",
          "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
          "rope.dimension_count"]:
    if f"{arch}.{k}" not in fields:
        errors.append(f"missing {arch}.{k}")
for k in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"]:
    if k not in fields:
        errors.append(f"missing {k}")
n_vocab = len(fields["tokenizer.ggml.tokens"].data)


def eqf_name(n):
    n = n.replace("token_embd.weight", "tok_embd")
    if n.endswith(".bias"):
        return n[: -len(".bias")] + "_bias"
    return n[: -len(".weight")] if n.endswith(".weight") else n


worst = 0.0
checked = 0
for t in r.tensors:
    ref_path = ddir / f"{eqf_name(t.name)}.npy"
    if not ref_path.exists():
        errors.append(f"{t.name}: no reference {ref_path.name}")
        continue
    ref = np.load(ref_path).astype(np.float32).reshape(-1)
    deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    if deq.shape != ref.shape:
        errors.append(f"{t.name}: {deq.shape} values, edgeq has {ref.shape}")
        continue
    if exact.get(t.name, True):
        # bit-exact mapping: equal to f32 rounding of the same arithmetic
        tol = 1e-6 * np.abs(ref).max() + 1e-30
        d = float(np.abs(deq - ref).max())
        worst = max(worst, d / (np.abs(ref).max() + 1e-30))
        if d > tol:
            errors.append(f"{t.name} ({t.tensor_type.name}): max |gguf-py - edgeq| = {d:.3e}")
    else:
        rel = float(((deq - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))
        want = next(x["rel_err"] for x in report if x["name"] == t.name)
        if abs(rel - want) > 1e-3 * max(want, 1e-9) + 1e-9:
            errors.append(f"{t.name}: requantization error {rel:.4e}, edgeq reported {want:.4e}")
    checked += 1

types = {}
for t in r.tensors:
    types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
print(f"{path.name}: {arch}, {len(r.tensors)} tensors {types}, vocab {n_vocab}, "
      f"{checked} compared with edgeq (worst relative difference of exact tensors {worst:.1e})")
if errors:
    print("\n".join("MISMATCH: " + e for e in errors))
    sys.exit(1)
