//! The dispatched SIMD kernels against the scalar reference: the error
//! bound of the crate docs (|y_simd − y_ref| ≤ 2·γ_cols·Σ|w·x| + cols·2⁻¹⁴⁸),
//! bit-exact dequantization (one-hot activations), bit-identical results
//! for a token whatever the batch, untouched rows outside the range.
//!
//! Run under qemu-user by `scripts/test-cross.sh`; set `EDGEQ_EXPECT_IMPL`
//! to the implementation name a run must dispatch to.
use edgeq_core::quant::quantize;
use edgeq_core::tensor::Scales;
use edgeq_core::{QuantSpec, Scheme, TensorView};
use edgeq_kernels::{implementation, matmul, scalar};
use proptest::prelude::*;

/// A quantized tensor in a 64-byte-aligned buffer.
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
        quantize(spec, rows, cols, src, o.bytes_mut()).unwrap();
        o
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
    fn view(&self) -> TensorView<'_> {
        TensorView::new(self.spec, self.rows, self.cols, &self.buf[self.off..self.off + self.len]).unwrap()
    }
}

const SENTINEL: u32 = 0x7fc0_1234;

/// Runs both implementations and checks every output of the range against
/// the bound, the rest untouched; returns the SIMD outputs.
fn check(w: &TensorView<'_>, x: &[f32], t: usize, rows: core::ops::Range<usize>) -> Vec<f32> {
    let (n_rows, cols) = (w.rows(), w.cols());
    let mut y_ref = vec![f32::from_bits(SENTINEL); t * n_rows];
    let mut y = y_ref.clone();
    let mut scratch = vec![0.0f32; cols];
    scalar::matmul(&mut y_ref, w, x, t, rows.clone(), &mut scratch);
    matmul(&mut y, w, x, t, rows.clone(), &mut scratch);
    let mut row = vec![0.0f32; cols];
    let u = f64::powi(2.0, -24);
    // FP8 kernels scale once per region after the sum (crate docs): one more
    // rounding per term, and underflow in the unscaled products.
    let (n, tiny) = match w.scales {
        Scales::F32(s) if w.scheme().is_fp8() => (
            cols as f64 + 1.0,
            f64::powi(2.0, -148) * s.iter().fold(1.0f64, |m, &v| m.max(256.0 * (v as f64).abs())),
        ),
        _ => (cols as f64, f64::powi(2.0, -148)),
    };
    let gamma = n * u / (1.0 - n * u);
    for r in 0..n_rows {
        w.dequantize_row(r, &mut row);
        for i in 0..t {
            let k = i * n_rows + r;
            if !rows.contains(&r) {
                assert_eq!(y[k].to_bits(), SENTINEL, "row {r} outside range written");
                continue;
            }
            let xi = &x[i * cols..(i + 1) * cols];
            let mag: f64 = row.iter().zip(xi).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            let bound = 2.0 * gamma * mag + n * tiny;
            let (a, b) = (y[k], y_ref[k]);
            assert!(
                (a as f64 - b as f64).abs() <= bound,
                "{:?} {}x{} row {r} token {i}: simd {a:e} ref {b:e} diff {:e} > bound {bound:e} ({})",
                w.spec,
                n_rows,
                cols,
                (a as f64 - b as f64).abs(),
                implementation().name()
            );
        }
    }
    y
}

/// Token `i` alone gives the same bits as in the batch.
fn check_batch_independent(w: &TensorView<'_>, x: &[f32], t: usize, y_batch: &[f32], rows: core::ops::Range<usize>) {
    let (n_rows, cols) = (w.rows(), w.cols());
    let mut scratch = vec![0.0f32; cols];
    for i in 0..t {
        let mut y1 = vec![0.0f32; n_rows];
        matmul(&mut y1, w, &x[i * cols..(i + 1) * cols], 1, rows.clone(), &mut scratch);
        for r in rows.clone() {
            assert_eq!(
                y1[r].to_bits(),
                y_batch[i * n_rows + r].to_bits(),
                "token {i} row {r}: batch of {t} differs from t = 1"
            );
        }
    }
}

fn spec_of(scheme: Scheme, group: u32) -> QuantSpec {
    if scheme.is_int() {
        if group == 0 {
            QuantSpec::per_channel(scheme)
        } else {
            QuantSpec::per_group(scheme, group)
        }
    } else if scheme.is_fp8() {
        // group 0: per channel; 1: per tensor; otherwise group×group blocks
        // (a block edge that is not a multiple of 32 takes the scalar path).
        let granularity = match group {
            0 => edgeq_core::Granularity::PerChannel,
            1 => edgeq_core::Granularity::PerTensor,
            _ => edgeq_core::Granularity::Block,
        };
        QuantSpec {
            scheme,
            granularity,
            group: if group > 1 { group } else { 0 },
        }
    } else {
        QuantSpec::float(scheme)
    }
}

const SCHEMES: [Scheme; 9] = [
    Scheme::Q4Sym,
    Scheme::Q4Asym,
    Scheme::Q8Sym,
    Scheme::Q8Asym,
    Scheme::F32,
    Scheme::F16,
    Scheme::BF16,
    Scheme::Fp8E4M3,
    Scheme::Fp8E5M2,
];

/// Deterministic pseudo-random floats in [-a, a].
fn lcg_vec(seed: u64, n: usize, a: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}

#[test]
fn dispatched_implementation() {
    let imp = implementation();
    println!("edgeq-kernels dispatches to: {}", imp.name());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        assert!(
            matches!(
                imp,
                edgeq_kernels::Implementation::Avx2Fma | edgeq_kernels::Implementation::Avx2FmaF16c
            ),
            "AVX2+FMA CPU but dispatch chose {}",
            imp.name()
        );
        assert_eq!(
            imp == edgeq_kernels::Implementation::Avx2FmaF16c,
            std::is_x86_feature_detected!("f16c")
        );
    }
    #[cfg(target_arch = "aarch64")]
    assert!(matches!(
        imp,
        edgeq_kernels::Implementation::Neon | edgeq_kernels::Implementation::NeonDot | edgeq_kernels::Implementation::NeonI8mm
    ));
    match std::env::var("EDGEQ_EXPECT_IMPL") {
        Ok(want) if !want.is_empty() => assert_eq!(imp.name(), want, "EDGEQ_EXPECT_IMPL"),
        _ => {}
    }
}

#[test]
fn f16_scale_conversion_exact() {
    for h in 0..=u16::MAX {
        let a = edgeq_kernels::support::f16_to_f32(h);
        let b = half::f16::from_bits(h).to_f32();
        if b.is_nan() {
            assert!(a.is_nan(), "{h:#x}");
        } else {
            assert_eq!(a.to_bits(), b.to_bits(), "{h:#x}");
        }
    }
}

/// `c` one-hot activation vectors (the identity): token `i` reads column `i`.
fn identity(c: usize) -> Vec<f32> {
    let mut x = vec![0.0f32; c * c];
    for i in 0..c {
        x[i * c + i] = 1.0;
    }
    x
}

/// The outputs `y` of [`identity`] activations read the weights of `rows`
/// exactly as `dequantize_row` gives them (== : the sign of a zero may
/// differ).
fn assert_reads_weights(w: &TensorView<'_>, y: &[f32], rows: core::ops::Range<usize>, what: &str) {
    let (n_rows, c) = (w.rows(), w.cols());
    let mut row = vec![0.0f32; c];
    for r in rows {
        w.dequantize_row(r, &mut row);
        for i in 0..c {
            let v = y[i * n_rows + r];
            assert!(v == row[i], "{what}: w[{r}][{i}] = {v:e}, reference {:e}", row[i]);
        }
    }
}

/// One-hot activations read single weights: the dequantized values must be
/// bit-identical to `dequantize_row` (every column, every scheme, groups,
/// partial last block), which also runs t in passes of 4 plus a remainder.
#[test]
fn dequantization_bit_exact() {
    for &scheme in &SCHEMES {
        for &group in &[32u32, 64, 0, 1, 48] {
            if !scheme.is_int() && !scheme.is_fp8() && group != 0 || scheme.is_int() && group < 32 || scheme.is_int() && group == 48 {
                continue;
            }
            for &cols in &[1u32, 31, 33, 70, 172] {
                let rows = 3u32;
                let src = lcg_vec(cols as u64 * 7 + group as u64, (rows * cols) as usize, 3.0);
                let o = Owned::new(spec_of(scheme, group), rows, cols, &src);
                let w = o.view();
                let c = cols as usize;
                let x = identity(c);
                let mut y = vec![0.0f32; c * rows as usize];
                let mut scratch = vec![0.0f32; c];
                matmul(&mut y, &w, &x, c, 0..rows as usize, &mut scratch);
                assert_reads_weights(&w, &y, 0..rows as usize, &format!("{scheme:?} g{group} cols {cols}"));
            }
        }
    }
}

#[test]
fn edge_cases_fixed_shapes() {
    let cols_list = [1u32, 31, 32, 33, 172, 576, 1536];
    for &scheme in &SCHEMES {
        for &group in &[32u32, 64, 128, 0, 1, 48] {
            if !scheme.is_int() && !scheme.is_fp8() && group != 0 || scheme.is_int() && group < 32 || scheme.is_int() && group == 48 {
                continue;
            }
            for &cols in &cols_list {
                let rows = 5u32;
                let n = (rows * cols) as usize;
                // (name, weights): random, all ±max (codes 0 and 15/255),
                // all zero (the reference's [-1, 1] range), mixed magnitudes.
                let rnd = lcg_vec(cols as u64 + 3, n, 1.0);
                let extremes: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 2.0 } else { -2.0 }).collect();
                let mixed: Vec<f32> = rnd.iter().enumerate().map(|(i, v)| v * 10f32.powi((i % 7) as i32 - 3)).collect();
                for (k, src) in [rnd.clone(), extremes, vec![0.0; n], mixed].iter().enumerate() {
                    let mut o = Owned::new(spec_of(scheme, group), rows, cols, src);
                    if scheme.is_int() && k == 3 {
                        // zero and subnormal scales on some groups
                        let l = o.spec.layout(rows, cols).unwrap();
                        let so = l.scales_offset as usize;
                        let b = o.bytes_mut();
                        for s in 0..l.n_scales as usize {
                            let v: u16 = match s % 4 {
                                0 => 0,
                                1 => 0x0001,
                                2 => 0x8000,
                                _ => continue,
                            };
                            b[so + 2 * s..so + 2 * s + 2].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                    let w = o.view();
                    for &t in &[1usize, 2, 3, 5] {
                        let x = lcg_vec(t as u64 * 31 + cols as u64, t * cols as usize, 2.0);
                        let y = check(&w, &x, t, 0..rows as usize);
                        check_batch_independent(&w, &x, t, &y, 0..rows as usize);
                        check(&w, &x, t, 1..3);
                        check(&w, &x, t, 2..2);
                    }
                }
            }
        }
    }
}

/// Every FP8 code, NaN and infinities included, through the SIMD decode:
/// with one-hot activations every finite code gives the reference's value
/// (== : the sign of a zero may differ); a row holding a NaN or infinite code gives NaN for every
/// input, like the reference (NaN·0 and ∞·0 are NaN); rows of finite codes
/// stay within the bound. Codes are written raw, after random scales per
/// channel / per tensor / per 128×128 block.
#[test]
fn fp8_every_code() {
    let (rows, cols) = (4u32, 256 + 37);
    for scheme in [Scheme::Fp8E4M3, Scheme::Fp8E5M2] {
        let table = edgeq_core::quant::fp8::table_of(scheme);
        let special = |c: u8| !table[c as usize].is_finite();
        for group in [0u32, 1, 128] {
            let src = lcg_vec(group as u64 + 11, (rows * cols) as usize, 3.0);
            let mut o = Owned::new(spec_of(scheme, group), rows, cols, &src);
            let stride = o.spec.layout(rows, cols).unwrap().row_stride as usize;
            let b = o.bytes_mut();
            for r in 0..rows as usize {
                for c in 0..cols as usize {
                    // row 0: every code in order; row 1: the same without
                    // NaN/∞; rows 2-3: a scrambled mix without them
                    let mut code = match r {
                        0 | 1 => (c % 256) as u8,
                        _ => (c as u32 * 97 + r as u32 * 13) as u8,
                    };
                    if r > 0 && special(code) {
                        code = 0x11;
                    }
                    b[r * stride + c] = code;
                }
            }
            let w = o.view();
            let c = cols as usize;
            let mut scratch = vec![0.0f32; c];
            let x = identity(c);
            let mut y = vec![0.0f32; c * rows as usize];
            matmul(&mut y, &w, &x, c, 0..rows as usize, &mut scratch);
            let mut y_ref = vec![0.0f32; c * rows as usize];
            scalar::matmul(&mut y_ref, &w, &x, c, 0..1, &mut scratch);
            for i in 0..c {
                assert!(
                    y[i * rows as usize].is_nan() && y_ref[i * rows as usize].is_nan(),
                    "{scheme:?} g{group}: row 0 token {i}"
                );
            }
            assert_reads_weights(&w, &y, 1..rows as usize, &format!("{scheme:?} g{group}"));
            let xr = lcg_vec(group as u64 + 5, 3 * c, 2.0);
            let mut y_ref = vec![0.0f32; 3 * rows as usize];
            let mut y = y_ref.clone();
            scalar::matmul(&mut y_ref, &w, &xr, 3, 0..1, &mut scratch);
            matmul(&mut y, &w, &xr, 3, 0..1, &mut scratch);
            for i in 0..3 {
                let (a, b) = (y[i * rows as usize], y_ref[i * rows as usize]);
                assert!(a.is_nan() && b.is_nan(), "{scheme:?} g{group}: {a} vs {b}");
            }
            check(&w, &xr, 3, 1..rows as usize);
        }
    }
}

#[test]
fn short_slices_write_nothing() {
    let src = lcg_vec(1, 4 * 40, 1.0);
    let o = Owned::new(QuantSpec::per_group(Scheme::Q4Sym, 32), 4, 40, &src);
    let w = o.view();
    let x = vec![1.0f32; 40];
    let mut scratch = vec![0.0f32; 40];
    let mut y = vec![f32::from_bits(SENTINEL); 4];
    matmul(&mut y, &w, &x[..39], 1, 0..4, &mut scratch);
    matmul(&mut y[..3], &w, &x, 1, 0..4, &mut scratch);
    matmul(&mut y, &w, &x, 1, 0..5, &mut scratch);
    matmul(&mut y, &w, &x, 1, 0..4, &mut scratch[..39]);
    matmul(&mut y, &w, &x, usize::MAX, 0..4, &mut scratch);
    assert!(y.iter().all(|v| v.to_bits() == SENTINEL));
}

fn scheme_strategy() -> impl Strategy<Value = Scheme> {
    prop::sample::select(SCHEMES.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn random_tensors_within_bound(
        scheme in scheme_strategy(),
        group in prop::sample::select(vec![32u32, 64, 128, 0, 1, 48]),
        cols in prop_oneof![
            prop::sample::select(vec![1u32, 31, 32, 33, 172, 576, 1536]),
            1u32..300,
        ],
        rows in 1u32..6,
        t in prop::sample::select(vec![1usize, 2, 3, 5]),
        seed in any::<u64>(),
        scale_exp in -6i32..6,
        corrupt in any::<bool>(),
        r0 in 0usize..6,
        r1 in 0usize..6,
    ) {
        let group = match (scheme.is_int(), scheme.is_fp8()) {
            (true, _) if group == 1 || group == 48 => 32,
            (true, _) | (_, true) => group,
            _ => 0,
        };
        let n = (rows * cols) as usize;
        let src: Vec<f32> = lcg_vec(seed, n, 2f32.powi(scale_exp));
        let mut o = Owned::new(spec_of(scheme, group), rows, cols, &src);
        if corrupt && scheme.is_int() {
            // arbitrary codes (padding included) and finite f16 scales/mins
            let l = o.spec.layout(rows, cols).unwrap();
            let noise = lcg_vec(seed ^ 0x5555, l.total_bytes as usize, 1.0);
            let b = o.bytes_mut();
            for (i, v) in noise.iter().enumerate().take(l.codes_bytes as usize) {
                b[i] = (v.to_bits() >> 3) as u8;
            }
            for (base, cnt) in [(l.scales_offset, l.n_scales), (l.mins_offset, l.n_mins)] {
                for (s, v) in noise.iter().enumerate().take(cnt as usize) {
                    let mut h = (v.to_bits() >> 5) as u16;
                    if h & 0x7c00 == 0x7c00 {
                        h &= !0x4000; // no inf/NaN
                    }
                    let at = base as usize + 2 * s;
                    b[at..at + 2].copy_from_slice(&h.to_le_bytes());
                }
            }
        }
        let w = o.view();
        let x = lcg_vec(seed.rotate_left(17), t * cols as usize, 4.0);
        let (a, b) = (r0.min(rows as usize), r1.min(rows as usize));
        let range = a.min(b)..a.max(b);
        let y = check(&w, &x, t, range.clone());
        check_batch_independent(&w, &x, t, &y, range);
    }
}

/// `cargo test --release -p edgeq-kernels --test simd -- --ignored --nocapture`
#[test]
#[ignore]
fn timing_q4_g32() {
    use std::time::Instant;
    println!("implementation: {}", implementation().name());
    for &(rows, cols) in &[(576u32, 1536u32), (1536, 576), (4096, 4096)] {
        let src = lcg_vec(9, (rows * cols) as usize, 1.0);
        let spec = QuantSpec::per_group(Scheme::Q4Sym, 32);
        let o = Owned::new(spec, rows, cols, &src);
        let w = o.view();
        let bytes = o.len as f64;
        let x = lcg_vec(10, cols as usize, 1.0);
        let mut y = vec![0.0f32; rows as usize];
        let mut scratch = vec![0.0f32; cols as usize];
        let iters = (2e9 / (rows as f64 * cols as f64)).clamp(3.0, 2000.0) as usize;
        let mut time = |f: &mut dyn FnMut(&mut [f32], &mut [f32])| {
            f(&mut y, &mut scratch);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t0 = Instant::now();
                for _ in 0..iters {
                    f(&mut y, &mut scratch);
                }
                best = best.min(t0.elapsed().as_secs_f64() / iters as f64);
            }
            best
        };
        let ts = time(&mut |y, s| scalar::matmul(y, &w, &x, 1, 0..rows as usize, s));
        let tv = time(&mut |y, s| matmul(y, &w, &x, 1, 0..rows as usize, s));
        println!(
            "Q4 g32 {rows}x{cols} t=1 ({:.2} MB): scalar {:.1} µs = {:.2} GB/s; {} {:.1} µs = {:.2} GB/s; speed-up {:.1}x",
            bytes / 1e6,
            ts * 1e6,
            bytes / ts / 1e9,
            implementation().name(),
            tv * 1e6,
            bytes / tv / 1e9,
            ts / tv
        );
    }
}
