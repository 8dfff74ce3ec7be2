//! Activations quantized on the fly to 8 bits per 32-element block (the
//! llama.cpp `Q8_0`/`Q8_1` idea): integer-weight matrix products then run
//! as int8 × int8 dot products with i32 accumulation (see
//! [`crate::scalar_int`] for the reference and the numerics contract).
//!
//! Per token and block `b` of 32 activations (the last block of a row is
//! zero-padded):
//!
//! ```text
//! amax = max |x_j|   (NaN inputs are ignored)
//! d    = amax / 127            id = 1 / d   (0 unless d is normal)
//! q_j  = round_half_even(clamp(x_j · id, −127, 127))      (i8)
//! sum  = Σ q_j  (i32)          dsum = d · sum  (f32)
//! ```
//!
//! Every implementation computes exactly these values (`amax`, `d` and `id`
//! in scalar code; the products `x·id` and the rounding per lane), so the
//! codes are bit-identical on every architecture.
//!
//! Storage is carved from one caller-provided `f32` buffer (an arena slice)
//! of [`words`]`(t, cols)` elements: codes, then scales, sums and dsums,
//! then the codes again in *pair* layout for the Q4 kernels, which unpack
//! two weight blocks (32 bytes of nibbles) at once: for blocks `2p, 2p+1`
//! of a token, 64 bytes `a₂ₚ[0..16] a₂ₚ₊₁[0..16] a₂ₚ[16..32] a₂ₚ₊₁[16..32]`
//! (the low nibbles of both blocks, then the high nibbles; a missing last
//! partner is zeros).

/// Activations per block.
pub const QK: usize = 32;

/// `f32` words a buffer for `t` tokens of `cols` activations needs.
pub const fn words(t: usize, cols: usize) -> usize {
    let blocks = cols.div_ceil(QK);
    t * (blocks * QK / 4 + 3 * meta_stride(blocks) + blocks.div_ceil(2) * 16)
}

/// Per-token stride of the scales, sums and dsums: `blocks` rounded up to
/// 8, zero-padded, so kernels read them 8 at a time without a tail.
pub const fn meta_stride(blocks: usize) -> usize {
    blocks.div_ceil(8) * 8
}

/// Quantized activations of `t` tokens, `blocks` blocks each.
pub struct Q8Acts<'a> {
    pub(crate) codes: &'a mut [i8],
    pub(crate) scales: &'a mut [f32],
    pub(crate) sums: &'a mut [i32],
    pub(crate) dsums: &'a mut [f32],
    /// Pair layout (see the module docs), `t · ⌈blocks/2⌉ · 64` bytes.
    pub(crate) pairs: &'a mut [i8],
    pub(crate) t: usize,
    pub(crate) cols: usize,
    pub(crate) blocks: usize,
    /// [`meta_stride`]`(blocks)`.
    pub(crate) bs: usize,
}

impl<'a> Q8Acts<'a> {
    /// Carves storage for `t` tokens of `cols` activations from `buf`
    /// (`None` when it holds fewer than [`words`]`(t, cols)` elements).
    pub fn carve(buf: &'a mut [f32], t: usize, cols: usize) -> Option<Q8Acts<'a>> {
        let blocks = cols.div_ceil(QK);
        let bs = meta_stride(blocks);
        let nb = t.checked_mul(blocks)?;
        let nm = t.checked_mul(bs)?;
        let np = t.checked_mul(blocks.div_ceil(2))?;
        let need = (nb.checked_mul(QK / 4)?)
            .checked_add(nm.checked_mul(3)?)?
            .checked_add(np.checked_mul(16)?)?;
        if buf.len() < need || cols == 0 {
            return None;
        }
        buf[..need].fill(0.0);
        let (codes, rest) = buf[..need].split_at_mut(nb * QK / 4);
        let (scales, rest) = rest.split_at_mut(nm);
        let (sums, rest) = rest.split_at_mut(nm);
        let (dsums, pairs) = rest.split_at_mut(nm);
        Some(Q8Acts {
            codes: bytemuck::cast_slice_mut(codes),
            scales,
            sums: bytemuck::cast_slice_mut(sums),
            dsums,
            pairs: bytemuck::cast_slice_mut(pairs),
            t,
            cols,
            blocks,
            bs,
        })
    }

    pub fn tokens(&self) -> usize {
        self.t
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn blocks(&self) -> usize {
        self.blocks
    }
    /// Codes of token `i`, `blocks · 32` of them (padding codes are 0).
    pub fn codes(&self, i: usize) -> &[i8] {
        &self.codes[i * self.blocks * QK..(i + 1) * self.blocks * QK]
    }
    /// Block scales `d` of token `i`.
    pub fn scales(&self, i: usize) -> &[f32] {
        &self.scales[i * self.bs..i * self.bs + self.blocks]
    }
    /// Block code sums of token `i`.
    pub fn sums(&self, i: usize) -> &[i32] {
        &self.sums[i * self.bs..i * self.bs + self.blocks]
    }
    /// `d · sum` per block of token `i`.
    pub fn dsums(&self, i: usize) -> &[f32] {
        &self.dsums[i * self.bs..i * self.bs + self.blocks]
    }

    /// Quantizes `x` (`t` rows of `cols`) with the scalar reference;
    /// returns false (writing nothing) when `x` is too short.
    pub fn quantize_scalar(&mut self, x: &[f32]) -> bool {
        if x.len() < self.t * self.cols {
            return false;
        }
        for i in 0..self.t {
            let xr = &x[i * self.cols..(i + 1) * self.cols];
            for b in 0..self.blocks {
                let xs = &xr[b * QK..xr.len().min((b + 1) * QK)];
                let k = i * self.blocks + b;
                let km = i * self.bs + b;
                let (d, id) = block_scale(block_amax(xs));
                let q = &mut self.codes[k * QK..(k + 1) * QK];
                let mut sum = 0i32;
                for (j, o) in q.iter_mut().enumerate() {
                    *o = match xs.get(j) {
                        Some(&v) => quantize_one(v, id),
                        None => 0,
                    };
                    sum += *o as i32;
                }
                self.scales[km] = d;
                self.sums[km] = sum;
                self.dsums[km] = d * sum as f32;
            }
        }
        self.fill_pairs();
        true
    }

    /// Quantizes `x` with **one scale per token** (SmoothQuant's and
    /// LLM.int8's per-token int8: `d = amax/127` over the token's columns,
    /// every block of the token sharing it), so the integer kernels compute
    /// `d_x · s_w · Σ q_x q_w` as an int8×int8 product. Columns `j` whose
    /// bit is set in `skip` (bit `j % 32` of word `j / 32`; LLM.int8
    /// outliers; empty = none) are left out: code 0 and not part of `amax`.
    /// Returns false when `x` is too short.
    pub fn quantize_per_token(&mut self, x: &[f32], skip: &[u32]) -> bool {
        self.quantize_per_token_levels(x, skip, 127, 1.0)
    }

    /// [`Q8Acts::quantize_per_token`] on a symmetric grid of `±qmax`
    /// (`qmax` in 1..=127; 7 for int4 activations) with the scale
    /// `d = clip·amax/qmax` (`clip` in (0, 1]; values beyond `d·qmax`
    /// saturate). `qmax = 127, clip = 1` is exactly `quantize_per_token`.
    pub fn quantize_per_token_levels(&mut self, x: &[f32], skip: &[u32], qmax: i8, clip: f32) -> bool {
        if x.len() < self.t * self.cols || !(1..=127).contains(&qmax) || !(clip > 0.0 && clip <= 1.0) {
            return false;
        }
        let qm = qmax as f32;
        let skipped = |j: usize| skip.get(j / 32).is_some_and(|&w| w >> (j % 32) & 1 != 0);
        for i in 0..self.t {
            let xr = &x[i * self.cols..(i + 1) * self.cols];
            let mut amax = 0.0f32;
            for (j, &v) in xr.iter().enumerate() {
                let a = f32::from_bits(v.to_bits() & 0x7fff_ffff);
                if a > amax && !skipped(j) {
                    amax = a;
                }
            }
            let (d, id) = if qmax == 127 && clip == 1.0 {
                block_scale(amax)
            } else {
                let d = clip * amax / qm;
                (d, if d.is_normal() { 1.0 / d } else { 0.0 })
            };
            for b in 0..self.blocks {
                let k = i * self.blocks + b;
                let km = i * self.bs + b;
                let q = &mut self.codes[k * QK..(k + 1) * QK];
                let mut sum = 0i32;
                for (jj, o) in q.iter_mut().enumerate() {
                    let j = b * QK + jj;
                    *o = match xr.get(j) {
                        Some(&v) if !skipped(j) && qmax == 127 => quantize_one(v, id),
                        Some(&v) if !skipped(j) => quantize_one(v, id).clamp(-qmax, qmax),
                        _ => 0,
                    };
                    sum += *o as i32;
                }
                self.scales[km] = d;
                self.sums[km] = sum;
                self.dsums[km] = d * sum as f32;
            }
        }
        self.fill_pairs();
        true
    }

    /// Codes of token `i` in pair layout (module docs).
    pub fn pairs(&self, i: usize) -> &[i8] {
        let n = self.blocks.div_ceil(2) * 2 * QK;
        &self.pairs[i * n..(i + 1) * n]
    }

    /// Rebuilds the pair layout from the codes.
    pub(crate) fn fill_pairs(&mut self) {
        let np = self.blocks.div_ceil(2);
        for i in 0..self.t {
            for p in 0..np {
                let out = &mut self.pairs[(i * np + p) * 2 * QK..(i * np + p + 1) * 2 * QK];
                let b0 = i * self.blocks + 2 * p;
                let a0 = &self.codes[b0 * QK..(b0 + 1) * QK];
                out[..16].copy_from_slice(&a0[..16]);
                out[32..48].copy_from_slice(&a0[16..]);
                if 2 * p + 1 < self.blocks {
                    let a1 = &self.codes[(b0 + 1) * QK..(b0 + 2) * QK];
                    out[16..32].copy_from_slice(&a1[..16]);
                    out[48..].copy_from_slice(&a1[16..]);
                } else {
                    out[16..32].fill(0);
                    out[48..].fill(0);
                }
            }
        }
    }

    /// Quantizes `x` with the fastest implementation on this machine
    /// (bit-identical to [`Q8Acts::quantize_scalar`]).
    pub fn quantize(&mut self, x: &[f32]) -> bool {
        #[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
        if matches!(
            crate::implementation(),
            crate::Implementation::Avx2Fma | crate::Implementation::Avx2FmaF16c
        ) {
            if x.len() < self.t * self.cols {
                return false;
            }
            // SAFETY: AVX2 + FMA were detected; `x` holds `t·cols` floats
            // and the carved slices hold `t·blocks` blocks (by construction).
            unsafe { crate::x86_avx2_int::quantize(self, x) };
            self.fill_pairs();
            return true;
        }
        self.quantize_scalar(x)
    }
}

/// `max |x_j|`, ignoring NaN (a comparison with NaN is false).
#[inline]
pub(crate) fn block_amax(xs: &[f32]) -> f32 {
    let mut m = 0.0f32;
    for &v in xs {
        let a = f32::from_bits(v.to_bits() & 0x7fff_ffff);
        if a > m {
            m = a;
        }
    }
    m
}

/// `(d, 1/d)` for a block's `amax`; `id = 0` (all codes 0) when `d` is 0,
/// subnormal (`1/d` could overflow) or infinite.
#[inline]
pub(crate) fn block_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d.is_normal() { 1.0 / d } else { 0.0 })
}

/// One code: clamp then round half to even (`max` first so NaN → −127,
/// as `vmaxps(v, −127)` gives).
#[inline]
#[allow(clippy::manual_clamp)] // `clamp` keeps NaN; the kernels map it to −127
pub(crate) fn quantize_one(v: f32, id: f32) -> i8 {
    let c = (v * id).max(-127.0).min(127.0);
    // Adding and subtracting 1.5·2²³ rounds |c| ≤ 2²² to an integer, half
    // to even, in the default rounding mode.
    const MAGIC: f32 = 12_582_912.0;
    ((c + MAGIC) - MAGIC) as i8
}
