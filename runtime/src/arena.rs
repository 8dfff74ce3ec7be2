//! All scratch and the KV cache live in one caller-provided byte arena,
//! carved into f32 buffers here. [`arena_bytes`] says how large it must be
//! before anything runs, so firmware can size a static buffer.
use crate::error::RuntimeError;
use edgeq_core::ModelConfig;

/// Sizes (in f32 elements) of every buffer of a session.
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
    pub row: usize,
    /// Quantized activations of the widest linear input ([`edgeq_kernels::act_q8::words`]).
    pub qa: usize,
    pub logits: usize,
    pub kcache: usize,
    pub vcache: usize,
}

impl ArenaPlan {
    pub fn new(c: &ModelConfig, max_seq: usize, max_batch: usize) -> ArenaPlan {
        let (dim, qd, kvd, hid) = (c.dim as usize, c.q_dim(), c.kv_dim(), c.hidden_dim as usize);
        let b = max_batch.max(1);
        ArenaPlan {
            x: b * dim,
            xb: b * dim.max(qd),
            xb2: b * dim,
            q: b * qd,
            hb: b * hid,
            hb2: b * hid,
            att: max_seq,
            rope: b * c.rope_dim as usize,
            row: dim.max(qd).max(hid),
            qa: edgeq_kernels::act_q8::words(b, dim.max(qd).max(hid)),
            logits: c.vocab_size as usize,
            kcache: c.n_layers as usize * max_seq * kvd,
            vcache: c.n_layers as usize * max_seq * kvd,
        }
    }
    pub fn floats(&self) -> usize {
        self.x
            + self.xb
            + self.xb2
            + self.q
            + self.hb
            + self.hb2
            + self.att
            + self.rope
            + self.row
            + self.qa
            + self.logits
            + self.kcache
            + self.vcache
    }
    pub fn kv_bytes(&self) -> usize {
        4 * (self.kcache + self.vcache)
    }
}

/// Bytes of arena a session with this context and batch size needs.
pub fn arena_bytes(cfg: &ModelConfig, max_seq: usize, max_batch: usize) -> usize {
    ArenaPlan::new(cfg, max_seq, max_batch).floats() * 4
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
    pub mm: MatmulOpts,
}

/// The carved buffers of a session.
pub struct Buffers<'r> {
    pub x: &'r mut [f32],
    pub rope: &'r mut [f32],
    pub logits: &'r mut [f32],
    pub kcache: &'r mut [f32],
    pub vcache: &'r mut [f32],
    pub s: Scratch<'r>,
}

impl<'r> Buffers<'r> {
    pub fn carve(plan: &ArenaPlan, arena: &'r mut [u8]) -> Result<Buffers<'r>, RuntimeError> {
        let need = plan.floats() * 4;
        if arena.len() < need {
            return Err(RuntimeError::ArenaTooSmall { need, have: arena.len() });
        }
        let all: &mut [f32] = bytemuck::try_cast_slice_mut(&mut arena[..need]).map_err(|_| RuntimeError::ArenaMisaligned)?;
        all.fill(0.0);
        let mut rest = all;
        let mut take = |n: usize| {
            let (a, b) = core::mem::take(&mut rest).split_at_mut(n);
            rest = b;
            a
        };
        Ok(Buffers {
            x: take(plan.x),
            s: Scratch {
                xb: take(plan.xb),
                xb2: take(plan.xb2),
                q: take(plan.q),
                hb: take(plan.hb),
                hb2: take(plan.hb2),
                att: take(plan.att),
                row: take(plan.row),
                qa: take(plan.qa),
                mm: MatmulOpts::default(),
            },
            rope: take(plan.rope),
            logits: take(plan.logits),
            kcache: take(plan.kcache),
            vcache: take(plan.vcache),
        })
    }
}
