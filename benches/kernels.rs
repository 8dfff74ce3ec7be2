//! GEMV throughput of every kernel implementation on this machine, side by
//! side with the scalar reference, for the schemes the runtime executes:
//! Q4/Q8 weights against f32 activations and against Q8 activations, and
//! F16/F32 weights; shapes of SmolLM2-135M (576×1536) and of 7B-class
//! layers (4096×4096, 4096×11008). Throughput is weight bytes per second.
//! `cargo bench -p edgeq-host --bench kernels` (filter with a name, e.g.
//! `-- 4096x4096/q4`). `edgeq bench` prints the same measurements as one
//! table next to the machine's memory bandwidth, with weights rotated out of
//! the cache; here the weights of the smaller shapes stay cache-resident.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgeq_core::quant::quantize;
use edgeq_core::{QuantSpec, Scheme, TensorView};
use edgeq_kernels::{act_q8, available, matmul_q8_with, matmul_with, Q8Acts};

fn bench(c: &mut Criterion) {
    for (rows, cols) in [(576usize, 1536usize), (4096, 4096), (4096, 11008)] {
        let mut g = c.benchmark_group(format!("gemv_{rows}x{cols}"));
        g.sample_size(20);
        for spec in [
            QuantSpec::per_group(Scheme::Q4Sym, 32),
            QuantSpec::per_group(Scheme::Q4Asym, 32),
            QuantSpec::per_group(Scheme::Q8Sym, 32),
            QuantSpec::float(Scheme::F16),
            QuantSpec::float(Scheme::F32),
        ] {
            let len = spec.layout(rows as u32, cols as u32).unwrap().total_bytes as usize;
            let mut buf = vec![0u64; len.div_ceil(8)];
            let src: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1).collect();
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
            quantize(spec, rows as u32, cols as u32, &src, &mut bytes[..len]).unwrap();
            let bytes: &[u8] = bytemuck::cast_slice(&buf);
            let w = TensorView::new(spec, rows as u32, cols as u32, &bytes[..len]).unwrap();
            let x: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
            let mut abuf = vec![0.0f32; act_q8::words(1, cols)];
            let mut acts = Q8Acts::carve(&mut abuf, 1, cols).unwrap();
            acts.quantize(&x);
            let (mut y, mut scratch) = (vec![0.0f32; rows], vec![0.0f32; cols]);
            g.throughput(Throughput::Bytes(len as u64));
            let name = format!("{:?}", spec.scheme).to_lowercase();
            for imp in available() {
                // The scalar reference is slow on the large shapes; it runs on the smallest.
                if imp == edgeq_kernels::Implementation::Scalar && rows * cols > 1 << 20 {
                    continue;
                }
                g.bench_function(BenchmarkId::new(format!("{name}/f32-acts"), imp.name()), |b| {
                    b.iter(|| matmul_with(imp, &mut y, &w, &x, 1, 0..rows, &mut scratch))
                });
                if edgeq_kernels::scalar_int::supported(&w) {
                    g.bench_function(BenchmarkId::new(format!("{name}/q8-acts"), imp.name()), |b| {
                        b.iter(|| matmul_q8_with(imp, &mut y, &w, &acts, 0..rows))
                    });
                }
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
