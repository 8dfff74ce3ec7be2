//! The scalar reference kernels (f32 activations and int8 activations) on
//! small shapes, sized to run under Miri (`scripts/miri.sh`): every scheme's
//! row decoding and both dot-product paths checked for undefined behaviour
//! and against a plain dequantize-then-dot evaluation. Also part of the
//! normal suite.
use edgeq_core::quant::quantize;
use edgeq_core::{Granularity, QuantSpec, Scheme, TensorView};
use edgeq_kernels::act_q8::words;
use edgeq_kernels::{matmul_q8_with, matmul_with, Implementation, Q8Acts};

fn specs() -> Vec<QuantSpec> {
    vec![
        QuantSpec::F32,
        QuantSpec::float(Scheme::F16),
        QuantSpec::float(Scheme::BF16),
        QuantSpec::per_group(Scheme::Q4Sym, 32),
        QuantSpec::per_group(Scheme::Q4Asym, 32),
        QuantSpec::per_channel(Scheme::Q8Sym),
        QuantSpec::per_group(Scheme::Q8Asym, 32),
        QuantSpec {
            scheme: Scheme::Fp8E4M3,
            granularity: Granularity::PerChannel,
            group: 0,
        },
    ]
}

#[test]
fn scalar_kernels_match_dequantize_then_dot() {
    let (rows, cols, t) = (3usize, 64usize, 2usize);
    let w: Vec<f32> = (0..rows * cols).map(|k| ((k * 13) % 31) as f32 / 15.0 - 1.0).collect();
    let x: Vec<f32> = (0..t * cols).map(|k| ((k * 7) % 17) as f32 / 8.0 - 1.0).collect();
    for spec in specs() {
        let len = spec.layout(rows as u32, cols as u32).unwrap().total_bytes as usize;
        let mut store = vec![0u8; len + 64];
        let off = store.as_ptr().align_offset(64);
        quantize(spec, rows as u32, cols as u32, &w, &mut store[off..off + len]).unwrap();
        let v = TensorView::new(spec, rows as u32, cols as u32, &store[off..off + len]).unwrap();
        // Reference: dequantized rows dotted in f64.
        let mut deq = vec![0f32; cols];
        let mut want = vec![0f64; t * rows];
        for r in 0..rows {
            v.dequantize_row(r, &mut deq);
            for i in 0..t {
                want[i * rows + r] = deq.iter().zip(&x[i * cols..]).map(|(a, b)| *a as f64 * *b as f64).sum();
            }
        }
        let mut y = vec![0f32; t * rows];
        let mut scratch = vec![0f32; cols];
        assert!(matmul_with(Implementation::Scalar, &mut y, &v, &x, t, 0..rows, &mut scratch));
        for (a, b) in y.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-4, "{spec:?}: {a} vs {b}");
        }
        // Int8 activations: within the activation quantization error.
        let mut buf = vec![0f32; words(t, cols)];
        let mut acts = Q8Acts::carve(&mut buf, t, cols).unwrap();
        assert!(acts.quantize_scalar(&x));
        let mut yq = vec![0f32; t * rows];
        if matmul_q8_with(Implementation::Scalar, &mut yq, &v, &acts, 0..rows) {
            for (a, b) in yq.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 0.05, "{spec:?} q8: {a} vs {b}");
            }
        }
    }
}
