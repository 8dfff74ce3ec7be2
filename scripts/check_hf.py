#!/usr/bin/env python3
"""Independent check of a Hugging Face directory written by
`edgeq export --format safetensors`, with Hugging Face's own readers
(`safetensors`, `tokenizers` from PyPI) and numpy.

    check_hf.py DIR DEQUANT_DIR REPORT.json [--interleaved] [--tokens TEXT IDS.json]

Structure: config.json (architecture, sizes), quantization_config (and
quantize_config.json for GPTQ), every linear layer's tensors with the shapes
and dtypes transformers / vLLM expect. Values: every tensor dequantized here,
from the documented formulas (AutoGPTQ: W[k, n] = scales[g, n] *
(q[k, n] - (qzeros[g, n] + 1)), g = g_idx[k]; compressed-tensors FP8:
W = fp8 * weight_scale), must equal edgeq's dequantization of the source EQF
(`edgeq inspect --dequant-dir`), q/k rows permuted to the half-split RoPE
order when the EQF is interleaved (--interleaved); tensors edgeq reports as
changed must match its reported error. --tokens: the `tokenizers` library
loading tokenizer.json, and (when installed) transformers' AutoTokenizer
loading the directory, must encode TEXT to the ids edgeq gives
(`edgeq inspect --tokenize`); AutoConfig must read config.json. Exits 1 on
any mismatch.
"""
import json
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open

args = sys.argv[1:]
interleaved = "--interleaved" in args
args = [a for a in args if a != "--interleaved"]
tokens = None
if "--tokens" in args:
    i = args.index("--tokens")
    tokens = (Path(args[i + 1]), Path(args[i + 2]))
    del args[i : i + 3]
d, ddir, report_path = Path(args[0]), Path(args[1]), Path(args[2])
report = {r["name"]: r for r in json.loads(report_path.read_text())}
cfg = json.loads((d / "config.json").read_text())
errors = []

for k in ["architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
          "num_attention_heads", "num_key_value_heads", "vocab_size", "rms_norm_eps", "rope_theta",
          "tie_word_embeddings", "torch_dtype"]:
    if k not in cfg:
        errors.append(f"config.json: missing {k}")
hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
q = cfg.get("quantization_config") or {}
method = q.get("quant_method", "none")
if method == "gptq":
    qc = json.loads((d / "quantize_config.json").read_text())
    for k in ["bits", "group_size", "sym", "desc_act"]:
        if qc.get(k) != q.get(k):
            errors.append(f"quantize_config.json {k}={qc.get(k)} but config.json says {q.get(k)}")
    if q.get("checkpoint_format", "gptq") != "gptq":
        errors.append(f"checkpoint_format {q.get('checkpoint_format')}")
elif method == "compressed-tensors":
    g = q["config_groups"]["group_0"]["weights"]
    if (g["type"], g["num_bits"]) != ("float", 8):
        errors.append(f"compressed-tensors weights {g}")
    import ml_dtypes  # float8_e4m3fn for numpy

# Tensors from every shard, through the safetensors library.
files = sorted(d.glob("*.safetensors"))
if (d / "model.safetensors.index.json").exists():
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    listed = sorted(set(idx["weight_map"].values()))
    if listed != [f.name for f in files]:
        errors.append(f"index lists {listed}, directory has {[f.name for f in files]}")
T = {}
for f in files:
    with safe_open(f, framework="numpy") as s:
        meta = s.metadata() or {}
        if meta.get("format") != "pt":
            errors.append(f"{f.name}: metadata format {meta.get('format')!r}, transformers needs 'pt'")
        for name in s.keys():
            try:
                T[name] = s.get_tensor(name)
            except (TypeError, ValueError, AttributeError):  # FP8: numpy has no float8; read raw below
                T[name] = None
if any(v is None for v in T.values()):
    # Raw read of the FP8 tensors: 8-byte header length, JSON header, data.
    for f in files:
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        hdr = json.loads(raw[8 : 8 + n])
        for name, info in hdr.items():
            if name != "__metadata__" and T.get(name, 0) is None:
                a, b = info["data_offsets"]
                if info["dtype"] != "F8_E4M3":
                    errors.append(f"{name}: unreadable dtype {info['dtype']}")
                    continue
                buf = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=np.uint8)
                T[name] = buf.view(ml_dtypes.float8_e4m3fn).reshape(info["shape"])


def half_split(w):
    """HF's permute(): interleaved RoPE rows -> half-split rows, per head."""
    rows = w.shape[0]
    return w.reshape(rows // hd, hd // 2, 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)


def eqf_name(module):
    if module in ("model.embed_tokens",):
        return "tok_embd"
    if module == "model.norm":
        return "output_norm"
    if module == "lm_head":
        return "output"
    parts = module.split(".")
    l, rest = parts[2], ".".join(parts[3:])
    m = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
         "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}[rest]
    return f"blk.{l}.{m}"


def dequant(module):
    """(values [out, in] or [n], how) of one module's weight, from the files alone."""
    if f"{module}.qweight" in T:
        bits = q["bits"]
        per = 32 // bits
        mask = (1 << bits) - 1
        qw = T[f"{module}.qweight"].astype(np.uint32)
        qz = T[f"{module}.qzeros"].astype(np.uint32)
        sc = T[f"{module}.scales"]
        gi = T[f"{module}.g_idx"]
        if (qw.dtype, T[f"{module}.qweight"].dtype, sc.dtype, gi.dtype) != (np.uint32, np.int32, np.float16, np.int32):
            errors.append(f"{module}: dtypes {T[f'{module}.qweight'].dtype} {sc.dtype} {gi.dtype}")
        shifts = (np.arange(per, dtype=np.uint32) * bits)
        qv = ((qw[:, None, :] >> shifts[None, :, None]) & mask).reshape(qw.shape[0] * per, qw.shape[1])
        zv = ((qz[:, :, None] >> shifts[None, None, :]) & mask).reshape(qz.shape[0], qz.shape[1] * per)
        zv = (zv + 1) & mask
        w = sc.astype(np.float32)[gi] * (qv.astype(np.float32) - zv.astype(np.float32)[gi])
        return w.T, "gptq"
    w = T[f"{module}.weight"]
    if f"{module}.weight_scale" in T:
        s = T[f"{module}.weight_scale"].astype(np.float32)
        v = w.astype(np.float32)
        if s.size == 1 or s.shape[-1] == 1:
            return v * s.reshape(-1, 1) if s.size > 1 else v * s.reshape(()), "fp8"
        b = q["config_groups"]["group_0"]["weights"]["block_structure"][0]
        full = np.repeat(np.repeat(s, b, axis=0), b, axis=1)[: w.shape[0], : w.shape[1]]
        return v * full, "fp8-block"
    return w.astype(np.float32), str(w.dtype)


modules = sorted({n.rsplit(".", 1)[0] for n in T if n.rsplit(".", 1)[1] in ("weight", "qweight", "bias")})
worst, checked, kinds = 0.0, 0, {}
for module in modules:
    for kind in ("weight", "bias"):
        if kind == "bias" and f"{module}.bias" not in T:
            continue
        if kind == "weight":
            w, how = dequant(module)
            ename = eqf_name(module)
            pname = f"{module}.weight"
        else:
            w, how = T[f"{module}.bias"].astype(np.float32), "bias"
            ename = eqf_name(module) + "_bias"
            pname = f"{module}.bias"
        kinds[how] = kinds.get(how, 0) + 1
        ref = np.load(ddir / f"{ename}.npy").astype(np.float32)
        ref = ref.reshape(w.shape) if ref.size == w.size else ref
        if interleaved and any(module.endswith(x) for x in ("q_proj", "k_proj")):
            ref = half_split(ref.reshape(ref.shape[0] if kind == "weight" else -1, -1)).reshape(w.shape)
        if ref.shape != w.shape:
            errors.append(f"{pname}: shape {w.shape}, edgeq has {ref.shape}")
            continue
        rep = report.get(pname, {"exact": True, "rel_err": 0.0})
        if rep["exact"]:
            d_ = float(np.abs(w - ref).max())
            scale = float(np.abs(ref).max()) + 1e-30
            worst = max(worst, d_ / scale)
            if d_ > 1e-6 * scale:
                errors.append(f"{pname} ({how}): max |reader - edgeq| = {d_:.3e}")
        else:
            rel = float(((w - ref) ** 2).sum() / max(float((ref ** 2).sum()), 1e-30))
            if abs(rel - rep["rel_err"]) > 1e-3 * max(rep["rel_err"], 1e-9) + 1e-9:
                errors.append(f"{pname}: error {rel:.4e}, edgeq reported {rep['rel_err']:.4e}")
        checked += 1

tok_msg = ""
if tokens:
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(str(d / "tokenizer.json"))
    text = tokens[0].read_text()
    want = json.loads(tokens[1].read_text())
    got = tk.encode(text).ids
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        errors.append(f"tokenizers gives {len(got)} ids, edgeq {len(want)}; first difference at {first}: "
                      f"{got[first:first + 5]} vs {want[first:first + 5]}")
    tok_msg = f", tokenizer.json encodes {len(text)} chars to edgeq's {len(want)} ids"
    try:
        import transformers  # optional: transformers' own loading of the directory (no torch needed)
    except ImportError:
        transformers = None
    if transformers is not None:
        t2 = transformers.AutoTokenizer.from_pretrained(str(d))
        cfg2 = transformers.AutoConfig.from_pretrained(str(d))
        got2 = t2(text)["input_ids"]
        if got2 != want:
            first = next((i for i, (a, b) in enumerate(zip(got2, want)) if a != b), min(len(got2), len(want)))
            errors.append(f"transformers AutoTokenizer gives {len(got2)} ids, edgeq {len(want)}; first difference at {first}")
        if cfg2.model_type != cfg["model_type"]:
            errors.append(f"transformers AutoConfig reads model_type {cfg2.model_type}")
        tok_msg += f"; transformers {transformers.__version__} AutoTokenizer ({type(t2).__name__}) and AutoConfig agree"

print(f"{d.name}: {cfg['architectures'][0]}, {method}, {len(files)} file(s), {len(T)} tensors, "
      f"{checked} compared with edgeq {kinds} (worst relative difference of exact tensors {worst:.1e}){tok_msg}")
if errors:
    print("\n".join("MISMATCH: " + e for e in errors[:40]))
    sys.exit(1)
