//! Reliability of the whole stack on bad input (issue: reliability):
//! corrupt EQF images never crash the runtime, and every quantizer names
//! NaN/Inf weights and handles zero rows, constant groups and denormals.
//! Uses the tiny synthetic model (`edgeq_host::tiny`), so it runs everywhere
//! in seconds; the parser-level corruption tests are in core/tests/format.rs.
use edgeq_core::{ParseOptions, TensorRole};
use edgeq_host::algo::Grid;
use edgeq_host::calib::data::SplitMix;
use edgeq_host::import::AlignedBytes;
use edgeq_host::methods::{quantize_layer_effective, MethodArgs};
use edgeq_host::tiny;
use edgeq_runtime::{Model, Session};

/// The project's seeded generator, with a uniform float in [-1, 1).
struct Rng(SplitMix);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(SplitMix(seed))
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }
    fn f32(&mut self) -> f32 {
        (self.0.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Loads `bytes` and, when it loads, runs a few tokens: Ok or a typed error
/// are both fine, a panic fails the test.
fn load_and_run(bytes: &[u8], verify: bool) -> bool {
    let buf = AlignedBytes::from(bytes);
    let Ok(model) = Model::from_bytes_with(
        buf.as_bytes(),
        ParseOptions {
            verify_tensor_checksums: verify,
        },
    ) else {
        return false;
    };
    let seq = (model.cfg.max_seq_len as usize).min(4);
    let mut arena = vec![0u8; edgeq_runtime::arena_bytes(&model.cfg, seq, 1)];
    if let Ok(mut s) = Session::new(&model, &mut arena, seq, 1) {
        for t in [1, 40, 7] {
            let _ = s.step(t);
        }
    }
    true
}

/// Every truncation of a valid file is rejected, and a few thousand random
/// bit flips are either rejected or (tensor data or padding, checksums off)
/// give a model that runs: never a panic.
#[test]
fn corrupt_eqf_never_panics_the_runtime() {
    for scheme in ["q4-g32", "q8a-g32", "fp8-e4m3-b32", "bf16", "q8-ch+acts"] {
        let file = match scheme.strip_suffix("+acts") {
            Some(base) => tiny::with_acts(&tiny::eqf(5, base).unwrap()).unwrap(),
            None => tiny::eqf(5, scheme).unwrap(),
        };
        assert!(load_and_run(&file, true), "{scheme}: the valid file must load");
        for n in 0..file.len() {
            assert!(!load_and_run(&file[..n], true), "{scheme}: prefix of {n} bytes loaded");
            if n % 7 == 0 {
                assert!(
                    !load_and_run(&file[..n], false),
                    "{scheme}: prefix of {n} bytes loaded without checksums"
                );
            }
        }
        let mut rng = Rng::new(0xC0 + scheme.len() as u64);
        let (mut rejected, mut lax_loaded) = (0, 0);
        let flips = 1500;
        for _ in 0..flips {
            let mut f = file.clone();
            let bit = rng.below(f.len() * 8);
            f[bit / 8] ^= 1 << (bit % 8);
            rejected += usize::from(!load_and_run(&f, true));
            lax_loaded += usize::from(load_and_run(&f, false));
        }
        // Header, directories and tensor bytes are all covered by a CRC;
        // only alignment padding is not.
        assert!(rejected * 100 >= flips * 95, "{scheme}: only {rejected}/{flips} flips detected");
        assert!(
            lax_loaded > flips / 2,
            "{scheme}: without tensor checksums data flips must still load ({lax_loaded})"
        );
    }
}

fn args(method: &str, group: usize, sym: bool) -> MethodArgs {
    MethodArgs {
        method: method.into(),
        grid: Grid { bits: 4, group, sym },
        act_order: false,
        static_groups: false,
        damp: 0.01,
        blocksize: 128,
        hqq_axis: 1,
        hqq_iters: 20,
        duo_scaling: false,
        clip: true,
        ada_iters: 200,
        ada_lambda: 0.01,
        ada_lr: 1e-3,
        ada_warmup: 0.2,
    }
}

const METHODS: [&str; 5] = ["rtn", "gptq", "awq", "hqq", "adaround"];

fn calib(cols: usize, rng: &mut Rng) -> Vec<f32> {
    (0..64 * cols).map(|_| rng.f32()).collect()
}

#[test]
fn non_finite_weights_are_named_errors() {
    let (rows, cols) = (8, 64);
    let mut rng = Rng::new(1);
    let x = calib(cols, &mut rng);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut w: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
        w[3 * cols + 17] = bad;
        for m in METHODS {
            let e = quantize_layer_effective(&args(m, 32, true), &w, rows, cols, Some(&x)).err();
            let e = format!("{:#}", e.unwrap_or_else(|| panic!("{m} accepted a {bad} weight")));
            assert!(e.contains("row 3, column 17") && e.contains("fix the checkpoint"), "{m}: {e}");
        }
    }
    // Through the file pipeline, the tensor is named.
    let mut m = tiny::model(2).unwrap();
    let t = m.tensors.iter_mut().find(|t| t.role == TensorRole::Wk && t.layer == 1).unwrap();
    let edgeq_host::import::TensorData::Owned(data) = &mut t.data else {
        panic!("tiny::model's tensors are built in memory")
    };
    data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let eqf = m.to_eqf().unwrap();
    let buf = AlignedBytes::from(&eqf);
    let parsed = edgeq_core::Eqf::parse(buf.as_bytes()).unwrap();
    let policy = edgeq_host::quantize::Policy::new(edgeq_host::quantize::parse_spec_name("q4-g32").unwrap(), None, &[]).unwrap();
    let e = edgeq_host::quantize::quantize_rtn(&parsed, &policy, &indicatif::ProgressBar::hidden())
        .err()
        .unwrap();
    let e = format!("{e:#}");
    assert!(e.contains("blk.1.attn_k") && e.contains("NaN"), "{e}");
}

#[test]
fn zero_rows_constant_groups_and_denormals_quantize_correctly() {
    let (rows, cols) = (6, 64);
    let mut rng = Rng::new(3);
    let x = calib(cols, &mut rng);
    let mut w = vec![0f32; rows * cols];
    // row 0: all zero; row 1: constant groups (0.5 | -0.25); row 2:
    // denormals; row 3: zero group then random; rows 4-5 random.
    for c in 0..cols {
        w[cols + c] = if c < 32 { 0.5 } else { -0.25 };
        w[2 * cols + c] = if c % 2 == 0 { 1e-40 } else { -3e-41 };
        w[3 * cols + c] = if c < 32 { 0.0 } else { rng.f32() };
    }
    for v in &mut w[4 * cols..] {
        *v = rng.f32();
    }
    for m in METHODS {
        for sym in [true, false] {
            let (_, _, deq) =
                quantize_layer_effective(&args(m, 32, sym), &w, rows, cols, Some(&x)).unwrap_or_else(|e| panic!("{m} sym={sym}: {e:#}"));
            assert!(deq.iter().all(|v| v.is_finite()), "{m} sym={sym}: non-finite output");
            let row = |r: usize| &deq[r * cols..(r + 1) * cols];
            assert!(row(0).iter().all(|&v| v == 0.0), "{m} sym={sym}: zero row {:?}", &row(0)[..4]);
            assert!(
                row(3)[..32].iter().all(|&v| v.abs() < 1e-6),
                "{m} sym={sym}: zero group {:?}",
                &row(3)[..4]
            );
            // Constant groups land within one grid step (2·|c|/15 for the
            // symmetric grid, exact for asymmetric). The all-positive group
            // is skipped for sym: the reference GPTQ grid (`xmin = min(x, 0)`,
            // mirrored only when negative) keeps zero at the centre and
            // clips positive-only groups at 7/15 of their max, and edgeq
            // reproduces the reference.
            for (c, (&q, &o)) in row(1).iter().zip(&w[cols..2 * cols]).enumerate() {
                let tol = if sym { 2.0 / 15.0 } else { 0.02 } * o.abs() + 1e-6;
                if (sym && o > 0.0) || m == "gptq" {
                    continue; // GPTQ minimises the output error (feedback), checked below
                }
                assert!((q - o).abs() <= tol, "{m} sym={sym}: constant group col {c}: {q} vs {o}");
            }
            assert!(
                row(2).iter().all(|v| v.abs() <= 1e-30),
                "{m} sym={sym}: denormals {:?}",
                &row(2)[..4]
            );
            let out = |wm: &[f32]| -> Vec<f32> {
                let mut y = vec![0f32; 64 * rows];
                for (i, xr) in x.chunks_exact(cols).enumerate() {
                    for r in 0..rows {
                        y[i * rows + r] = xr.iter().zip(&wm[r * cols..(r + 1) * cols]).map(|(a, b)| a * b).sum();
                    }
                }
                y
            };
            let (yq, yo) = (out(&deq), out(&w));
            let oerr: f32 = yq.iter().zip(&yo).map(|(a, b)| (a - b).powi(2)).sum();
            let onorm: f32 = yo.iter().map(|v| v * v).sum();
            assert!(oerr < 0.04 * onorm, "{m} sym={sym}: layer output error {oerr} of {onorm}");
            let err: f32 = row(4).iter().zip(&w[4 * cols..5 * cols]).map(|(a, b)| (a - b).powi(2)).sum();
            let norm: f32 = w[4 * cols..5 * cols].iter().map(|v| v * v).sum();
            assert!(err < 0.05 * norm, "{m} sym={sym}: random row error {err} of {norm}");
        }
    }
}

/// A model with activation records (LLM.int8 on even blocks, per-token int8
/// on odd ones; FP8 per-128-group) runs them and stays close to the same
/// weights with f32 activations.
#[test]
fn activation_records_run_close_to_f32_activations() {
    for scheme in ["q8-ch", "q4-g32", "fp8-e4m3-b32"] {
        let plain = tiny::eqf(3, scheme).unwrap();
        let acts = tiny::with_acts(&plain).unwrap();
        assert_ne!(plain, acts);
        let logits = |bytes: &[u8]| -> Vec<f32> {
            let buf = AlignedBytes::from(bytes);
            let model = Model::from_bytes(buf.as_bytes()).unwrap();
            let mut arena = vec![0u8; edgeq_runtime::arena_bytes(&model.cfg, 8, 4)];
            let mut s = Session::new(&model, &mut arena, 8, 4).unwrap();
            s.set_matmul(edgeq_runtime::MatmulOpts {
                acts: edgeq_runtime::Activations::F32,
                threads: 1,
            });
            s.forward(&[1, 40, 7, 3], None).unwrap().to_vec()
        };
        let (a, b) = (logits(&plain), logits(&acts));
        let num: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        let den: f32 = a.iter().map(|x| x * x).sum();
        let rel = (num / den).sqrt();
        // int8 per token: ~1/254 relative per activation; E4M3: 3 mantissa bits, ~1/32
        let bound = if scheme.starts_with("fp8") { 0.25 } else { 0.1 };
        assert!(rel > 0.0 && rel < bound, "{scheme}: relative logit change {rel}");
    }
}

/// Two and three threads (one fork-join for q, k, v and one for gate and up
/// with SwiGLU on each thread's rows; attention heads split across threads)
/// give the one-thread logits bit for bit, for a prompt and for the decode
/// steps after it, with quantized and f32 activations and every KV cache
/// precision. The tiny model's k and v have 16 rows, so the second
/// thread's share of them is empty; 4 heads over 3 threads split unevenly.
#[test]
fn two_threads_give_bit_identical_logits() {
    use edgeq_runtime::{arena_bytes_with, Activations, KvCache, MatmulOpts, SessionOptions};
    for scheme in ["q4-g32", "q4a-g32", "q8-g32", "q8a-g32", "f32"] {
        let eqf = tiny::eqf(5, scheme).unwrap();
        let buf = AlignedBytes::from(&eqf);
        let model = Model::from_bytes(buf.as_bytes()).unwrap();
        let run = |acts: Activations, kv: KvCache, threads: usize| -> Vec<Vec<u32>> {
            let (seq, batch) = (24, 8);
            let mut arena = vec![0u64; arena_bytes_with(&model.cfg, seq, batch, kv).div_ceil(8)];
            let opts = SessionOptions {
                kv,
                matmul: MatmulOpts { acts, threads },
            };
            let mut s = Session::with_options(&model, bytemuck::cast_slice_mut(&mut arena), seq, batch, opts).unwrap();
            let bits = |l: &[f32]| l.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            let mut out = vec![bits(s.forward(&[1, 40, 7, 99, 3, 250, 17, 8], None).unwrap())];
            for t in [5u32, 60, 2, 287, 31, 100] {
                out.push(bits(s.step(t).unwrap()));
            }
            out
        };
        for (acts, kv) in [
            (Activations::Q8, KvCache::F32),
            (Activations::F32, KvCache::F32),
            (Activations::Q8, KvCache::F16),
            (Activations::Q8, KvCache::Q8),
        ] {
            let one = run(acts, kv, 1);
            assert!(
                one.iter().flatten().all(|&b| f32::from_bits(b).is_finite()),
                "{scheme}: non-finite logits"
            );
            for threads in [2, 3] {
                assert!(
                    one == run(acts, kv, threads),
                    "{scheme} {acts:?} {kv:?}: {threads} threads differ from one"
                );
            }
        }
    }
}

/// The forward pass never panics on buffers that do not fit (a caller bug:
/// `Session` sizes them from `ArenaPlan`): every slice it takes is checked,
/// which is what lets the bare-metal C API link without panic machinery
/// (scripts/test-capi.sh). Short scratch, a short cache and a short rope
/// table each just leave work undone.
#[test]
fn block_forward_with_short_buffers_does_not_panic() {
    use edgeq_runtime::arena::{MatmulOpts, Scratch};
    use edgeq_runtime::{block_forward, NoObserver};
    for scheme in ["q4-g32", "q8a-g32", "f32"] {
        let eqf = tiny::eqf(5, scheme).unwrap();
        let buf = AlignedBytes::from(&eqf);
        let model = Model::from_bytes(buf.as_bytes()).unwrap();
        let c = &model.cfg;
        let w = model.block(0).unwrap();
        let (n, pos, dim, kvd) = (3usize, 2usize, c.dim as usize, c.kv_dim());
        for short in [0usize, 1, 7, 64] {
            let v = |len: usize| vec![0.5f32; len.min(short)];
            let (mut xb, mut xb2, mut q, mut hb, mut hb2) = (v(4096), v(4096), v(4096), v(4096), v(4096));
            let (mut att, mut row, mut qa) = (v(64), v(4096), v(4096));
            let mut s = Scratch {
                xb: &mut xb,
                xb2: &mut xb2,
                q: &mut q,
                hb: &mut hb,
                hb2: &mut hb2,
                att: &mut att,
                row: &mut row,
                qa: &mut qa,
                xp: &mut [],
                mm: MatmulOpts::default(),
            };
            let mut x = vec![0.25f32; n * dim];
            let (mut kc, mut vc) = (v((pos + n) * kvd), v((pos + n) * kvd));
            let rope = v(n * c.rope_dim as usize);
            let flow = block_forward(c, &w, 0, &mut x, n, pos, &mut kc, &mut vc, &rope, &mut s, &mut NoObserver);
            assert!(flow.is_continue(), "{scheme}, buffers of {short}");
            assert!(x.iter().all(|v| v.is_finite()), "{scheme}, buffers of {short}");
        }
    }
}
