#!/usr/bin/env python3
"""Layer parity of edgeq's 8-bit methods with independent NumPy implementations
of the published algorithms (FP8 rounding by ml_dtypes' float8_e4m3fn):

  int8        per-channel absmax/127 (SmoothQuant's quantize_weight_per_channel_absmax)
  int8-ct     compressed-tensors symmetric int8: absmax/127.5, codes clamped to [-128, 127]
  fp8-*       compressed-tensors FP8 weights (tensor / channel / 128x128 block, scale amax/448,
              clamp then cast), activations dynamic per token (per 128-group for blocks)
  llm-int8    bitsandbytes MatMul8bitLt: outlier columns |x| >= 6 of the batch in fp, the rest
              int8 row-wise (activations per token, weights per output row), rescaled by 1/127^2
  smoothquant smooth_ln_fcs: s = max|X|^a / max|W|^(1-a), W8 per channel, A8 per token

For each real layer (weight W.npy, calibration X.npy, held-out E.npy) it runs
`edgeq layer`, compares the output error ||E W^T - Y||^2 / ||E W^T||^2 with the
reference's, and fails when they differ by more than 3 % (relative).

usage: check_w8_layers.py EDGEQ LAYER_DIR...   (each dir holds W.npy X.npy E.npy)
"""
import json
import subprocess
import sys

import ml_dtypes
import numpy as np

F8 = ml_dtypes.float8_e4m3fn


def fp8(x, s):
    return np.clip(x / s, -448, 448).astype(F8).astype(np.float32) * s


def amax(x, axis=None, keepdims=False):
    return np.abs(x).max(axis=axis, keepdims=keepdims)


def int8_w(w, div=127.0, lo=-127):
    s = np.maximum(amax(w, 1, True), 1e-8) / div
    return np.clip(np.round(w / s), lo, 127) * s


def int8_tok(x, mask=None):
    xr = x if mask is None else np.where(mask, 0, x)
    s = amax(xr, 1, True) / 127
    s = np.where(s > 0, s, 1)
    q = np.clip(np.round(xr / s), -127, 127) * s
    return q if mask is None else np.where(mask, x, q)


def fp8_w(w, scale):
    if scale == "tensor":
        return fp8(w, amax(w) / 448)
    if scale == "channel":
        return fp8(w, amax(w, 1, True) / 448)
    out = np.empty_like(w)
    for i in range(0, w.shape[0], 128):
        for j in range(0, w.shape[1], 128):
            t = w[i:i + 128, j:j + 128]
            out[i:i + 128, j:j + 128] = fp8(t, amax(t) / 448)
    return out


def fp8_act(x, group):
    out = np.empty_like(x)
    for j in range(0, x.shape[1], group):
        t = x[:, j:j + group]
        s = amax(t, 1, True) / 448
        out[:, j:j + group] = fp8(t, np.where(s > 0, s, 1))
    return out


def reference(method, w, x, e):
    """The layer's output on e, as the reference computes it."""
    if method == "int8":
        return e @ int8_w(w).T
    if method == "int8-ct":
        return e @ int8_w(w, 127.5, -128).T
    if method.startswith("fp8-"):
        scale = method[4:]
        return fp8_act(e, 128 if scale == "block128" else e.shape[1]) @ fp8_w(w, scale).T
    if method == "llm-int8":
        cols = (amax(e, 0) >= 6.0) | (amax(x, 0) >= 6.0)
        cb = int8_w(w)
        return int8_tok(e, cols[None, :]) @ cb.T
    if method == "smoothquant":
        s = np.maximum(np.maximum(amax(x, 0), 1e-5) ** 0.5 / np.maximum(amax(w, 0), 1e-5) ** 0.5, 1e-5)
        return int8_tok(e / s) @ int8_w(w * s).T
    raise ValueError(method)


ARGS = {
    "int8": ["--method", "int8", "--int8", "sym"],
    "int8-ct": ["--method", "int8", "--int8", "sym", "--int8-scale", "127.5"],
    "fp8-tensor": ["--method", "fp8", "--fp8-scale", "tensor"],
    "fp8-channel": ["--method", "fp8", "--fp8-scale", "channel"],
    "fp8-block128": ["--method", "fp8", "--fp8-scale", "block128"],
    "llm-int8": ["--method", "llm-int8", "--threshold", "6"],
    "smoothquant": ["--method", "smoothquant", "--alpha", "0.5"],
}


def main():
    edgeq, dirs = sys.argv[1], sys.argv[2:]
    bad = 0
    print(f"{'layer':<28} {'method':<13} {'edgeq':>11} {'reference':>11} {'diff':>7}")
    for d in dirs:
        w, x, e = (np.load(f"{d}/{n}.npy").astype(np.float32) for n in ("W", "X", "E"))
        exact = e.astype(np.float64) @ w.T.astype(np.float64)
        for m, a in ARGS.items():
            r = subprocess.run([edgeq, "layer", "--weight", f"{d}/W.npy", "--acts", f"{d}/X.npy", "--eval-acts", f"{d}/E.npy",
                                "--out", f"{d}/q.npy", "--json", *a], capture_output=True, text=True, check=True)
            ours = json.loads(r.stdout)["method_out_rel_err"]
            y = reference(m, w, x, e).astype(np.float64)
            ref = float(((exact - y) ** 2).sum() / (exact ** 2).sum())
            diff = abs(ours - ref) / ref
            flag = "" if diff <= 0.03 else "  FAIL"
            bad += diff > 0.03
            print(f"{d.rstrip('/').split('/')[-1]:<28} {m:<13} {ours:>11.4e} {ref:>11.4e} {diff:>6.1%}{flag}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
