#!/usr/bin/env python3
"""AdaRound parity: edgeq's `layer --method adaround` against an independent
NumPy implementation written from the paper and the reference code's
conventions (AIMET / BRECQ's AdaRoundQuantizer):

  w~ = s * (clip(floor(w/s) + h(V) + z, 0, maxq) - z),  h(V) = clip(sigmoid(V)*1.2 - 0.1, 0, 1)
  V0 such that h(V0) = frac(w/s)
  loss = mean_t ||(W~ - W) x_t||^2 + lam * sum(1 - |2h - 1|^beta)   (rounding term off in warm-up)
  beta: 20 -> 2 linearly after 20 % warm-up, lam = 0.01, Adam lr 1e-3 (PyTorch defaults), h = [V >= 0]

on the RTN grid (min-max per group of 32, 4-bit). The reference differs from
edgeq in formulation on purpose: it takes the gradient from the tokens
(2/n (W~-W) X^T X) where edgeq uses the second-moment matrix, and runs in
float64. It fails when fewer than 97 % of the codes agree or when the output
errors on held-out activations differ by more than 3 % (relative).

usage: check_adaround.py EDGEQ ITERS LAYER_DIR...   (each dir holds W.npy X.npy E.npy)
"""
import subprocess
import sys

import numpy as np


def grid(w, bits=4, group=32, sym=True):
    """The GPTQ reference quantizer's grid (edgeq's RTN): scale and zero per (row, group)."""
    rows, cols = w.shape
    maxq = 2**bits - 1
    S = np.zeros((rows, cols))
    Z = np.zeros((rows, cols))
    for c0 in range(0, cols, group):  # the last group may be partial (172 = 5*32 + 12)
        g = w[:, c0:c0 + group]
        lo = np.minimum(g.min(axis=1), 0)
        hi = np.maximum(g.max(axis=1), 0)
        if sym:
            hi = np.maximum(hi, -lo)
            lo = np.where(lo < 0, -hi, lo)
        both0 = (lo == 0) & (hi == 0)
        lo = np.where(both0, -1, lo)
        hi = np.where(both0, 1, hi)
        s = ((hi - lo) / np.float32(maxq)).astype(np.float32)
        z = np.full_like(s, (maxq + 1) / 2) if sym else np.round(-lo / s)
        S[:, c0:c0 + group] = s[:, None]
        Z[:, c0:c0 + group] = z[:, None]
    return S, Z, maxq


def adaround(w, x, iters, lam=0.01, warm=0.2, b=(20.0, 2.0), lr=1e-3):
    w = w.astype(np.float64)
    x = x.astype(np.float64)
    n = x.shape[0]
    s, z, maxq = grid(w.astype(np.float32))
    fl = np.floor(w / s)
    rest = np.clip(w / s - fl, 0, 1)
    v = -np.log(1.2 / (rest + 0.1) - 1)
    m1 = np.zeros_like(v)
    m2 = np.zeros_like(v)
    start = int(warm * iters)
    for t in range(iters):
        sig = 1 / (1 + np.exp(-v))
        h_raw = sig * 1.2 - 0.1
        h = np.clip(h_raw, 0, 1)
        dh_dv = np.where((h_raw > 0) & (h_raw < 1), 1.2 * sig * (1 - sig), 0)
        pre = fl + h + z
        wq = s * (np.clip(pre, 0, maxq) - z)
        dwq_dh = np.where((pre > 0) & (pre < maxq), s, 0)
        d = (wq - w) @ x.T  # [rows, n]
        g = (2.0 / n) * (d @ x) * dwq_dh * dh_dv
        if t >= start:
            beta = b[1] + (b[0] - b[1]) * max(0.0, 1 - (t - start) / (iters - start))
            u = 2 * h - 1
            g += -2 * lam * beta * np.abs(u) ** (beta - 1) * np.sign(u) * dh_dv
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g * g
        v -= lr * (m1 / (1 - 0.9 ** (t + 1))) / (np.sqrt(m2 / (1 - 0.999 ** (t + 1))) + 1e-8)
    codes = np.clip(fl + (v >= 0) + z, 0, maxq)
    return s * (codes - z), codes


def rel_err(e, w, wq):
    y = e @ w.T
    return float(((y - e @ wq.T) ** 2).sum() / (y**2).sum())


def main():
    exe, iters, dirs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    bad = 0
    for d in dirs:
        w = np.load(f"{d}/W.npy").astype(np.float32)
        x = np.load(f"{d}/X.npy").astype(np.float32)
        e = np.load(f"{d}/E.npy").astype(np.float32)
        subprocess.run(
            [exe, "layer", "--weight", f"{d}/W.npy", "--acts", f"{d}/X.npy", "--method", "adaround",
             "--bits", "4", "--group", "32", "--sym", "--ada-iters", str(iters), "--out", f"{d}/ada.npy"],
            check=True, capture_output=True)
        ours = np.load(f"{d}/ada.npy").astype(np.float64)
        ref, ref_codes = adaround(w, x, iters)
        s, z, _ = grid(w)
        our_codes = np.round(ours / s + z)
        agree = float((our_codes == ref_codes).mean())
        rtn = s * (np.clip(np.round(w / s) + z, 0, 15) - z)
        eo, er, en = rel_err(e, w, ours), rel_err(e, w, ref), rel_err(e, w, rtn)
        diff = abs(eo - er) / er
        ok = agree >= 0.97 and diff <= 0.03
        bad += not ok
        print(f"{d.split('/')[-1]:<18} adaround: codes agree {agree*100:6.2f}%  held-out error edgeq {eo:.4e}  "
              f"reference {er:.4e} ({diff*100:+.2f}%)  rtn {en:.4e}  {'ok' if ok else 'FAIL'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
