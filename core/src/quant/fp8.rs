//! FP8 (OCP 8-bit floating point): E4M3 ("fn": no infinities, max 448,
//! NaN = S.1111.111) and E5M2 (IEEE-like, max 57344, infinities and NaNs).
//! Conversion from f32 is saturating round-to-nearest-even: finite values
//! beyond the largest normal, and infinities, become ±max; NaN stays NaN.
use crate::scheme::{Granularity, QuantSpec, Scheme, TensorLayout};

/// Parameters of an FP8 format.
#[derive(Debug, Clone, Copy)]
pub struct Fp8Format {
    pub mbits: u32,
    pub bias: i32,
    /// Largest finite value.
    pub max: f32,
    /// Code (without sign) of the largest finite value.
    pub max_code: u8,
    pub nan_code: u8,
    /// E5M2 has infinities (exponent all ones, mantissa 0).
    pub has_inf: bool,
}

pub const E4M3: Fp8Format = Fp8Format {
    mbits: 3,
    bias: 7,
    max: 448.0,
    max_code: 0x7E,
    nan_code: 0x7F,
    has_inf: false,
};
pub const E5M2: Fp8Format = Fp8Format {
    mbits: 2,
    bias: 15,
    max: 57344.0,
    max_code: 0x7B,
    nan_code: 0x7F,
    has_inf: true,
};

pub fn format_of(s: Scheme) -> Fp8Format {
    if s == Scheme::Fp8E5M2 {
        E5M2
    } else {
        E4M3
    }
}

/// f32 → FP8, saturating, round to nearest even.
pub fn encode(f: &Fp8Format, x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return sign | f.nan_code;
    }
    let a = x.abs();
    if a >= f.max {
        return sign | f.max_code;
    }
    let bits = a.to_bits();
    let e = ((bits >> 23) & 0xFF) as i32 - 127;
    if e == -127 {
        // zero or f32 subnormal: far below FP8's smallest subnormal
        return sign;
    }
    let emin = 1 - f.bias;
    let m = f.mbits as i32;
    let code = if e < emin {
        // subnormal (or rounds up into the smallest normal, which the code
        // arithmetic handles since code = q works across that boundary)
        libm::rintf(libm::scalbnf(a, m - emin)) as u32
    } else {
        let q = libm::rintf(libm::scalbnf(a, m - e)) as u32; // in [2^m, 2^(m+1)]
        let (e, q) = if q == 1 << (m + 1) { (e + 1, 1 << m) } else { (e, q) };
        (((e + f.bias) as u32) << m) | (q - (1 << m))
    };
    let code = code.min(f.max_code as u32) as u8;
    sign | code
}

/// FP8 → f32 (exact).
pub fn decode(f: &Fp8Format, c: u8) -> f32 {
    let sign = if c & 0x80 != 0 { -1.0 } else { 1.0 };
    let m = f.mbits;
    let e = ((c & 0x7F) >> m) as i32;
    let mant = (c & ((1 << m) - 1)) as f32;
    let emax_field = (1i32 << (7 - m)) - 1;
    if f.has_inf && e == emax_field {
        return if mant == 0.0 { sign * f32::INFINITY } else { f32::NAN };
    }
    if !f.has_inf && (c & 0x7F) == f.nan_code {
        return f32::NAN;
    }
    if e == 0 {
        sign * libm::scalbnf(mant, 1 - f.bias - m as i32)
    } else {
        sign * libm::scalbnf(1.0 + mant / (1 << m) as f32, e - f.bias)
    }
}

/// 2^k for |k| < 126, from its f32 bit pattern (exact).
const fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// Builds the 256-entry decode table of a format at compile time: the same
/// values as [`decode`] (a test checks all 256 codes of both formats), built
/// from exact power-of-two multiplications.
const fn table(f: Fp8Format) -> [f32; 256] {
    let mut t = [0f32; 256];
    let m = f.mbits;
    let emax_field = (1i32 << (7 - m)) - 1;
    let mut c = 0usize;
    while c < 256 {
        let sign = if c & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let e = ((c & 0x7F) >> m) as i32;
        let mant = (c & ((1 << m) - 1)) as f32;
        t[c] = if f.has_inf && e == emax_field {
            if mant == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        } else if !f.has_inf && (c & 0x7F) as u8 == f.nan_code {
            f32::NAN
        } else if e == 0 {
            sign * (mant * pow2(1 - f.bias - m as i32))
        } else {
            sign * ((1.0 + mant / (1 << m) as f32) * pow2(e - f.bias))
        };
        c += 1;
    }
    t
}

/// Every E4M3 code's value (index = code).
pub static E4M3_TABLE: [f32; 256] = table(E4M3);
/// Every E5M2 code's value (index = code).
pub static E5M2_TABLE: [f32; 256] = table(E5M2);

/// The decode table of an FP8 scheme.
pub fn table_of(s: Scheme) -> &'static [f32; 256] {
    if s == Scheme::Fp8E5M2 {
        &E5M2_TABLE
    } else {
        &E4M3_TABLE
    }
}

pub fn decode_e4m3(c: u8) -> f32 {
    E4M3_TABLE[c as usize]
}
pub fn decode_e5m2(c: u8) -> f32 {
    E5M2_TABLE[c as usize]
}
pub fn decoder(s: Scheme) -> fn(u8) -> f32 {
    if s == Scheme::Fp8E5M2 {
        decode_e5m2
    } else {
        decode_e4m3
    }
}

/// Scale for a set of values: amax / max (1 when all are zero), never
/// below the smallest normal f32 (so x/scale cannot be 0/0).
pub fn scale_for(f: &Fp8Format, amax: f32) -> f32 {
    if amax > 0.0 {
        (amax / f.max).max(f32::MIN_POSITIVE)
    } else {
        1.0
    }
}

/// Dynamic FP8 E4M3 activation quantization, in place: each run of
/// `group` consecutive values of `x` (a token, or a 128-group of one) is
/// replaced by `decode(encode(v / s)) · s`, `s = amax/448`
/// ([`scale_for`]), the value an FP8×FP8 tensor core would see. NaN stays
/// NaN; a group of zeros stays zero.
pub fn fake_quant_e4m3(x: &mut [f32], group: usize) {
    let table = table_of(Scheme::Fp8E4M3);
    for g in x.chunks_mut(group.max(1)) {
        let amax = g.iter().fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
        let s = scale_for(&E4M3, amax);
        for v in g.iter_mut() {
            *v = table[encode(&E4M3, *v / s) as usize] * s;
        }
    }
}

pub(super) fn quantize(spec: QuantSpec, l: &TensorLayout, src: &[f32], out: &mut [u8]) {
    let f = format_of(spec.scheme);
    let (rows, cols) = (l.rows as usize, l.cols as usize);
    let put_scale = |i: usize, s: f32, out: &mut [u8]| {
        let o = l.scales_offset as usize + 4 * i;
        out[o..o + 4].copy_from_slice(&s.to_le_bytes());
    };
    let amax = |r0: usize, r1: usize, c0: usize, c1: usize| {
        let mut m = 0.0f32;
        for r in r0..r1 {
            for &v in &src[r * cols + c0..r * cols + c1] {
                m = m.max(v.abs());
            }
        }
        m
    };
    let encode_tile = |r0: usize, r1: usize, c0: usize, c1: usize, s: f32, out: &mut [u8]| {
        for r in r0..r1 {
            for c in c0..c1 {
                out[r * cols + c] = encode(&f, src[r * cols + c] / s);
            }
        }
    };
    match spec.granularity {
        Granularity::PerTensor => {
            let s = scale_for(&f, amax(0, rows, 0, cols));
            put_scale(0, s, out);
            encode_tile(0, rows, 0, cols, s, out);
        }
        Granularity::PerChannel => {
            for r in 0..rows {
                let s = scale_for(&f, amax(r, r + 1, 0, cols));
                put_scale(r, s, out);
                encode_tile(r, r + 1, 0, cols, s, out);
            }
        }
        _ => {
            let b = spec.group as usize;
            let tiles_per_row = cols.div_ceil(b);
            for tr in 0..rows.div_ceil(b) {
                for tc in 0..tiles_per_row {
                    let (r0, r1) = (tr * b, ((tr + 1) * b).min(rows));
                    let (c0, c1) = (tc * b, ((tc + 1) * b).min(cols));
                    let s = scale_for(&f, amax(r0, r1, c0, c1));
                    put_scale(tr * tiles_per_row + tc, s, out);
                    encode_tile(r0, r1, c0, c1, s, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compile-time tables hold exactly what `decode` computes, for all
    /// 256 codes of both formats.
    #[test]
    fn tables_equal_decode() {
        for (f, t) in [(E4M3, &E4M3_TABLE), (E5M2, &E5M2_TABLE)] {
            for c in 0..=255u8 {
                let (a, b) = (decode(&f, c), t[c as usize]);
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "code {c:#04x}: {a} vs {b}"
                );
            }
        }
        assert_eq!(
            (E4M3_TABLE[0x7E], E4M3_TABLE[0x01], E5M2_TABLE[0x7B]),
            (448.0, 1.0 / 512.0, 57344.0)
        );
    }

    /// Every one of the 256 codes decodes and re-encodes to itself (NaNs to NaN).
    #[test]
    fn all_codes_round_trip() {
        for f in [E4M3, E5M2] {
            for c in 0..=255u8 {
                let v = decode(&f, c);
                if v.is_nan() {
                    assert!(decode(&f, encode(&f, v)).is_nan());
                } else if v.is_infinite() {
                    assert_eq!(encode(&f, v) & 0x7F, f.max_code, "inf saturates");
                } else {
                    assert_eq!(encode(&f, v), c, "code {c:#04x} value {v}");
                }
            }
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(decode(&E4M3, 0x7E), 448.0);
        assert_eq!(decode(&E4M3, 0x01), 1.0 / 512.0); // 2^-9
        assert_eq!(decode(&E5M2, 0x7B), 57344.0);
        assert_eq!(decode(&E5M2, 0x01), 1.0 / 65536.0); // 2^-16
        assert_eq!(decode(&E4M3, 0x38), 1.0);
        assert_eq!(decode(&E5M2, 0x3C), 1.0);
        assert_eq!(encode(&E4M3, 1e9), 0x7E);
        assert_eq!(encode(&E4M3, -1e9), 0xFE);
        assert_eq!(encode(&E5M2, f32::INFINITY), 0x7B);
    }

    /// Midpoints between neighbouring codes round to the even code.
    #[test]
    fn ties_to_even() {
        for f in [E4M3, E5M2] {
            for c in 0..f.max_code {
                let (a, b) = (decode(&f, c), decode(&f, c + 1));
                let mid = (a as f64 + b as f64) / 2.0;
                let mid = mid as f32;
                let want = if c % 2 == 0 { c } else { c + 1 };
                assert_eq!(encode(&f, mid), want, "between {c:#x} and {:#x}", c + 1);
                // just above/below the midpoint
                assert_eq!(encode(&f, f32::from_bits(mid.to_bits() - 1)), c);
                assert_eq!(encode(&f, f32::from_bits(mid.to_bits() + 1)), c + 1);
            }
        }
    }
}
