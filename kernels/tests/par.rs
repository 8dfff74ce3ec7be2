//! Row-parallel products equal the single-threaded ones bit for bit.
#![cfg(feature = "threads")]
use edgeq_core::quant::quantize;
use edgeq_core::{Granularity, QuantSpec, Scheme, TensorView};
use edgeq_kernels::{act_q8, par, Q8Acts};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

#[test]
fn parallel_equals_serial() {
    let (rows, cols) = (520, 1024); // not a multiple of the 16-row chunks
    for spec in [
        QuantSpec::per_group(Scheme::Q4Sym, 32),
        QuantSpec::per_group(Scheme::Q8Asym, 64),
        QuantSpec::float(Scheme::F32),
        QuantSpec::float(Scheme::F16),
        QuantSpec {
            scheme: Scheme::Fp8E4M3,
            granularity: Granularity::PerChannel,
            group: 0,
        },
        QuantSpec {
            scheme: Scheme::Fp8E5M2,
            granularity: Granularity::PerTensor,
            group: 0,
        },
        QuantSpec {
            scheme: Scheme::Fp8E4M3,
            granularity: Granularity::Block,
            group: 128,
        },
    ] {
        let len = spec.layout(rows as u32, cols as u32).unwrap().total_bytes as usize;
        let mut buf = vec![0u8; len + 64];
        let off = buf.as_ptr().align_offset(64);
        quantize(spec, rows as u32, cols as u32, &data(rows * cols, 1), &mut buf[off..off + len]).unwrap();
        let w = TensorView::new(spec, rows as u32, cols as u32, &buf[off..off + len]).unwrap();
        // the products below really are split: 2 threads, 2 ranges of whole
        // 16-row chunks (whole 128-row tiles for FP8 block scaling)
        let split = if spec.granularity == Granularity::Block { 384 } else { 272 };
        assert_eq!(par::ranges(&w, 2), Some(vec![(0, split), (split, 520)]), "{spec:?}");
        assert_eq!(par::ranges(&w, 1), None);
        for t in [1usize, 3] {
            let x = data(t * cols, t as u32 + 7);
            let mut scratch = vec![0.0; cols];
            let mut y1 = vec![0.0f32; t * rows];
            edgeq_kernels::matmul(&mut y1, &w, &x, t, 0..rows, &mut scratch);
            for threads in [2, 3, 8] {
                let mut y2 = vec![f32::NAN; t * rows];
                par::matmul(threads, &mut y2, &w, &x, t, &mut scratch);
                assert!(
                    y1.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{spec:?} t={t} threads={threads}"
                );
            }
            if edgeq_kernels::scalar_int::supported(&w) {
                let mut abuf = vec![0.0; act_q8::words(t, cols)];
                let mut a = Q8Acts::carve(&mut abuf, t, cols).unwrap();
                assert!(a.quantize(&x));
                let mut y1 = vec![0.0f32; t * rows];
                edgeq_kernels::matmul_q8(&mut y1, &w, &a, 0..rows);
                for threads in [2, 3, 8] {
                    let mut y2 = vec![f32::NAN; t * rows];
                    par::matmul_q8(threads, &mut y2, &w, &a);
                    assert!(
                        y1.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "q8 {spec:?} t={t} threads={threads}"
                    );
                }
            }
        }
    }
}

/// `matmul_q8_fused` equals one `matmul_q8` per job (then the epilogue) bit
/// for bit, for one token and for several, with jobs of different heights
/// (one smaller than a thread's share), and refuses what it cannot run.
#[test]
fn fused_equals_one_product_per_job() {
    let cols = 576;
    let make = |spec: QuantSpec, rows: usize, seed: u32| {
        let len = spec.layout(rows as u32, cols as u32).unwrap().total_bytes as usize;
        let mut buf = vec![0u8; len + 64];
        let off = buf.as_ptr().align_offset(64);
        quantize(spec, rows as u32, cols as u32, &data(rows * cols, seed), &mut buf[off..off + len]).unwrap();
        (buf, off, len, spec, rows)
    };
    let mats = [
        make(QuantSpec::per_group(Scheme::Q4Sym, 32), 1536, 1),
        make(QuantSpec::per_group(Scheme::Q4Asym, 32), 1536, 2),
        make(QuantSpec::per_group(Scheme::Q8Sym, 64), 24, 3),
    ];
    let views: Vec<TensorView<'_>> = mats
        .iter()
        .map(|(b, off, len, spec, rows)| TensorView::new(*spec, *rows as u32, cols as u32, &b[*off..off + len]).unwrap())
        .collect();
    let glu = |g: &mut [f32], u: &[f32]| g.iter_mut().zip(u).for_each(|(g, u)| *g = *g * 0.5 - u);
    let same = |p: &[f32], q: &[f32]| p.len() == q.len() && p.iter().zip(q).all(|(a, b)| a.to_bits() == b.to_bits());
    for t in [1usize, 3] {
        let x = data(t * cols, 9);
        let mut abuf = vec![0.0; act_q8::words(t, cols)];
        let mut a = Q8Acts::carve(&mut abuf, t, cols).unwrap();
        assert!(a.quantize(&x));
        let want: Vec<Vec<f32>> = views
            .iter()
            .map(|w| {
                let mut y = vec![0.0f32; t * w.rows()];
                edgeq_kernels::matmul_q8(&mut y, w, &a, 0..w.rows());
                y
            })
            .collect();
        let mut g = want[0].clone();
        glu(&mut g, &want[1]);
        for threads in [2, 3, 8] {
            let mut ys: Vec<Vec<f32>> = views.iter().map(|w| vec![f32::NAN; t * w.rows()]).collect();
            let [y0, y1, y2] = &mut ys[..] else { unreachable!() };
            let mut jobs = [(&mut y0[..], &views[0]), (&mut y1[..], &views[1]), (&mut y2[..], &views[2])];
            assert!(par::matmul_q8_fused(threads, &mut jobs, &a, Some(&glu)));
            assert!(
                same(&ys[0], &g) && same(&ys[1], &want[1]) && same(&ys[2], &want[2]),
                "t={t} threads={threads}"
            );
        }
        // An epilogue over jobs of different heights, or one thread: refused.
        let mut y0 = vec![0.0f32; t * 1536];
        let mut y2 = vec![0.0f32; t * 24];
        assert!(!par::matmul_q8_fused(
            2,
            &mut [(&mut y0[..], &views[0]), (&mut y2[..], &views[2])],
            &a,
            Some(&glu)
        ));
        assert!(!par::matmul_q8_fused(1, &mut [(&mut y0[..], &views[0])], &a, None));
    }
}
