//! `exp` for softmax, SiLU and sampling: the same bits on every target, and
//! a loop of it vectorizes.
//!
//! `libm::expf` is correctly rounded in all but rare cases, but it is a
//! branchy scalar call: with long calibration sequences the attention
//! softmax spent over half of a GPTQ run inside it. This is the classic
//! range reduction used by Cephes' `expf` (and, with other coefficients, by
//! ggml's vector `expf`): `e^x = 2^n · e^r` with `n = round(x·log2 e)` and
//! `r = x − n·ln 2` (ln 2 split in two so `n·LN2_HI` is exact), a degree-6
//! polynomial for `e^r` on `|r| ≤ ln2/2`, and `2^n` put together from its
//! exponent bits. Only IEEE adds, multiplies and bit moves, no table and no
//! branch, so the result is the same on x86, ARM, RISC-V and soft-float
//! firmware (Rust never fuses `a·b + c` on its own), and the compiler turns
//! [`exp_in_place`] into SIMD where the target has it.
//!
//! Accuracy: within 1 ulp of the true value for results ≥ 2⁻¹²⁶ (checked
//! against `f64::exp` in the tests below), gradual underflow below that,
//! 0 for `x < −104`, the largest finite float for `x ≥ 88.72`, NaN for NaN.

/// ln 2 in two parts: `LN2_HI` has 9 significant bits, so `n·LN2_HI` is exact
/// for every `|n| ≤ 2^15`.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding and subtracting it rounds to the nearest integer (ties to
/// even) for `|v| < 2²²` without a `round` call (`no_std` has none).
const ROUND: f32 = 12_582_912.0;

/// `e^x` (see the module docs for its accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // e^x underflows to 0 below −103.98 and overflows above 88.73; clamping
    // keeps n's exponent arithmetic in range (NaN passes through `clamp`).
    let x = x.clamp(-104.0, 88.722_83);
    let t = x * core::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Cephes' minimax coefficients for e^r − 1 − r over |r| ≤ ln2/2.
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let y = (p * r) * r + r + 1.0;
    // 2^n as two normal factors (n ∈ [−150, 128]), so that results near the
    // top of the range and subnormal results are both reached with one
    // final rounding. n as an integer is in t's low mantissa bits (t =
    // 1.5·2²³ + n), which, unlike a float-to-int cast, vectorizes; for a
    // NaN x the bits are arbitrary but y is NaN already.
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let half = n >> 1;
    y * pow2(half) * pow2(n - half)
}

/// `2^k` for `k ∈ [−126, 127]`, from its exponent bits.
#[inline(always)]
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// `x[i] = e^(x[i] − shift)` for every element (a loop the compiler
/// vectorizes: no call, no branch).
#[inline]
pub fn exp_in_place(x: &mut [f32], shift: f32) {
    for v in x.iter_mut() {
        *v = exp(*v - shift);
    }
}

#[cfg(test)]
mod tests {
    use super::exp;

    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
        (got as f64 - want).abs() / ulp
    }

    #[test]
    fn within_one_ulp_over_the_normal_range() {
        // every 97th float bit pattern from −87.3 to 88.7 (≈ 22 million
        // values), plus the integers and a few exact points
        let lo = (-87.33f32).to_bits();
        let mut worst = (0.0f64, 0.0f32);
        let mut check = |x: f32| {
            let e = ulps(exp(x), (x as f64).exp());
            if e > worst.0 {
                worst = (e, x);
            }
        };
        let mut b = lo;
        while b > 0x8000_0000 {
            check(f32::from_bits(b));
            b -= 97;
        }
        let mut b = 0u32;
        while f32::from_bits(b) < 88.72 {
            check(f32::from_bits(b));
            b += 97;
        }
        for i in -87..=88 {
            check(i as f32);
        }
        assert!(worst.0 <= 1.0, "{} ulp at x = {:e}", worst.0, worst.1);
    }

    #[test]
    fn edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.72).is_finite() && exp(88.72) > 3.3e38);
        assert_eq!(exp(1000.0), exp(88.722_83));
        assert!(exp(f32::INFINITY).is_finite());
        // gradual underflow: monotone and within a subnormal's ulp
        let mut prev = exp(-87.0);
        for i in 1..=170 {
            let x = -87.0 - i as f32 * 0.1;
            let (got, want) = (exp(x), (x as f64).exp());
            assert!(got <= prev, "not monotone at {x}");
            assert!((got as f64 - want).abs() <= 2.0 * 1.4e-45 + want * 1e-6, "{x}: {got:e} vs {want:e}");
            prev = got;
        }
    }

    #[test]
    fn monotone_near_zero() {
        // softmax inputs are ≤ 0: a step must never go the wrong way
        let mut prev = exp(-20.0);
        let mut x = -20.0f32;
        while x < 0.0 {
            let y = exp(x);
            assert!(y >= prev, "exp not monotone at {x:e}");
            prev = y;
            x = f32::from_bits(x.to_bits() - 1013);
        }
    }
}
