//! QuaRot (Ashkboos et al., 2024, `rotation_utils.py`): rotate the
//! residual stream of a Llama-family model by an orthogonal `Q` so that
//! weights and activations lose their outlier channels, without changing
//! the function the model computes.
//!
//! 1. **Fuse RMSNorm weights** into the linears that read the normalized
//!    stream: `W_{q,k,v} ← W·diag(g_attn)`, `W_{gate,up} ← W·diag(g_ffn)`,
//!    `W_out ← W_out·diag(g_final)`; every norm weight becomes 1, so the
//!    norm is a pure `x/rms(x)`, which commutes with `Q` (`rms(xQ) = rms(x)`).
//! 2. **Rotate the residual stream** by the randomized Hadamard
//!    `Q = diag(s)·H/√d` (`s` random ±1, seeded): `E ← E·Q` (embedding),
//!    `W ← W·Q` on the inputs of q/k/v, gate/up and the classifier,
//!    `W ← Qᵀ·W` on the outputs of o and down (which write the stream).
//!    A tied classifier is untied (it now differs from the embedding by
//!    `diag(g_final)`).
//! 3. **Online Hadamard** on the input of `ffn_down`: the stored weight
//!    becomes `W·H/√hidden` and the runtime applies `x ← x·H/√hidden` to
//!    the SwiGLU output before the product (config flag `ONLINE_HADAMARD`),
//!    so the down projection's activations are incoherent too.
//!
//! The rotated model is float (f32) and computes the same logits as the
//! original up to float rounding; it then goes through any weight method
//! (RTN, GPTQ), with per-token int8/int4 activations for W4A8/W4A4.
//! Not done here (QuaRot's KV-cache part): the per-head Hadamard on v/o and
//! the online rotation of keys after RoPE; the o projection's input is
//! therefore not rotated.
use crate::calib::data::SplitMix;
use crate::quantize::to_f32;
use anyhow::{bail, Context, Result};
use edgeq_core::config::flags;
use edgeq_core::format::writer::{EqfWriter, TensorEntry};
use edgeq_core::format::GLOBAL_LAYER;
use edgeq_core::{Eqf, QuantSpec, TensorRole};
use edgeq_kernels::hadamard;
use rayon::prelude::*;

/// What [`rotate`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RotateReport {
    pub seed: u64,
    /// `dim = K·2^m` of the residual rotation.
    pub residual_k: usize,
    /// Whether `ffn_down`'s input is rotated online (false when
    /// `hidden_dim` has no Hadamard transform here, or it was not asked for).
    pub online_hadamard: bool,
    pub untied_classifier: bool,
    pub notes: Vec<String>,
}

/// The random signs of `Q = diag(s)·H/√d`.
pub fn signs(dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    (0..dim).map(|_| if rng.next_u64() >> 63 == 0 { 1.0 } else { -1.0 }).collect()
}

/// `v ← v·Q` with `Q = diag(s)·H/√d`.
fn rot(v: &mut [f32], s: &[f32]) {
    v.iter_mut().zip(s).for_each(|(x, s)| *x *= s);
    hadamard::transform(v);
}

/// `W ← Qᵀ·W` for `W [rows = d, cols]`: each column `c` becomes `Qᵀ·W[:, c]`,
/// i.e. `(W[:, c]ᵀ·Q)ᵀ`.
fn rot_output_side(w: &mut [f32], rows: usize, cols: usize, s: &[f32]) {
    let mut t = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t.par_chunks_mut(rows).for_each(|col| rot(col, s));
    for r in 0..rows {
        for c in 0..cols {
            w[r * cols + c] = t[c * rows + r];
        }
    }
}

/// `W ← W·diag(g)` (fold a norm weight into the layer reading its output).
fn fuse(w: &mut [f32], cols: usize, g: &[f32]) {
    w.par_chunks_mut(cols)
        .for_each(|row| row.iter_mut().zip(g).for_each(|(x, g)| *x *= g));
}

/// The rotated float model of `eqf` (see the module docs). `online`: also
/// rotate `ffn_down`'s input (skipped, with a note, when `hidden_dim` has
/// no Hadamard transform).
pub fn rotate(eqf: &Eqf<'_>, seed: u64, online: bool) -> Result<(Vec<u8>, RotateReport)> {
    let mut cfg = *eqf.config();
    let (dim, hid) = (cfg.dim as usize, cfg.hidden_dim as usize);
    let Some((residual_k, _)) = hadamard::factor(dim) else {
        bail!(
            "QuaRot: dim {dim} has no Hadamard transform here (supported: K·2^m with K = 1, 2 or a Paley order: 12, 20, 28, 36, 44, 60, 108, 140, …)"
        );
    };
    if cfg.online_hadamard() {
        bail!("the model is already rotated (its config has the online-Hadamard flag)");
    }
    let mut notes = Vec::new();
    let online = online && hadamard::supported(hid);
    if !online && !hadamard::supported(hid) {
        notes.push(format!(
            "hidden_dim {hid} has no Hadamard transform here (orders 52·2^m, 156·2^m, 172·2^m need tables QuaRot hard-codes): ffn_down's input is not rotated online"
        ));
    }
    if !eqf.act_section().records().is_empty() {
        notes.push("the input's activation-quantization records were dropped (they describe unrotated inputs)".into());
    }
    let s = signs(dim, seed);
    let get = |role: TensorRole, layer: u16| -> Result<Vec<f32>> {
        let t = eqf
            .find(role, layer)
            .with_context(|| format!("QuaRot: the model has no {role:?} for layer {layer}"))?;
        let w = to_f32(eqf, t)?;
        crate::algo::ensure_finite(&w, t.cols as usize).with_context(|| format!("tensor '{}'", t.name_str()))?;
        Ok(w)
    };
    let mut out: Vec<(TensorRole, u16, u32, u32, Vec<f32>)> = Vec::new();
    let ones = vec![1.0f32; dim];

    // Embedding and classifier.
    let mut emb = get(TensorRole::TokEmbd, GLOBAL_LAYER)?;
    let tied = cfg.tied_embeddings();
    let mut cls = if tied {
        emb.clone()
    } else {
        get(TensorRole::Output, GLOBAL_LAYER)?
    };
    emb.par_chunks_mut(dim).for_each(|r| rot(r, &s));
    let g_final = get(TensorRole::OutputNorm, GLOBAL_LAYER)?;
    fuse(&mut cls, dim, &g_final);
    cls.par_chunks_mut(dim).for_each(|r| rot(r, &s));
    let vocab = cfg.vocab_size;
    out.push((TensorRole::TokEmbd, GLOBAL_LAYER, vocab, dim as u32, emb));
    out.push((TensorRole::Output, GLOBAL_LAYER, vocab, dim as u32, cls));
    out.push((TensorRole::OutputNorm, GLOBAL_LAYER, 1, dim as u32, ones.clone()));
    cfg.flags &= !flags::TIED_EMBEDDINGS;

    for l in 0..cfg.n_layers as u16 {
        let g_attn = get(TensorRole::AttnNorm, l)?;
        let g_ffn = get(TensorRole::FfnNorm, l)?;
        for (role, g) in [
            (TensorRole::Wq, &g_attn),
            (TensorRole::Wk, &g_attn),
            (TensorRole::Wv, &g_attn),
            (TensorRole::WGate, &g_ffn),
            (TensorRole::WUp, &g_ffn),
        ] {
            let mut w = get(role, l)?;
            fuse(&mut w, dim, g);
            w.par_chunks_mut(dim).for_each(|r| rot(r, &s));
            out.push((role, l, (w.len() / dim) as u32, dim as u32, w));
        }
        let mut wo = get(TensorRole::Wo, l)?;
        let qd = wo.len() / dim;
        rot_output_side(&mut wo, dim, qd, &s);
        out.push((TensorRole::Wo, l, dim as u32, qd as u32, wo));
        let mut wd = get(TensorRole::WDown, l)?;
        if online {
            wd.par_chunks_mut(hid).for_each(|r| {
                hadamard::transform(r);
            });
        }
        rot_output_side(&mut wd, dim, hid, &s);
        out.push((TensorRole::WDown, l, dim as u32, hid as u32, wd));
        out.push((TensorRole::AttnNorm, l, 1, dim as u32, ones.clone()));
        out.push((TensorRole::FfnNorm, l, 1, dim as u32, ones.clone()));
    }
    if online {
        cfg.flags |= flags::ONLINE_HADAMARD;
    }

    let mut w = EqfWriter::new(cfg, eqf.tokenizer_bytes().to_vec());
    let report = RotateReport {
        seed,
        residual_k,
        online_hadamard: online,
        untied_classifier: tied,
        notes,
    };
    w.metadata = match serde_json::from_slice::<serde_json::Value>(eqf.metadata()) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("rotation".into(), serde_json::json!({"method": "quarot", "report": report}));
            serde_json::to_vec(&m)?
        }
        _ => eqf.metadata().to_vec(),
    };
    let rotated: std::collections::HashSet<(u16, u16)> = out.iter().map(|(r, l, ..)| (*l, *r as u16)).collect();
    for (role, layer, rows, cols, data) in out {
        w.add(TensorEntry {
            role,
            layer,
            spec: QuantSpec::F32,
            rows,
            cols,
            data: bytemuck::cast_slice(&data).to_vec(),
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // Everything else (q/k/v biases: the output side of q/k/v is not rotated) as stored.
    for t in eqf.tensors().iter().filter(|t| !rotated.contains(&(t.layer, t.role))) {
        let spec = edgeq_core::format::record_spec(t).map_err(|e| anyhow::anyhow!("{e}"))?;
        w.add(TensorEntry {
            role: TensorRole::from_u16(t.role).context("unknown role")?,
            layer: t.layer,
            spec,
            rows: t.rows,
            cols: t.cols,
            data: eqf.tensor_bytes(t).map_err(|e| anyhow::anyhow!("{e}"))?.to_vec(),
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok((w.finish(), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rotated float model computes the original's logits (within
    /// float error), with and without the online Hadamard, tied or not.
    #[test]
    fn rotation_preserves_the_function() {
        // The tiny model: dim 64; its hidden_dim decides whether the online part runs.
        let orig = crate::tiny::eqf(3, "f32").unwrap();
        let toks = [1u32, 5, 9, 2, 7, 33, 12];
        let want = crate::tiny::last_logits(&orig, &toks).unwrap();
        let a = crate::import::AlignedBytes::from(&orig);
        let eqf = Eqf::parse(a.as_bytes()).unwrap();
        for online in [false, true] {
            let (bytes, rep) = rotate(&eqf, 7, online).unwrap();
            let got = crate::tiny::last_logits(&bytes, &toks).unwrap();
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 2e-5 * scale.max(1.0), "online {online} ({rep:?}): {g} vs {w}");
            }
            // and the weights did change
            let b = crate::import::AlignedBytes::from(&bytes);
            let r = Eqf::parse(b.as_bytes()).unwrap();
            let w0 = to_f32(&eqf, eqf.find(TensorRole::Wq, 0).unwrap()).unwrap();
            let w1 = to_f32(&r, r.find(TensorRole::Wq, 0).unwrap()).unwrap();
            assert!(w0.iter().zip(&w1).filter(|(a, b)| (*a - *b).abs() > 1e-3).count() > w0.len() / 2);
            assert_eq!(r.config().online_hadamard(), rep.online_hadamard);
        }
        // rotating twice is refused when the flag is set
        let (bytes, rep) = rotate(&eqf, 7, true).unwrap();
        if rep.online_hadamard {
            let b = crate::import::AlignedBytes::from(&bytes);
            assert!(rotate(&Eqf::parse(b.as_bytes()).unwrap(), 7, true).is_err());
        }
    }

    #[test]
    fn signs_are_seeded() {
        assert_eq!(signs(64, 1), signs(64, 1));
        assert_ne!(signs(64, 1), signs(64, 2));
        let s = signs(4096, 0);
        let pos = s.iter().filter(|&&v| v > 0.0).count();
        assert!((1800..2300).contains(&pos), "{pos}");
    }
}
