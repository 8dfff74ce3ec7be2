//! All scratch and the KV cache live in one caller-provided byte arena,
//! carved here into f32 buffers and the cache in its precision
//! ([`KvCache`]: f32, f16 or int8 with f16 scales). [`arena_bytes`] /
//! [`arena_bytes_with`] say how large it must be before anything runs, so
//! firmware can size a static buffer.
use crate::error::RuntimeError;
use crate::kv::{KvBufs, KvCache};
use edgeq_core::ModelConfig;
use half::f16;

/// Sizes of every buffer of a session: the scratch in f32 elements, the KV
/// cache in values of its precision ([`ArenaPlan::kv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaPlan {
    pub x: usize,
    pub xb: usize,
    pub xb2: usize,
    pub q: usize,
    pub hb: usize,
    pub hb2: usize,
    pub att: usize,
    pub rope: usize,
    /// One dequantized weight row of the widest input, then a bit per column
    /// of it (LLM.int8's outlier mask).
    pub row: usize,
    /// Quantized activations of the widest linear input ([`edgeq_kernels::act_q8::words`]).
    pub qa: usize,
    /// The gathered input of a permuted linear (`max_batch` vectors of the
    /// widest input) when the model has INPUT_PERM layers, else 0.
    pub xp: usize,
    pub logits: usize,
    /// K cache values (`n_layers · max_seq · kv_dim`), of [`ArenaPlan::kv`] precision.
    pub kcache: usize,
    /// V cache values, as `kcache`.
    pub vcache: usize,
    /// Storage precision of the KV cache.
    pub kv: KvCache,
    /// Q8 only: f16 scales of K (`n_layers · max_seq · n_kv_heads`); 0 otherwise.
    pub kscale: usize,
    /// Q8 only: f16 scales of V; 0 otherwise.
    pub vscale: usize,
    /// F16/Q8 only, and only when `hidden_dim < kv_dim`: f32 scratch for the
    /// new k and v rows of a batch (`2 · max_batch · kv_dim`) before they are
    /// stored. Otherwise 0: F32 projections write straight into the cache,
    /// F16/Q8 ones into `hb`/`hb2` (idle during attention).
    pub kv_new: usize,
}

impl ArenaPlan {
    /// The plan with an f32 KV cache.
    pub fn new(c: &ModelConfig, max_seq: usize, max_batch: usize) -> ArenaPlan {
        Self::with_kv(c, max_seq, max_batch, KvCache::F32)
    }

    /// The plan with a KV cache of precision `kv`.
    pub fn with_kv(c: &ModelConfig, max_seq: usize, max_batch: usize, kv: KvCache) -> ArenaPlan {
        let (dim, qd, kvd, hid) = (c.dim as usize, c.q_dim(), c.kv_dim(), c.hidden_dim as usize);
        let b = max_batch.max(1);
        let values = (c.n_layers as usize).saturating_mul(max_seq).saturating_mul(kvd);
        let scales = match kv {
            KvCache::Q8 => (c.n_layers as usize).saturating_mul(max_seq).saturating_mul(c.n_kv_heads as usize),
            _ => 0,
        };
        ArenaPlan {
            x: b * dim,
            xb: b * dim.max(qd),
            xb2: b * dim,
            q: b * qd,
            hb: b * hid,
            hb2: b * hid,
            att: max_seq,
            rope: b * c.rope_dim as usize,
            row: dim.max(qd).max(hid) + dim.max(qd).max(hid).div_ceil(32),
            qa: edgeq_kernels::act_q8::words(b, dim.max(qd).max(hid)),
            xp: if c.input_perm() { b * dim.max(qd).max(hid) } else { 0 },
            logits: c.vocab_size as usize,
            kcache: values,
            vcache: values,
            kv,
            kscale: scales,
            vscale: scales,
            kv_new: match kv {
                KvCache::F16 | KvCache::Q8 if hid < kvd => 2 * b * kvd,
                _ => 0,
            },
        }
    }

    /// f32 elements of the arena's f32 part: the scratch (and the cache
    /// when it is f32).
    fn f32_elems(&self) -> usize {
        let cache = match self.kv {
            KvCache::F32 => self.kcache.saturating_add(self.vcache),
            _ => 0,
        };
        (self.x + self.xb + self.xb2 + self.q + self.hb + self.hb2 + self.att + self.rope + self.row + self.qa + self.xp + self.logits)
            .saturating_add(cache)
            .saturating_add(self.kv_new)
    }

    /// f16 elements after the f32 part: the F16 cache or the Q8 scales.
    fn f16_elems(&self) -> usize {
        match self.kv {
            KvCache::F32 => 0,
            KvCache::F16 => self.kcache.saturating_add(self.vcache),
            KvCache::Q8 => self.kscale.saturating_add(self.vscale),
        }
    }

    /// int8 elements at the end: the Q8 cache.
    fn i8_elems(&self) -> usize {
        match self.kv {
            KvCache::Q8 => self.kcache.saturating_add(self.vcache),
            _ => 0,
        }
    }

    /// Bytes of arena the plan needs.
    pub fn bytes(&self) -> usize {
        self.f32_elems()
            .saturating_mul(4)
            .saturating_add(self.f16_elems().saturating_mul(2))
            .saturating_add(self.i8_elems())
    }

    /// The arena size in 4-byte words ([`ArenaPlan::bytes`] rounded up).
    pub fn floats(&self) -> usize {
        self.bytes().div_ceil(4)
    }

    /// Bytes of the KV cache, scales included (the `kv_new` scratch not).
    pub fn kv_bytes(&self) -> usize {
        let scales = match self.kv {
            KvCache::Q8 => 2 * (self.kscale + self.vscale),
            _ => 0,
        };
        self.kv.value_bytes() * (self.kcache + self.vcache) + scales
    }
}

/// Bytes of arena a session with this context and batch size needs, with
/// an f32 KV cache ([`Session::new`](crate::Session::new)).
pub fn arena_bytes(cfg: &ModelConfig, max_seq: usize, max_batch: usize) -> usize {
    arena_bytes_with(cfg, max_seq, max_batch, KvCache::F32)
}

/// Bytes of arena a session with this context, batch size and KV cache
/// precision needs ([`Session::with_options`](crate::Session::with_options)).
pub fn arena_bytes_with(cfg: &ModelConfig, max_seq: usize, max_batch: usize, kv: KvCache) -> usize {
    ArenaPlan::with_kv(cfg, max_seq, max_batch, kv).bytes()
}

/// Activation precision of the linear layers with integer weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Activations {
    /// Exact: weights dequantized against f32 activations.
    F32,
    /// Activations quantized to 8 bits per 32-block, int8 dot products
    /// (llama.cpp's Q8_0 scheme; relative output error ~1e-3). F32/F16/FP8
    /// weights always use f32 activations.
    Q8,
}

/// How the linear layers of a session run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MatmulOpts {
    pub acts: Activations,
    /// Threads per product (rows split across a spinning worker pool); only
    /// with the `threads` feature, otherwise ignored.
    pub threads: usize,
}

impl Default for MatmulOpts {
    /// Q8 activations (the fast path), one thread.
    fn default() -> Self {
        MatmulOpts {
            acts: Activations::Q8,
            threads: 1,
        }
    }
}

/// How a session runs: KV cache precision and linear layers
/// ([`Session::with_options`](crate::Session::with_options)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SessionOptions {
    /// Storage precision of the KV cache; size the arena with
    /// [`arena_bytes_with`] for the same precision.
    pub kv: KvCache,
    /// How linear layers run (changeable later with
    /// [`Session::set_matmul`](crate::Session::set_matmul)).
    pub matmul: MatmulOpts,
}

impl Default for SessionOptions {
    /// What [`Session::new`](crate::Session::new) uses: f32 KV cache,
    /// [`MatmulOpts::default`].
    fn default() -> Self {
        SessionOptions {
            kv: KvCache::F32,
            matmul: MatmulOpts::default(),
        }
    }
}

/// Per-call scratch of one block's forward pass (see [`crate::forward::block_forward`]).
pub struct Scratch<'r> {
    pub xb: &'r mut [f32],
    pub xb2: &'r mut [f32],
    pub q: &'r mut [f32],
    pub hb: &'r mut [f32],
    pub hb2: &'r mut [f32],
    pub att: &'r mut [f32],
    pub row: &'r mut [f32],
    pub qa: &'r mut [f32],
    /// The gathered input of a permuted linear (empty unless the model has some).
    pub xp: &'r mut [f32],
    pub mm: MatmulOpts,
}

/// The carved buffers of a session.
pub struct Buffers<'r> {
    pub x: &'r mut [f32],
    pub rope: &'r mut [f32],
    pub logits: &'r mut [f32],
    /// The KV cache of every layer (split per layer with [`KvBufs::layer`]).
    pub kv: KvBufs<'r>,
    pub s: Scratch<'r>,
}

/// Splits `n` elements off the front of `rest`.
fn take<'r, T>(rest: &mut &'r mut [T], n: usize) -> &'r mut [T] {
    let all = core::mem::take(rest);
    let (a, b) = all.split_at_mut(n.min(all.len()));
    *rest = b;
    a
}

impl<'r> Buffers<'r> {
    /// Carves `arena` (4-byte aligned, at least [`ArenaPlan::bytes`] long,
    /// zeroed here) into the plan's buffers: the f32 part first, then f16
    /// (F16 cache or Q8 scales), then int8 (Q8 cache).
    pub fn carve(plan: &ArenaPlan, arena: &'r mut [u8]) -> Result<Buffers<'r>, RuntimeError> {
        let need = plan.bytes();
        if arena.len() < need {
            return Err(RuntimeError::ArenaTooSmall { need, have: arena.len() });
        }
        let too_small = RuntimeError::ArenaTooSmall { need, have: arena.len() };
        let arena = arena.get_mut(..need).ok_or(too_small)?;
        arena.fill(0);
        let (f32_part, rest) = arena.split_at_mut_checked(plan.f32_elems() * 4).ok_or(too_small)?;
        let (f16_part, i8_part) = rest.split_at_mut_checked(plan.f16_elems() * 2).ok_or(too_small)?;
        let mut all: &mut [f32] = bytemuck::try_cast_slice_mut(f32_part).map_err(|_| RuntimeError::ArenaMisaligned)?;
        let mut halves: &mut [f16] = bytemuck::try_cast_slice_mut(f16_part).map_err(|_| RuntimeError::ArenaMisaligned)?;
        let mut bytes: &mut [i8] = bytemuck::cast_slice_mut(i8_part);
        let rest = &mut all;
        let mut b = Buffers {
            x: take(rest, plan.x),
            s: Scratch {
                xb: take(rest, plan.xb),
                xb2: take(rest, plan.xb2),
                q: take(rest, plan.q),
                hb: take(rest, plan.hb),
                hb2: take(rest, plan.hb2),
                att: take(rest, plan.att),
                row: take(rest, plan.row),
                qa: take(rest, plan.qa),
                xp: take(rest, plan.xp),
                mm: MatmulOpts::default(),
            },
            rope: take(rest, plan.rope),
            logits: take(rest, plan.logits),
            kv: KvBufs::F32 { k: &mut [], v: &mut [] },
        };
        b.kv = match plan.kv {
            KvCache::F32 => KvBufs::F32 {
                k: take(rest, plan.kcache),
                v: take(rest, plan.vcache),
            },
            KvCache::F16 => KvBufs::F16 {
                new: take(rest, plan.kv_new),
                k: take(&mut halves, plan.kcache),
                v: take(&mut halves, plan.vcache),
            },
            KvCache::Q8 => KvBufs::Q8 {
                new: take(rest, plan.kv_new),
                ks: take(&mut halves, plan.kscale),
                vs: take(&mut halves, plan.vscale),
                k: take(&mut bytes, plan.kcache),
                v: take(&mut bytes, plan.vcache),
            },
        };
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeq_core::ModelConfig;

    /// stories260K: dim 64, 5 layers, 8 heads, 4 kv heads (kv_dim 32),
    /// hidden 172, vocab 512, context 512.
    fn stories260k() -> ModelConfig {
        ModelConfig {
            arch: edgeq_core::config::ARCH_LLAMA,
            dim: 64,
            hidden_dim: 172,
            n_layers: 5,
            n_heads: 8,
            n_kv_heads: 4,
            head_dim: 8,
            vocab_size: 512,
            max_seq_len: 512,
            rope_dim: 8,
            ..bytemuck::Zeroable::zeroed()
        }
    }

    #[test]
    fn kv_cache_sizes_for_stories260k_at_128() {
        let c = stories260k();
        assert_eq!(c.kv_dim(), 32);
        let f32p = ArenaPlan::with_kv(&c, 128, 1, KvCache::F32);
        let f16p = ArenaPlan::with_kv(&c, 128, 1, KvCache::F16);
        let q8p = ArenaPlan::with_kv(&c, 128, 1, KvCache::Q8);
        // 5 layers × 128 positions × 32 × (K, V).
        assert_eq!(f32p.kv_bytes(), 160 * 1024);
        assert_eq!(f16p.kv_bytes(), 80 * 1024);
        // 40 KiB of codes + one f16 scale per (layer, position, kv head) for K and V.
        assert_eq!(q8p.kv_bytes(), 40 * 1024 + 2 * 5 * 128 * 4 * 2);
        assert_eq!(q8p.kv_bytes(), 50 * 1024);
        // The rest of the arena does not depend on the precision (the new
        // k and v rows go through hb/hb2: hidden 172 ≥ kv_dim 32).
        let scratch = f32p.bytes() - f32p.kv_bytes();
        assert_eq!(f16p.bytes(), scratch + f16p.kv_bytes());
        assert_eq!(q8p.bytes(), scratch + q8p.kv_bytes());
        assert_eq!(q8p.kv_new, 0);
        // A model with hidden < kv_dim gets its own rows.
        let narrow = ModelConfig { hidden_dim: 16, ..c };
        let p = ArenaPlan::with_kv(&narrow, 128, 3, KvCache::Q8);
        assert_eq!(p.kv_new, 2 * 3 * 32);
        assert_eq!(
            p.bytes(),
            ArenaPlan::with_kv(&narrow, 128, 3, KvCache::F32).bytes() - f32p.kv_bytes() + q8p.kv_bytes() + p.kv_new * 4
        );
        assert_eq!(arena_bytes(&c, 128, 1), f32p.bytes());
        assert_eq!(arena_bytes_with(&c, 128, 1, KvCache::F32), f32p.bytes());
        assert_eq!(arena_bytes_with(&c, 128, 1, KvCache::Q8), q8p.bytes());
        // Q8 leaves room for the stack in 64 KB of RAM.
        assert!(q8p.bytes() < 60 * 1024, "{}", q8p.bytes());
    }

    #[test]
    fn carve_gives_every_buffer_its_size() {
        let c = stories260k();
        for kv in [KvCache::F32, KvCache::F16, KvCache::Q8] {
            let plan = ArenaPlan::with_kv(&ModelConfig { hidden_dim: 16, ..c }, 40, 3, kv);
            let mut arena = [0u32; 32 * 1024];
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut arena);
            assert!(matches!(
                Buffers::carve(&plan, &mut bytes[..plan.bytes() - 1]),
                Err(RuntimeError::ArenaTooSmall { .. })
            ));
            assert!(matches!(Buffers::carve(&plan, &mut bytes[1..]), Err(RuntimeError::ArenaMisaligned)));
            let b = Buffers::carve(&plan, bytes).unwrap();
            assert_eq!((b.x.len(), b.logits.len(), b.s.qa.len()), (plan.x, plan.logits, plan.qa));
            match b.kv {
                KvBufs::F32 { k, v } => assert_eq!((k.len(), v.len(), kv), (40 * 5 * 32, 40 * 5 * 32, KvCache::F32)),
                KvBufs::F16 { k, v, new } => {
                    assert_eq!((k.len(), v.len(), new.len(), kv), (6400, 6400, 2 * 3 * 32, KvCache::F16))
                }
                KvBufs::Q8 { k, v, ks, vs, new } => assert_eq!(
                    (k.len(), v.len(), ks.len(), vs.len(), new.len(), kv),
                    (6400, 6400, 800, 800, 192, KvCache::Q8)
                ),
            }
        }
    }
}
