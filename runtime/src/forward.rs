//! The forward pass of a Llama-family decoder, the one model definition of
//! edgeq (the host's calibration and evaluation run this same code).
//!
//! For each of the `n` tokens fed at positions `pos..pos+n`:
//! ```text
//! x = embed(token)
//! for each block:
//!     h = rmsnorm(x) · attn_norm
//!     q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv);  rope(q, k);  cache k, v
//!     x += Wo · attention(q, K[0..=p], V[0..=p])      (grouped-query, causal)
//!     h = rmsnorm(x) · ffn_norm
//!     x += Wdown · (silu(Wgate h) ⊙ (Wup h))
//! logits = Wcls · (rmsnorm(x) · output_norm)
//! ```
use crate::arena::{ArenaPlan, Buffers};
use crate::error::RuntimeError;
use crate::model::Model;
use edgeq_core::{RopeLayout, RopeScaling, TensorView};
use edgeq_kernels as k;

/// A decoding session: a KV cache and scratch in a caller arena.
pub struct Session<'m, 'a, 'r> {
    model: &'m Model<'a>,
    buf: Buffers<'r>,
    max_seq: usize,
    max_batch: usize,
    pos: usize,
}

fn matmul(y: &mut [f32], w: &TensorView<'_>, x: &[f32], n: usize, row: &mut [f32]) {
    k::matmul(y, w, x, n, 0..w.rows(), row);
}

fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / libm::sqrtf(ss + eps);
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Fills `cs` (rope_dim floats: cos then sin of each pair) for position `pos`.
fn rope_angles(cs: &mut [f32], model: &Model<'_>, pos: usize) {
    let c = &model.cfg;
    let half = c.rope_dim as usize / 2;
    for i in 0..half {
        let mut freq = libm::pow(c.rope_theta as f64, -2.0 * i as f64 / c.rope_dim as f64);
        if let RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } = c.rope_scaling()
        {
            let (f, lo, hi, old) = (
                factor as f64,
                low_freq_factor as f64,
                high_freq_factor as f64,
                original_max_position as f64,
            );
            let wavelen = 2.0 * core::f64::consts::PI / freq;
            if wavelen > old / lo {
                freq /= f;
            } else if wavelen >= old / hi {
                let smooth = (old / wavelen - lo) / (hi - lo);
                freq = (1.0 - smooth) * freq / f + smooth * freq;
            }
        }
        let angle = pos as f64 * freq;
        cs[i] = libm::cos(angle) as f32;
        cs[half + i] = libm::sin(angle) as f32;
    }
}

/// Rotates the first `rope_dim` dims of each `head_dim` head in `v`.
fn rope(v: &mut [f32], cs: &[f32], head_dim: usize, layout: RopeLayout) {
    let half = cs.len() / 2;
    for head in v.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (a, b) = match layout {
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                RopeLayout::Half => (i, i + half),
            };
            let (cos, sin) = (cs[i], cs[half + i]);
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}

impl<'m, 'a, 'r> Session<'m, 'a, 'r> {
    /// A session of up to `max_seq` positions fed in calls of at most
    /// `max_batch` tokens; `arena` must hold `arena_bytes(cfg, max_seq, max_batch)`.
    pub fn new(
        model: &'m Model<'a>,
        arena: &'r mut [u8],
        max_seq: usize,
        max_batch: usize,
    ) -> Result<Self, RuntimeError> {
        let max_seq = max_seq.clamp(1, model.cfg.max_seq_len as usize);
        let max_batch = max_batch.clamp(1, max_seq);
        let plan = ArenaPlan::new(&model.cfg, max_seq, max_batch);
        let buf = Buffers::carve(&plan, arena)?;
        Ok(Session {
            model,
            buf,
            max_seq,
            max_batch,
            pos: 0,
        })
    }

    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn max_seq(&self) -> usize {
        self.max_seq
    }
    /// Forgets the context (the KV cache is overwritten as positions refill).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Feeds one token and returns the logits for the next one.
    pub fn step(&mut self, token: u32) -> Result<&[f32], RuntimeError> {
        self.forward(&[token], None)
    }

    /// Feeds `tokens` (at most `max_batch`) at the current position. With
    /// `all_logits` (len ≥ n·vocab) the logits after every token are written
    /// there; the logits after the last token are always returned.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        all_logits: Option<&mut [f32]>,
    ) -> Result<&[f32], RuntimeError> {
        let m = self.model;
        let c = &m.cfg;
        let n = tokens.len();
        if n == 0 {
            return Ok(self.buf.logits);
        }
        if n > self.max_batch {
            return Err(RuntimeError::BatchTooLarge {
                tokens: n,
                max_batch: self.max_batch,
            });
        }
        if self.pos + n > self.max_seq {
            return Err(RuntimeError::ContextFull {
                pos: self.pos + n - 1,
                max_seq: self.max_seq,
            });
        }
        if let Some(&t) = tokens.iter().find(|&&t| t >= c.vocab_size) {
            return Err(RuntimeError::BadToken {
                token: t,
                vocab: c.vocab_size,
            });
        }
        let vocab = c.vocab_size as usize;
        if let Some(ref out) = all_logits {
            if out.len() < n * vocab {
                return Err(RuntimeError::OutputTooSmall {
                    need: n * vocab,
                    have: out.len(),
                });
            }
        }
        let (dim, qd, kvd, hid) = (c.dim as usize, c.q_dim(), c.kv_dim(), c.hidden_dim as usize);
        let (hd, n_heads) = (c.head_dim as usize, c.n_heads as usize);
        let kv_mul = n_heads / c.n_kv_heads as usize;
        let rd = c.rope_dim as usize;
        let eps = c.rms_eps;
        let b = &mut self.buf;

        // Embeddings and rotary angles for each position.
        let emb = m.tok_embd()?;
        for (i, &t) in tokens.iter().enumerate() {
            emb.dequantize_row(t as usize, &mut b.x[i * dim..(i + 1) * dim]);
            rope_angles(&mut b.rope[i * rd..(i + 1) * rd], m, self.pos + i);
        }

        for l in 0..c.n_layers as usize {
            let w = m.block(l)?;
            let cache = l * self.max_seq * kvd;
            let (k_new, v_new) = (
                &mut b.kcache[cache + self.pos * kvd..cache + (self.pos + n) * kvd],
                &mut b.vcache[cache + self.pos * kvd..cache + (self.pos + n) * kvd],
            );
            // Attention: q, k, v projections (k and v straight into the cache).
            for i in 0..n {
                rmsnorm(
                    &mut b.xb[i * dim..(i + 1) * dim],
                    &b.x[i * dim..(i + 1) * dim],
                    w.attn_norm,
                    eps,
                );
            }
            let h = &b.xb[..n * dim];
            matmul(&mut b.q[..n * qd], &w.wq, h, n, b.row);
            matmul(k_new, &w.wk, h, n, b.row);
            matmul(v_new, &w.wv, h, n, b.row);
            for i in 0..n {
                let (q, kk, vv) = (
                    &mut b.q[i * qd..(i + 1) * qd],
                    &mut k_new[i * kvd..(i + 1) * kvd],
                    &mut v_new[i * kvd..(i + 1) * kvd],
                );
                if let (Some(bq), Some(bk), Some(bv)) = (w.bq, w.bk, w.bv) {
                    q.iter_mut().zip(bq).for_each(|(a, b)| *a += b);
                    kk.iter_mut().zip(bk).for_each(|(a, b)| *a += b);
                    vv.iter_mut().zip(bv).for_each(|(a, b)| *a += b);
                }
                let cs = &b.rope[i * rd..(i + 1) * rd];
                rope(q, cs, hd, c.rope_layout());
                rope(kk, cs, hd, c.rope_layout());
            }
            // Causal grouped-query attention over the cache, into xb.
            let (kc, vc) = (
                &b.kcache[cache..cache + self.max_seq * kvd],
                &b.vcache[cache..cache + self.max_seq * kvd],
            );
            let scale = 1.0 / libm::sqrtf(hd as f32);
            for i in 0..n {
                let p = self.pos + i;
                for h in 0..n_heads {
                    let q = &b.q[i * qd + h * hd..i * qd + (h + 1) * hd];
                    let kvh = (h / kv_mul) * hd;
                    let att = &mut b.att[..=p];
                    for (t, a) in att.iter_mut().enumerate() {
                        *a = k::dot(q, &kc[t * kvd + kvh..t * kvd + kvh + hd]) * scale;
                    }
                    softmax(att);
                    let out = &mut b.xb[i * qd + h * hd..i * qd + (h + 1) * hd];
                    out.fill(0.0);
                    for (t, &a) in att.iter().enumerate() {
                        let v = &vc[t * kvd + kvh..t * kvd + kvh + hd];
                        out.iter_mut().zip(v).for_each(|(o, v)| *o += a * v);
                    }
                }
            }
            matmul(&mut b.xb2[..n * dim], &w.wo, &b.xb[..n * qd], n, b.row);
            b.x[..n * dim]
                .iter_mut()
                .zip(&b.xb2[..n * dim])
                .for_each(|(x, d)| *x += d);

            // Feed-forward (SwiGLU).
            for i in 0..n {
                rmsnorm(
                    &mut b.xb[i * dim..(i + 1) * dim],
                    &b.x[i * dim..(i + 1) * dim],
                    w.ffn_norm,
                    eps,
                );
            }
            let h = &b.xb[..n * dim];
            matmul(&mut b.hb[..n * hid], &w.w_gate, h, n, b.row);
            matmul(&mut b.hb2[..n * hid], &w.w_up, h, n, b.row);
            b.hb[..n * hid]
                .iter_mut()
                .zip(&b.hb2[..n * hid])
                .for_each(|(g, u)| *g = silu(*g) * u);
            matmul(&mut b.xb2[..n * dim], &w.w_down, &b.hb[..n * hid], n, b.row);
            b.x[..n * dim]
                .iter_mut()
                .zip(&b.xb2[..n * dim])
                .for_each(|(x, d)| *x += d);
        }

        // Final norm and classifier.
        let norm = m.output_norm()?;
        for i in 0..n {
            rmsnorm(
                &mut b.xb[i * dim..(i + 1) * dim],
                &b.x[i * dim..(i + 1) * dim],
                norm,
                eps,
            );
        }
        let cls = m.classifier()?;
        match all_logits {
            Some(out) => {
                matmul(&mut out[..n * vocab], &cls, &b.xb[..n * dim], n, b.row);
                b.logits.copy_from_slice(&out[(n - 1) * vocab..n * vocab]);
            }
            None => matmul(b.logits, &cls, &b.xb[(n - 1) * dim..n * dim], 1, b.row),
        }
        self.pos += n;
        Ok(self.buf.logits)
    }
}
