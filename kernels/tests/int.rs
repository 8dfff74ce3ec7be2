//! Integer weights × quantized activations: the activation quantizer is
//! bit-identical in every implementation, the scalar reference equals an
//! exact (f64) evaluation of its formula, and every SIMD implementation
//! stays within the bound of `scalar_int`'s docs.
//!
//! Run under qemu-user by `scripts/test-cross.sh` too.
use edgeq_core::quant::quantize;
use edgeq_core::{QuantSpec, Scheme, TensorView};
use edgeq_kernels::act_q8::{words, QK};
use edgeq_kernels::{available, matmul_q8_with, scalar_int, Implementation, Q8Acts};
use proptest::prelude::*;

struct Owned {
    buf: Vec<u8>,
    off: usize,
    len: usize,
    spec: QuantSpec,
    rows: u32,
    cols: u32,
}

impl Owned {
    fn new(spec: QuantSpec, rows: u32, cols: u32, src: &[f32]) -> Owned {
        let len = spec.layout(rows, cols).unwrap().total_bytes as usize;
        let buf = vec![0u8; len + 64];
        let off = buf.as_ptr().align_offset(64);
        let mut o = Owned {
            buf,
            off,
            len,
            spec,
            rows,
            cols,
        };
        let (off, len) = (o.off, o.len);
        quantize(spec, rows, cols, src, &mut o.buf[off..off + len]).unwrap();
        o
    }
    fn view(&self) -> TensorView<'_> {
        TensorView::new(self.spec, self.rows, self.cols, &self.buf[self.off..self.off + self.len]).unwrap()
    }
}

/// Deterministic pseudo-random floats (xorshift), roughly N(0, scale)-ish
/// with a few outliers.
fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if i % 97 == 13 {
                u * scale * 20.0
            } else {
                u * scale
            }
        })
        .collect()
}

fn quantized<'a>(buf: &'a mut [f32], x: &[f32], t: usize, cols: usize, scalar: bool) -> Q8Acts<'a> {
    let mut a = Q8Acts::carve(buf, t, cols).unwrap();
    assert!(if scalar { a.quantize_scalar(x) } else { a.quantize(x) });
    a
}

fn same_acts(a: &Q8Acts<'_>, b: &Q8Acts<'_>) {
    for i in 0..a.tokens() {
        assert_eq!(a.codes(i), b.codes(i), "codes of token {i}");
        assert_eq!(a.sums(i), b.sums(i));
        assert_eq!(a.pairs(i), b.pairs(i), "pair layout of token {i}");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a.scales(i)), bits(b.scales(i)));
        assert_eq!(bits(a.dsums(i)), bits(b.dsums(i)));
    }
}

#[test]
fn quantizer_rounds_half_to_even_and_clamps() {
    // amax 127 → d = 1, id = 1: codes are x rounded half to even.
    let mut x = vec![0.0f32; 40];
    x[0] = 127.0;
    x[1] = 63.5;
    x[2] = 62.5;
    x[3] = -0.5;
    x[4] = -1.5;
    x[5] = f32::NAN;
    x[6] = -127.0;
    x[32] = 1e-40; // subnormal block: all codes 0
    x[33] = -1e-40;
    let mut buf = vec![0.0f32; words(1, 40)];
    let a = quantized(&mut buf, &x, 1, 40, true);
    assert_eq!(&a.codes(0)[..7], &[127, 64, 62, 0, -2, -127, -127]);
    assert_eq!(a.scales(0)[0], 1.0);
    assert_eq!(a.sums(0)[0], 127 + 64 + 62 - 2 - 127 - 127);
    assert!(a.codes(0)[32..].iter().all(|&q| q == 0));
    assert_eq!(a.sums(0)[1], 0);
}

#[test]
fn quantizer_matches_scalar_on_edge_cases() {
    let cols = 200;
    let mut x = rand_vec(3 * cols, 7, 2.0);
    x[5] = f32::INFINITY;
    x[40] = f32::NAN;
    x[70] = -0.0;
    for v in &mut x[96..128] {
        *v = 0.0;
    }
    for (k, v) in x[128..160].iter_mut().enumerate() {
        *v = (k as f32 - 16.0) + 0.5; // ties after scaling by id = 127/31.5·…
    }
    x[300] = 3.4e38;
    x[301] = -3.4e38;
    let (mut b1, mut b2) = (vec![0.0; words(3, cols)], vec![0.0; words(3, cols)]);
    let a = quantized(&mut b1, &x, 3, cols, true);
    let b = quantized(&mut b2, &x, 3, cols, false);
    same_acts(&a, &b);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn quantizer_matches_scalar(x in proptest::collection::vec(-1e4f32..1e4, 1..300)) {
        let cols = x.len();
        let (mut b1, mut b2) = (vec![0.0; words(1, cols)], vec![0.0; words(1, cols)]);
        let a = quantized(&mut b1, &x, 1, cols, true);
        let b = quantized(&mut b2, &x, 1, cols, false);
        same_acts(&a, &b);
        // Codes reconstruct x within half a step per element.
        for (j, &v) in x.iter().enumerate() {
            let d = a.scales(0)[j / QK];
            prop_assert!((a.codes(0)[j] as f32 * d - v).abs() <= 0.5 * d * (1.0 + 1e-5) + 1e-30);
        }
    }
}

fn specs() -> Vec<QuantSpec> {
    let mut v = Vec::new();
    for s in [Scheme::Q4Sym, Scheme::Q4Asym, Scheme::Q8Sym, Scheme::Q8Asym] {
        for g in [32u32, 64, 128] {
            v.push(QuantSpec::per_group(s, g));
        }
        v.push(QuantSpec::per_channel(s));
    }
    v
}

/// Exact value of the reference formula (f64) and the bound's magnitude
/// `Σ|c_b|·Σ_j(|q_j|+128)·|a_j| + Σ|m·dsum|`, for row `r`, token `i`.
fn exact(w: &TensorView<'_>, a: &Q8Acts<'_>, r: usize, i: usize) -> (f64, f64, usize) {
    let s = w.scheme();
    let bpg = w.layout.group_len as usize / QK;
    let wb = QK * s.code_bits() as usize / 8;
    let (codes, scales, mins) = (w.row_codes(r), w.row_scales_f16(r), w.row_mins(r));
    let (mut y, mut mag) = (0.0f64, 0.0f64);
    for b in 0..a.blocks() {
        let g = b / bpg;
        let c = scales[g].to_f32() * a.scales(i)[b]; // the f32 product, as the kernels
        let blk = &codes[b * wb..(b + 1) * wb];
        let ac = &a.codes(i)[b * QK..(b + 1) * QK];
        let isum = scalar_int::block_isum(s, blk, ac);
        let raw: f64 = (0..QK)
            .map(|j| {
                let q = match s {
                    Scheme::Q4Sym | Scheme::Q4Asym => (if j < 16 { blk[j] & 15 } else { blk[j - 16] >> 4 }) as f64,
                    Scheme::Q8Sym => (blk[j] as i8) as f64,
                    _ => blk[j] as f64,
                };
                (q.abs() + 128.0) * (ac[j] as f64).abs()
            })
            .sum();
        y += c as f64 * isum as f64;
        mag += (c as f64).abs() * raw;
        if s.is_asym() {
            let t = mins[g].to_f32() * a.dsums(i)[b];
            y += t as f64;
            mag += (t as f64).abs();
        }
    }
    (y, mag, 33 * a.blocks())
}

fn check_all(spec: QuantSpec, rows: usize, cols: usize, t: usize, seed: u64) {
    let wsrc = rand_vec(rows * cols, seed, 0.1);
    let x = rand_vec(t * cols, seed + 1, 1.0);
    let own = Owned::new(spec, rows as u32, cols as u32, &wsrc);
    let w = own.view();
    let mut buf = vec![0.0; words(t, cols)];
    let a = quantized(&mut buf, &x, t, cols, false);
    let sentinel = f32::from_bits(0x7fc0_1234);
    let range = 1..rows.saturating_sub(1).max(1);
    let mut y_ref = vec![sentinel; t * rows];
    scalar_int::matmul(&mut y_ref, &w, &a, range.clone());
    let u = f64::powi(2.0, -24);
    for r in 0..rows {
        for i in 0..t {
            let got = y_ref[i * rows + r];
            if !range.contains(&r) {
                assert_eq!(got.to_bits(), sentinel.to_bits(), "row {r} outside the range was written");
                continue;
            }
            let (e, mag, n) = exact(&w, &a, r, i);
            let gamma = n as f64 * u / (1.0 - n as f64 * u);
            assert!(
                (got as f64 - e).abs() <= gamma * mag + 1e-30,
                "{spec:?} reference r{r} t{i}: {got} vs exact {e}"
            );
        }
    }
    for imp in available() {
        let mut y = vec![sentinel; t * rows];
        assert!(matmul_q8_with(imp, &mut y, &w, &a, range.clone()));
        for r in 0..rows {
            for i in 0..t {
                let (got, want) = (y[i * rows + r], y_ref[i * rows + r]);
                if !range.contains(&r) {
                    assert_eq!(got.to_bits(), sentinel.to_bits());
                    continue;
                }
                let (_, mag, n) = exact(&w, &a, r, i);
                let gamma = n as f64 * u / (1.0 - n as f64 * u);
                let tol = 2.0 * gamma * mag + n as f64 * f64::powi(2.0, -148);
                assert!(
                    (got as f64 - want as f64).abs() <= tol,
                    "{} {spec:?} {rows}x{cols} t={t} r{r} i{i}: {got} vs ref {want} (tol {tol:e})",
                    imp.name()
                );
            }
        }
        // A token's result does not depend on the batch it is in: the same
        // bits in a batch of two (the last two tokens) as in the batch of
        // t, and alone, except where the x86 kernels (8-row tiles) and the
        // aarch64 i8mm ones (2 × 2 smmla tiles) run batches of two or more
        // (prefill) differently from single tokens row by row
        // (decode): there a lone token may round differently, within the
        // same bound (checked by the t = 1 shapes).
        // Nor does a row's result depend on the rows computed with it
        // (threads split the range anywhere, and a kernel that shares work
        // between rows must not change a row's bits): each row alone gives
        // the bits it has in the range. (For prefill a tiled kernel runs a
        // lone row by the row kernel instead of its tile.)
        let tiled = imp.name().starts_with("x86_64") || imp.name() == "aarch64-neon-i8mm";
        if t == 1 || !tiled {
            for r in range.clone() {
                let mut y1 = vec![sentinel; t * rows];
                assert!(matmul_q8_with(imp, &mut y1, &w, &a, r..r + 1));
                for i in 0..t {
                    assert_eq!(
                        y1[i * rows + r].to_bits(),
                        y[i * rows + r].to_bits(),
                        "{} {spec:?} {rows}x{cols} t={t}: row {r} alone",
                        imp.name()
                    );
                }
            }
        }
        if t > 1 {
            let cases: &[usize] = if tiled { &[2] } else { &[1, 2] };
            for &n in cases {
                let mut bn = vec![0.0; words(n, cols)];
                let last = quantized(&mut bn, &x[(t - n) * cols..], n, cols, false);
                let mut yn = vec![sentinel; n * rows];
                assert!(matmul_q8_with(imp, &mut yn, &w, &last, range.clone()));
                for k in 0..n {
                    for r in range.clone() {
                        assert_eq!(
                            yn[k * rows + r].to_bits(),
                            y[(t - n + k) * rows + r].to_bits(),
                            "{} {spec:?} {rows}x{cols}: token {} of {t} in a batch of {n}, row {r}",
                            imp.name(),
                            t - n + k
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_implementation_within_bound_of_reference() {
    eprintln!("implementations: {:?}", available().map(Implementation::name).collect::<Vec<_>>());
    for spec in specs() {
        // Rows 17 and up cover the x86 Q4 kernels' 8-row tiles (aligned to
        // multiples of 8, with rows before and after them in the range
        // 1..rows-1), tokens 2..9 their passes of 4 and remainders.
        for (rows, cols, t) in [
            (5, 32, 1),
            (7, 64, 3),
            (4, 100, 5),
            (9, 256, 4),
            (3, 576, 2),
            (2, 1000, 1),
            (17, 64, 2),
            (24, 100, 9),
            (37, 576, 5),
            (40, 1000, 3),
            (33, 256, 1),
        ] {
            if spec.granularity == edgeq_core::Granularity::PerGroup && cols < spec.group as usize && cols % 32 != 0 {
                continue;
            }
            check_all(spec, rows, cols, t, (rows * cols + t) as u64);
        }
    }
}

#[test]
fn close_to_float_path() {
    // The quantized-activation product stays close to the f32-activation one
    // (relative error of a few 1e-3 for 8-bit activations).
    let (rows, cols) = (64, 576);
    for spec in specs() {
        let own = Owned::new(spec, rows as u32, cols as u32, &rand_vec(rows * cols, 3, 0.1));
        let w = own.view();
        let x = rand_vec(cols, 4, 1.0);
        let mut buf = vec![0.0; words(1, cols)];
        let a = quantized(&mut buf, &x, 1, cols, false);
        let (mut yq, mut yf, mut scratch) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; cols]);
        edgeq_kernels::matmul_q8(&mut yq, &w, &a, 0..rows);
        edgeq_kernels::matmul(&mut yf, &w, &x, 1, 0..rows, &mut scratch);
        let num: f32 = yq.iter().zip(&yf).map(|(a, b)| (a - b) * (a - b)).sum();
        let den: f32 = yf.iter().map(|b| b * b).sum();
        assert!(num / den < 1e-4, "{spec:?}: relative squared error {}", num / den);
    }
}

#[test]
fn rejects_mismatched_arguments() {
    let own = Owned::new(QuantSpec::per_group(Scheme::Q4Sym, 32), 4, 64, &rand_vec(256, 1, 0.1));
    let w = own.view();
    let mut buf = vec![0.0; words(1, 96)];
    let a = quantized(&mut buf, &rand_vec(96, 2, 1.0), 1, 96, false);
    let mut y = vec![7.0; 4];
    assert!(
        !matmul_q8_with(Implementation::Scalar, &mut y, &w, &a, 0..4),
        "cols mismatch must be refused"
    );
    assert!(y.iter().all(|&v| v == 7.0));
    assert!(Q8Acts::carve(&mut [0.0; 3], 1, 64).is_none());
    let f = Owned::new(QuantSpec::float(Scheme::F32), 2, 32, &[0.5; 64]);
    assert!(!scalar_int::supported(&f.view()));
}

/// The largest integer sums the kernels can meet: every weight code at 15
/// (or 0) and every activation code at ±127, so each block's products are
/// at the i16 bound the x86 Q4 tiles rely on (8 × 2·15·127 = 30480), with
/// mixed signs per 4-element chunk too. Exact in every implementation
/// (integer sums of whole blocks, then the same float formula), so they
/// are compared with the f64 value of the formula.
#[test]
fn extreme_codes_stay_exact() {
    let (rows, cols) = (24usize, 256usize);
    for scheme in [Scheme::Q4Sym, Scheme::Q4Asym, Scheme::Q8Sym, Scheme::Q8Asym] {
        for byte in [0xffu8, 0x00, 0x0f, 0xf0, 0x80, 0x7f] {
            let spec = QuantSpec::per_group(scheme, 32);
            let mut own = Owned::new(spec, rows as u32, cols as u32, &rand_vec(rows * cols, 3, 0.1));
            let (off, codes) = (own.off, own.spec.layout(rows as u32, cols as u32).unwrap().codes_bytes as usize);
            own.buf[off..off + codes].fill(byte);
            let w = own.view();
            for pattern in 0..3usize {
                let t = 5;
                // all +max, all -max, and signs alternating every 4 codes
                let x: Vec<f32> = (0..t * cols)
                    .map(|j| match pattern {
                        0 => 1.0,
                        1 => -1.0,
                        _ => [1.0, -1.0][(j / 4) % 2],
                    })
                    .collect();
                let mut buf = vec![0.0; words(t, cols)];
                let a = quantized(&mut buf, &x, t, cols, false);
                assert!(a.codes(0).iter().all(|&c| c.abs() == 127));
                for imp in available() {
                    let mut y = vec![0.0; t * rows];
                    assert!(matmul_q8_with(imp, &mut y, &w, &a, 0..rows));
                    for i in 0..t {
                        for r in 0..rows {
                            let (e, mag, n) = exact(&w, &a, r, i);
                            let gamma = n as f64 * f64::powi(2.0, -24);
                            let got = y[i * rows + r] as f64;
                            assert!(
                                (got - e).abs() <= gamma * mag + 1e-30,
                                "{} {scheme:?} codes {byte:#04x} pattern {pattern} r{r} t{i}: {got} vs {e}",
                                imp.name()
                            );
                        }
                    }
                }
            }
        }
    }
}
