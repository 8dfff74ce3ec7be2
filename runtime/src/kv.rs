//! The KV cache: its storage precision ([`KvCache`]), its carved storage
//! ([`KvBufs`]) and the int8 / f16 conversions attention runs on.
//!
//! * `F32`: exact, 4 bytes per value (the default; bit-identical to the
//!   runtime before this option existed).
//! * `F16`: IEEE half, 2 bytes per value.
//! * `Q8`: int8 per head vector with one f16 scale (`absmax / 127`, round to
//!   nearest) per (layer, position, kv head): `head_dim + 2` bytes per head
//!   vector. Attention dequantizes on the fly: `q·k = s · Σ q_j k_j` and
//!   `Σ_t a_t v_t = Σ_t (a_t s_t) v_t`.
//!
//! K is stored after RoPE (and bias), V as produced; both are written once,
//! when their token is fed.
use half::f16;

/// Storage precision of the KV cache (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KvCache {
    /// f32 values (exact; the default).
    #[default]
    F32,
    /// f16 values.
    F16,
    /// int8 values with an f16 scale per head vector.
    Q8,
}

impl KvCache {
    /// Bytes one cached value takes, scales excluded.
    pub const fn value_bytes(self) -> usize {
        match self {
            KvCache::F32 => 4,
            KvCache::F16 => 2,
            KvCache::Q8 => 1,
        }
    }
    /// `"f32"`, `"f16"` or `"q8"`.
    pub const fn name(self) -> &'static str {
        match self {
            KvCache::F32 => "f32",
            KvCache::F16 => "f16",
            KvCache::Q8 => "q8",
        }
    }
}

/// K and V cache storage: the whole session's (carved by
/// [`crate::arena::Buffers::carve`]) or one layer's ([`KvBufs::layer`], what
/// [`crate::forward::block_forward_kv`] takes). Values are laid out
/// `[layer][position][kv_dim]`, Q8 scales `[layer][position][kv_head]`.
/// `new` (F16, Q8) is f32 scratch for the k then v rows of the tokens being
/// fed (`2 · max_batch · kv_dim`), stored into the cache once computed; it
/// is empty when the FFN buffers can hold them ([`crate::ArenaPlan::kv_new`]).
pub enum KvBufs<'c> {
    F32 {
        k: &'c mut [f32],
        v: &'c mut [f32],
    },
    F16 {
        k: &'c mut [f16],
        v: &'c mut [f16],
        new: &'c mut [f32],
    },
    Q8 {
        k: &'c mut [i8],
        v: &'c mut [i8],
        ks: &'c mut [f16],
        vs: &'c mut [f16],
        new: &'c mut [f32],
    },
}

impl KvBufs<'_> {
    pub fn precision(&self) -> KvCache {
        match self {
            KvBufs::F32 { .. } => KvCache::F32,
            KvBufs::F16 { .. } => KvCache::F16,
            KvBufs::Q8 { .. } => KvCache::Q8,
        }
    }

    /// Layer `l`'s part of a session's cache, with `per_layer` values
    /// (`max_seq · kv_dim`) and `per_layer_scales` (`max_seq · n_kv_heads`)
    /// per layer for each of K and V. Ranges past the end give empty slices.
    pub fn layer(&mut self, l: usize, per_layer: usize, per_layer_scales: usize) -> KvBufs<'_> {
        fn part<T>(s: &mut [T], l: usize, per: usize) -> &mut [T] {
            let lo = l.saturating_mul(per).min(s.len());
            let hi = lo.saturating_add(per).min(s.len());
            &mut s[lo..hi]
        }
        match self {
            KvBufs::F32 { k, v } => KvBufs::F32 {
                k: part(k, l, per_layer),
                v: part(v, l, per_layer),
            },
            KvBufs::F16 { k, v, new } => KvBufs::F16 {
                k: part(k, l, per_layer),
                v: part(v, l, per_layer),
                new,
            },
            KvBufs::Q8 { k, v, ks, vs, new } => KvBufs::Q8 {
                k: part(k, l, per_layer),
                v: part(v, l, per_layer),
                ks: part(ks, l, per_layer_scales),
                vs: part(vs, l, per_layer_scales),
                new,
            },
        }
    }
}

/// Quantizes one head vector `x` into `out` (same length) and returns its
/// scale: `absmax / 127` rounded up to the next f16 (so no code clamps and
/// every value is within half a step, even where f16 is subnormal), codes
/// `round(x / scale)`. An all-zero vector gets scale 0 and codes 0; NaN
/// inputs give code 0; scales past f16's range saturate at `f16::MAX` (and
/// the codes at ±127).
pub fn quantize_q8(x: &[f32], out: &mut [i8]) -> f16 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(libm::fabsf(*v)));
    let want = amax / 127.0;
    let mut s = f16::from_f32(want);
    if s.to_f32() < want {
        s = f16::from_bits(s.to_bits().saturating_add(1));
    }
    let s = s.min(f16::MAX);
    let sf = s.to_f32();
    if sf > 0.0 {
        let inv = 1.0 / sf;
        for (o, &v) in out.iter_mut().zip(x) {
            // `as` saturates (and maps NaN to 0).
            *o = libm::roundf(v * inv).clamp(-127.0, 127.0) as i8;
        }
    } else {
        out.fill(0);
    }
    s
}

/// `Σ q_j · k_j` over int8 codes (the caller multiplies by the scale).
#[inline]
pub fn dot_i8(q: &[f32], k: &[i8]) -> f32 {
    q.iter().zip(k).map(|(a, &b)| a * b as f32).sum()
}

/// `Σ q_j · k_j` over f16 values.
#[inline]
pub fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
    q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn q8_round_trip_error_is_within_half_a_step() {
        let mut seed = 7;
        for hd in [1usize, 8, 32, 64, 128] {
            for mag in [1e-6f32, 1e-3, 0.5, 3.0, 40.0, 1e4] {
                let x: [f32; 128] = core::array::from_fn(|_| lcg(&mut seed) * mag);
                let x = &x[..hd];
                let mut q = [0i8; 128];
                let s = quantize_q8(x, &mut q[..hd]).to_f32();
                let amax = x.iter().fold(0.0f32, |m, v| m.max(libm::fabsf(*v)));
                // The f16 scale is absmax/127 rounded up (2^-11 relative,
                // or one subnormal step of 2^-24).
                let want = amax / 127.0;
                assert!(s >= want && s <= want * (1.0 + 1.0 / 1024.0) + 6e-8, "{s} vs {want}");
                for (&a, &c) in x.iter().zip(&q[..hd]) {
                    let err = libm::fabsf(a - s * c as f32);
                    assert!(err <= 0.5 * s * 1.0001, "hd {hd} mag {mag}: {a} -> {c}·{s}, err {err}");
                }
                // Relative error of the whole vector: far below 1 % (where
                // the f16 scale is normal).
                let num: f32 = x.iter().zip(&q[..hd]).map(|(a, &c)| (a - s * c as f32) * (a - s * c as f32)).sum();
                let den: f32 = x.iter().map(|a| a * a).sum();
                assert!(want < 6.2e-5 || num <= den * 1e-4, "hd {hd} mag {mag}: rel err² {}", num / den);
                // The attention dot product through the codes.
                let qv: [f32; 128] = core::array::from_fn(|_| lcg(&mut seed));
                let exact: f32 = qv[..hd].iter().zip(x).map(|(a, b)| a * b).sum();
                let approx = s * dot_i8(&qv[..hd], &q[..hd]);
                let bound = 0.5 * s * qv[..hd].iter().map(|a| libm::fabsf(*a)).sum::<f32>() * 1.001 + amax * hd as f32 * 2e-7;
                assert!(libm::fabsf(exact - approx) <= bound, "{exact} vs {approx}");
            }
        }
    }

    #[test]
    fn q8_edge_cases_do_not_panic() {
        let mut q = [5i8; 4];
        assert_eq!(quantize_q8(&[0.0; 4], &mut q), f16::ZERO);
        assert_eq!(q, [0; 4]);
        let s = quantize_q8(&[1e30, -1e30, 1.0, f32::NAN], &mut q);
        assert_eq!(s, f16::MAX);
        assert_eq!(q, [127, -127, 0, 0]);
        let s = quantize_q8(&[f32::INFINITY, 1.0, 0.0, 0.0], &mut q);
        assert_eq!(s, f16::MAX);
        assert_eq!(q[0], 127);
        // The largest element maps to ±127 (the scale is rounded up by
        // less than half a step).
        let s = quantize_q8(&[0.3, -2.7, 1.0, 0.0], &mut q);
        assert_eq!(q[1], -127, "{q:?} {s}");
        // Below f16's smallest subnormal·127: still a nonzero scale.
        let s = quantize_q8(&[1e-7, -3e-7, 0.0, 0.0], &mut q);
        assert!(s > f16::ZERO && q[1] != 0, "{q:?} {s}");
    }

    #[test]
    fn f16_dot_matches_f32() {
        let mut seed = 3;
        let x: [f32; 64] = core::array::from_fn(|_| lcg(&mut seed) * 4.0);
        let qv: [f32; 64] = core::array::from_fn(|_| lcg(&mut seed));
        let h: [f16; 64] = core::array::from_fn(|i| f16::from_f32(x[i]));
        let exact: f32 = qv.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!(libm::fabsf(exact - dot_f16(&qv, &h)) < 4.0 * 64.0 * 1e-3);
    }
}
