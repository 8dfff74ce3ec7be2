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

/// Per token: its rows of scales, sums and dsums (`bs` = [`meta_stride`]).
#[allow(clippy::type_complexity)]
fn token_meta<'s>(
    scales: &'s mut [f32],
    sums: &'s mut [i32],
    dsums: &'s mut [f32],
    bs: usize,
) -> impl Iterator<Item = ((&'s mut [f32], &'s mut [i32]), &'s mut [f32])> {
    scales
        .chunks_exact_mut(bs)
        .zip(sums.chunks_exact_mut(bs))
        .zip(dsums.chunks_exact_mut(bs))
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
        let buf = buf.get_mut(..need)?;
        buf.fill(0.0);
        let (codes, rest) = buf.split_at_mut_checked(nb * QK / 4)?;
        let (scales, rest) = rest.split_at_mut_checked(nm)?;
        let (sums, rest) = rest.split_at_mut_checked(nm)?;
        let (dsums, pairs) = rest.split_at_mut_checked(nm)?;
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
    // The accessors below are empty for a token past `t` (no index can
    // fail: the bare-metal C API's link is checked to hold no panic paths).

    /// Codes of token `i`, `blocks · 32` of them (padding codes are 0).
    pub fn codes(&self, i: usize) -> &[i8] {
        self.codes.get(i * self.blocks * QK..(i + 1) * self.blocks * QK).unwrap_or(&[])
    }
    /// Block scales `d` of token `i`.
    pub fn scales(&self, i: usize) -> &[f32] {
        self.scales.get(i * self.bs..i * self.bs + self.blocks).unwrap_or(&[])
    }
    /// Block code sums of token `i`.
    pub fn sums(&self, i: usize) -> &[i32] {
        self.sums.get(i * self.bs..i * self.bs + self.blocks).unwrap_or(&[])
    }
    /// `d · sum` per block of token `i`.
    pub fn dsums(&self, i: usize) -> &[f32] {
        self.dsums.get(i * self.bs..i * self.bs + self.blocks).unwrap_or(&[])
    }

    /// Quantizes `x` (`t` rows of `cols`) with the scalar reference;
    /// returns false (writing nothing) when `x` is too short.
    pub fn quantize_scalar(&mut self, x: &[f32]) -> bool {
        let (cols, blocks, bs) = (self.cols.max(1), self.blocks, self.bs.max(1));
        if x.len() < self.t * cols {
            return false;
        }
        let codes = self.codes.chunks_exact_mut(QK);
        let meta = token_meta(self.scales, self.sums, self.dsums, bs);
        let mut codes = codes.take(self.t * blocks);
        for (xr, ((scales, sums), dsums)) in x.chunks_exact(cols).zip(meta).take(self.t) {
            let meta = scales.iter_mut().zip(sums.iter_mut()).zip(dsums.iter_mut());
            for ((xs, q), ((scale, sum), dsum)) in xr.chunks(QK).zip(codes.by_ref()).zip(meta) {
                let (d, id) = block_scale(block_amax(xs));
                let mut s = 0i32;
                for (j, o) in q.iter_mut().enumerate() {
                    *o = match xs.get(j) {
                        Some(&v) => quantize_one(v, id),
                        None => 0,
                    };
                    s += *o as i32;
                }
                (*scale, *sum, *dsum) = (d, s, d * s as f32);
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
        let (cols, blocks, bs) = (self.cols.max(1), self.blocks, self.bs.max(1));
        if x.len() < self.t * cols || !(1..=127).contains(&qmax) || !(clip > 0.0 && clip <= 1.0) {
            return false;
        }
        let qm = qmax as f32;
        let skipped = |j: usize| skip.get(j / 32).is_some_and(|&w| w >> (j % 32) & 1 != 0);
        let mut codes = self.codes.chunks_exact_mut(QK).take(self.t * blocks);
        let meta = token_meta(self.scales, self.sums, self.dsums, bs);
        for (xr, ((scales, sums), dsums)) in x.chunks_exact(cols).zip(meta).take(self.t) {
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
            let meta = scales.iter_mut().zip(sums.iter_mut()).zip(dsums.iter_mut());
            for (b, (q, ((scale, sum), dsum))) in codes.by_ref().zip(meta).take(blocks).enumerate() {
                let mut s = 0i32;
                for (jj, o) in q.iter_mut().enumerate() {
                    let j = b * QK + jj;
                    *o = match xr.get(j) {
                        Some(&v) if !skipped(j) && qmax == 127 => quantize_one(v, id),
                        Some(&v) if !skipped(j) => quantize_one(v, id).clamp(-qmax, qmax),
                        _ => 0,
                    };
                    s += *o as i32;
                }
                (*scale, *sum, *dsum) = (d, s, d * s as f32);
            }
        }
        self.fill_pairs();
        true
    }

    /// Codes of token `i` in pair layout (module docs).
    pub fn pairs(&self, i: usize) -> &[i8] {
        let n = self.blocks.div_ceil(2) * 2 * QK;
        self.pairs.get(i * n..(i + 1) * n).unwrap_or(&[])
    }

    /// Rebuilds the pair layout from the codes.
    pub(crate) fn fill_pairs(&mut self) {
        let blocks = self.blocks.max(1);
        let per_token = blocks.div_ceil(2) * 2 * QK;
        let tokens = self.codes.chunks_exact(blocks * QK).zip(self.pairs.chunks_exact_mut(per_token));
        for (codes, pairs) in tokens.take(self.t) {
            for (out, a) in pairs.chunks_exact_mut(2 * QK).zip(codes.chunks(2 * QK)) {
                let Ok(out) = <&mut [i8; 2 * QK]>::try_from(out) else { continue };
                let mut b = [[0i8; QK]; 2]; // a missing partner stays zeros
                for (dst, src) in b.iter_mut().zip(a.chunks_exact(QK)) {
                    dst.copy_from_slice(src);
                }
                let [a0, a1] = b;
                out[..16].copy_from_slice(&a0[..16]);
                out[16..32].copy_from_slice(&a1[..16]);
                out[32..48].copy_from_slice(&a0[16..]);
                out[48..].copy_from_slice(&a1[16..]);
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
