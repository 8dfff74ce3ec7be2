//! GPTQ on one SmolLM2-135M-shaped layer (`down_proj`: W 576×1536) with
//! 128×512 calibration tokens: the Hessian accumulation (65,536 tokens), the
//! GPTQ solve (4-bit, g128, and with act-order + static groups) and RTN for
//! scale. `cargo bench -p edgeq-host --bench gptq`.
use criterion::{criterion_group, criterion_main, Criterion};
use edgeq_host::algo::gptq::{gptq, GptqConfig, Hessian};
use edgeq_host::algo::{rtn, Grid};

fn data(rows: usize, cols: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
    };
    let w = (0..rows * cols).map(|_| rnd() * 0.05).collect();
    let x = (0..n * cols).map(|i| rnd() * if i % cols < 8 { 10.0 } else { 1.0 }).collect();
    (w, x)
}

fn bench(c: &mut Criterion) {
    let (rows, cols) = (576, 1536);
    let (w, x) = data(rows, cols, 128 * 512);
    let mut g = c.benchmark_group("gptq_576x1536");
    g.sample_size(10);
    g.bench_function("hessian_65536_tokens", |b| {
        b.iter(|| {
            let mut h = Hessian::new(cols);
            for chunk in x.chunks(512 * cols) {
                h.add_batch(chunk, chunk.len() / cols);
            }
            h
        })
    });
    let mut h = Hessian::new(cols);
    for chunk in x.chunks(512 * cols) {
        h.add_batch(chunk, chunk.len() / cols);
    }
    let grid = Grid {
        bits: 4,
        group: 128,
        sym: false,
    };
    g.bench_function("solve_w4_g128", |b| {
        b.iter(|| gptq(&w, rows, cols, &h, &GptqConfig::new(grid)).unwrap())
    });
    let mut act = GptqConfig::new(grid);
    act.act_order = true;
    act.static_groups = true;
    g.bench_function("solve_w4_g128_act_order_static", |b| {
        b.iter(|| gptq(&w, rows, cols, &h, &act).unwrap())
    });
    g.bench_function("rtn_w4_g128", |b| b.iter(|| rtn::quantize(&w, rows, cols, grid)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
