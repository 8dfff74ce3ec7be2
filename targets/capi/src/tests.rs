//! The C API called from Rust on a small model built in memory: argument
//! checks (every error code the API documents) and results equal to the
//! runtime's own `Session` and `Sampler`.
//!
//! SAFETY (every `unsafe` call below): the tests call the C ABI with pointers
//! to live Rust values of the documented sizes and alignments (handles,
//! arenas, buffers) that outlive the call, or with deliberately null/short
//! arguments that the API must reject before dereferencing them.
extern crate alloc;

use super::*;
use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;
use edgeq_core::config::{flags, ARCH_LLAMA};
use edgeq_core::format::writer::{EqfWriter, TensorEntry};
use edgeq_core::format::GLOBAL_LAYER;
use edgeq_core::{ModelConfig, QuantSpec, TensorRole};
use edgeq_runtime::tokenizer::{build_sentencepiece, SentencePieceConfig, TokenType};
use std::ffi::CStr;

const PIECES: &[(&str, f32)] = &[(" ", -1.0), ("a", -2.0), ("b", -2.0), ("ab", -1.5), (" ab", -1.0), ("c", -3.0)];

fn config(vocab: u32) -> ModelConfig {
    ModelConfig {
        arch: ARCH_LLAMA,
        flags: flags::TIED_EMBEDDINGS,
        dim: 16,
        hidden_dim: 40,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 4,
        vocab_size: vocab,
        max_seq_len: 24,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        rope_dim: 4,
        bos_id: 1,
        eos_id: 2,
        ..bytemuck::Zeroable::zeroed()
    }
}

/// `<unk> <s> </s>`, the 256 byte tokens, then [`PIECES`].
fn tokenizer() -> (Vec<u8>, u32) {
    let mut toks: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
    let mut scores = vec![0.0f32; 3];
    let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    for b in 0..=255u8 {
        toks.push(std::format!("<0x{b:02X}>").into_bytes());
        scores.push(0.0);
        types.push(TokenType::Byte);
    }
    for (t, s) in PIECES {
        toks.push(t.as_bytes().to_vec());
        scores.push(*s);
        types.push(TokenType::Normal);
    }
    let refs: Vec<&[u8]> = toks.iter().map(|t| t.as_slice()).collect();
    let cfg = SentencePieceConfig {
        bos: Some(1),
        eos: Some(2),
        add_bos: true,
        add_dummy_prefix: true,
    };
    (build_sentencepiece(&refs, &scores, &types, &cfg).unwrap(), refs.len() as u32)
}

/// Deterministic weights in [-0.5, 0.5).
fn weights(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut v = Vec::with_capacity(n * 4);
    for _ in 0..n {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        let x = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn model_file() -> Vec<u8> {
    let (tok, vocab) = tokenizer();
    let c = config(vocab);
    let (dim, qd, kvd, hid) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.hidden_dim);
    let mut w = EqfWriter::new(c, tok);
    let mut seed = 0;
    let mut add = |role, layer, rows: u32, cols: u32| {
        seed += 1;
        let data = if matches!(role, TensorRole::AttnNorm | TensorRole::FfnNorm | TensorRole::OutputNorm) {
            (0..rows * cols).flat_map(|_| 1.0f32.to_le_bytes()).collect()
        } else {
            weights((rows * cols) as usize, seed)
        };
        w.add(TensorEntry {
            role,
            layer,
            spec: QuantSpec::F32,
            rows,
            cols,
            data,
        })
        .unwrap();
    };
    add(TensorRole::TokEmbd, GLOBAL_LAYER, vocab, dim);
    add(TensorRole::OutputNorm, GLOBAL_LAYER, 1, dim);
    for l in 0..c.n_layers as u16 {
        add(TensorRole::AttnNorm, l, 1, dim);
        add(TensorRole::Wq, l, qd, dim);
        add(TensorRole::Wk, l, kvd, dim);
        add(TensorRole::Wv, l, kvd, dim);
        add(TensorRole::Wo, l, dim, qd);
        add(TensorRole::FfnNorm, l, 1, dim);
        add(TensorRole::WGate, l, hid, dim);
        add(TensorRole::WDown, l, dim, hid);
        add(TensorRole::WUp, l, hid, dim);
    }
    w.finish()
}

/// 64-byte aligned storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

struct Aligned(Vec<Line>, usize);
impl Aligned {
    fn new(bytes: &[u8]) -> Self {
        let mut v = vec![Line([0; 64]); bytes.len().div_ceil(64) + 1];
        let b: &mut [u8] = bytemuck::cast_slice_mut(bytemuck::cast_slice_mut::<Line, [u8; 64]>(&mut v));
        b[..bytes.len()].copy_from_slice(bytes);
        Aligned(v, bytes.len())
    }
    fn zeroed(len: usize) -> Self {
        Aligned(vec![Line([0; 64]); len.div_ceil(64) + 1], len)
    }
    fn ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr().cast()
    }
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Line, [u8; 64]>(&self.0).as_flattened()[..self.1]
    }
}
// SAFETY: `Line` is `repr(C, align(64))` over `[u8; 64]`: no padding, and
// every bit pattern (all zeros included) is a valid value.
unsafe impl bytemuck::Zeroable for Line {}
// SAFETY: as above; `Copy` and `'static`.
unsafe impl bytemuck::Pod for Line {}

/// The kernel choice is process-wide: tests that compute logits or change
/// it run one at a time.
static KERNELS: std::sync::Mutex<()> = std::sync::Mutex::new(());
fn kernels_lock() -> std::sync::MutexGuard<'static, ()> {
    KERNELS.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_model() -> edgeq_model {
    edgeq_model {
        opaque: [0; EDGEQ_MODEL_SIZE / 8],
    }
}
fn new_session() -> edgeq_session {
    edgeq_session {
        opaque: [0; EDGEQ_SESSION_SIZE / 8],
    }
}
fn new_sampler() -> edgeq_sampler {
    edgeq_sampler {
        opaque: [0; EDGEQ_SAMPLER_SIZE / 8],
    }
}

fn logits_of(s: &edgeq_session) -> Vec<f32> {
    let (mut p, mut n) = (ptr::null(), 0usize);
    assert_eq!(unsafe { edgeq_logits(s, &mut p, &mut n) }, EDGEQ_OK);
    unsafe { core::slice::from_raw_parts(p, n) }.to_vec()
}

#[test]
fn handles_fit_the_header() {
    std::println!(
        "model {} of {}, session {} of {}, sampler {} of {}",
        edgeq_model_size(),
        EDGEQ_MODEL_SIZE,
        edgeq_session_size(),
        EDGEQ_SESSION_SIZE,
        edgeq_sampler_size(),
        EDGEQ_SAMPLER_SIZE
    );
    assert!(edgeq_model_size() <= size_of::<edgeq_model>());
    assert!(edgeq_session_size() <= size_of::<edgeq_session>());
    assert!(edgeq_sampler_size() <= size_of::<edgeq_sampler>());
    assert_eq!(size_of::<edgeq_model_info>(), 48);
}

#[test]
fn every_code_has_a_message() {
    for c in EDGEQ_ERR_INTERNAL..=EDGEQ_OK {
        let s = unsafe { CStr::from_ptr(edgeq_strerror(c)) }.to_str().unwrap();
        assert!(!s.is_empty() && !s.starts_with("unknown"), "{c}: {s}");
    }
    let s = unsafe { CStr::from_ptr(edgeq_strerror(-1000)) };
    assert_eq!(s.to_str().unwrap(), "unknown edgeq error code");
    let v = unsafe { CStr::from_ptr(edgeq_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn open_checks_its_arguments() {
    let mut file = Aligned::new(&model_file());
    let len = file.1;
    let mut m = new_model();
    unsafe {
        assert_eq!(edgeq_model_open(ptr::null(), len, &mut m), EDGEQ_ERR_NULL);
        assert_eq!(edgeq_model_open(file.ptr(), len, ptr::null_mut()), EDGEQ_ERR_NULL);
        assert_eq!(edgeq_model_open(file.ptr().add(1), len - 1, &mut m), EDGEQ_ERR_ALIGN);
        assert_eq!(edgeq_model_open(file.ptr(), len - 1, &mut m), EDGEQ_ERR_FORMAT);
        assert_eq!(edgeq_model_open(file.ptr(), 0, &mut m), EDGEQ_ERR_FORMAT);
        let misaligned = (&mut m as *mut edgeq_model as *mut u8).add(1) as *mut edgeq_model;
        assert_eq!(edgeq_model_open(file.ptr(), len, misaligned), EDGEQ_ERR_ALIGN);
        // A flipped weight byte fails its checksum.
        let mut bad = Aligned::new(file.bytes());
        let l = bad.1;
        *bad.ptr().add(l - 3) ^= 0x40;
        assert_eq!(edgeq_model_open(bad.ptr(), l, &mut m), EDGEQ_ERR_FORMAT);
        // A failed open leaves the handle invalid.
        let mut info = MaybeUninit::<edgeq_model_info>::uninit();
        assert_eq!(edgeq_model_get_info(&m, info.as_mut_ptr()), EDGEQ_ERR_HANDLE);
        assert_eq!(edgeq_model_open(file.ptr(), len, &mut m), EDGEQ_OK);
        assert_eq!(edgeq_model_get_info(&m, info.as_mut_ptr()), EDGEQ_OK);
        let info = info.assume_init();
        let (_, vocab) = tokenizer();
        assert_eq!(
            (
                info.vocab_size,
                info.max_seq_len,
                info.n_layers,
                info.bos_id,
                info.eos_id,
                info.has_tokenizer,
                info.add_bos
            ),
            (vocab, 24, 2, 1, 2, 1, 1)
        );
        assert_eq!(edgeq_model_get_info(&m, ptr::null_mut()), EDGEQ_ERR_NULL);
        assert_eq!(edgeq_model_get_info(ptr::null(), ptr::null_mut()), EDGEQ_ERR_NULL);
    }
}

#[test]
fn sessions_match_the_runtime() {
    let _k = kernels_lock();
    let bytes = model_file();
    let mut file = Aligned::new(&bytes);
    let mut m = new_model();
    unsafe {
        assert_eq!(edgeq_model_open(file.ptr(), file.1, &mut m), EDGEQ_OK);
    }
    let reference = Model::from_bytes(file.bytes()).unwrap();
    let vocab = reference.cfg.vocab_size as usize;
    for (kv, kvc) in [
        (EDGEQ_KV_F32, KvCache::F32),
        (EDGEQ_KV_F16, KvCache::F16),
        (EDGEQ_KV_Q8, KvCache::Q8),
    ] {
        for batch in [1u32, 3, 24] {
            let mut need = 0usize;
            unsafe {
                assert_eq!(edgeq_arena_bytes(&m, 16, batch, kv, &mut need), EDGEQ_OK);
                assert_eq!(edgeq_arena_bytes(&m, 0, batch, kv, &mut need), EDGEQ_ERR_INVALID_ARG);
                assert_eq!(edgeq_arena_bytes(&m, 16, 0, kv, &mut need), EDGEQ_ERR_INVALID_ARG);
                assert_eq!(edgeq_arena_bytes(&m, 16, batch, 7, &mut need), EDGEQ_ERR_INVALID_ARG);
                assert_eq!(edgeq_arena_bytes(&m, 16, batch, kv, ptr::null_mut()), EDGEQ_ERR_NULL);
                assert_eq!(edgeq_arena_bytes(&m, 16, batch, kv, &mut need), EDGEQ_OK);
            }
            let b = (batch as usize).min(16);
            assert_eq!(need, arena_bytes_with(&reference.cfg, 16, b, kvc).div_ceil(4) * 4 + 4 * vocab);
            // A context beyond the model's is clamped to it.
            let mut big = 0usize;
            let mut clamped = 0usize;
            unsafe {
                assert_eq!(edgeq_arena_bytes(&m, 1000, 1, kv, &mut big), EDGEQ_OK);
                assert_eq!(edgeq_arena_bytes(&m, 24, 1, kv, &mut clamped), EDGEQ_OK);
            }
            assert_eq!(big, clamped);

            let mut arena = Aligned::zeroed(need);
            let mut s = new_session();
            unsafe {
                assert_eq!(
                    edgeq_session_init(&mut s, &m, arena.ptr(), need - 1, 16, batch, kv),
                    EDGEQ_ERR_ARENA_TOO_SMALL
                );
                assert_eq!(
                    edgeq_session_init(&mut s, &m, arena.ptr().add(2), need, 16, batch, kv),
                    EDGEQ_ERR_ALIGN
                );
                assert_eq!(edgeq_session_init(&mut s, &m, ptr::null_mut(), need, 16, batch, kv), EDGEQ_ERR_NULL);
                assert_eq!(
                    edgeq_session_init(&mut s, ptr::null(), arena.ptr(), need, 16, batch, kv),
                    EDGEQ_ERR_NULL
                );
                assert_eq!(
                    edgeq_session_init(&mut s, &m, arena.ptr(), need, 16, batch, 9),
                    EDGEQ_ERR_INVALID_ARG
                );
                // (the failures left it invalid)
                assert_eq!(edgeq_feed(&mut s, [1u32].as_ptr(), 1), EDGEQ_ERR_HANDLE);
                assert_eq!(edgeq_session_init(&mut s, &m, arena.ptr(), need, 16, batch, kv), EDGEQ_OK);
                let (mut p, mut n) = (ptr::null(), 0usize);
                assert_eq!(edgeq_logits(&s, &mut p, &mut n), EDGEQ_ERR_NO_LOGITS);
                let mut t = 0u32;
                assert_eq!(edgeq_sample(&mut s, ptr::null_mut(), &mut t), EDGEQ_ERR_NO_LOGITS);
                assert_eq!(edgeq_feed(&mut s, [vocab as u32].as_ptr(), 1), EDGEQ_ERR_BAD_TOKEN);
                assert_eq!(edgeq_feed(&mut s, ptr::null(), 1), EDGEQ_ERR_NULL);
                assert_eq!(edgeq_feed(&mut s, ptr::null(), 0), EDGEQ_OK);
                assert_eq!(edgeq_feed(&mut s, [1u32; 17].as_ptr(), 17), EDGEQ_ERR_CONTEXT_FULL);
                let (mut pos, mut max) = (9u32, 0u32);
                assert_eq!(edgeq_session_pos(&s, &mut pos, &mut max), EDGEQ_OK);
                assert_eq!((pos, max), (0, 16));
            }

            // The runtime directly, one token at a time.
            let mut ra = vec![0u32; arena_bytes_with(&reference.cfg, 16, 1, kvc).div_ceil(4)];
            let opts = SessionOptions {
                kv: kvc,
                ..Default::default()
            };
            let mut rs = Session::with_options(&reference, bytemuck::cast_slice_mut(&mut ra), 16, 1, opts).unwrap();
            let prompt = [1u32, 259, 260, 261, 262, 263, 264];
            let mut want = Vec::new();
            for &t in &prompt {
                want = rs.step(t).unwrap().to_vec();
            }
            unsafe {
                assert_eq!(edgeq_feed(&mut s, prompt.as_ptr(), prompt.len()), EDGEQ_OK);
            }
            assert_eq!(logits_of(&s), want, "kv {kv} batch {batch}");
            // Greedy generation, compared token by token.
            let mut smp = new_sampler();
            unsafe { assert_eq!(edgeq_sampler_init(&mut smp, 0.0, 0.9, 42), EDGEQ_OK) };
            for _ in 0..5 {
                let (mut t, mut t2) = (0u32, 0u32);
                unsafe {
                    assert_eq!(edgeq_sample(&mut s, ptr::null_mut(), &mut t), EDGEQ_OK);
                    assert_eq!(edgeq_sample(&mut s, &mut smp, &mut t2), EDGEQ_OK);
                }
                let r = edgeq_runtime::sampler::argmax(&want);
                assert_eq!((t, t2), (r, r));
                want = rs.step(r).unwrap().to_vec();
                unsafe { assert_eq!(edgeq_feed(&mut s, &t, 1), EDGEQ_OK) };
                assert_eq!(logits_of(&s), want);
            }
            let (mut pos, mut max) = (0u32, 0u32);
            unsafe {
                assert_eq!(edgeq_session_pos(&s, &mut pos, ptr::null_mut()), EDGEQ_OK);
                assert_eq!(edgeq_session_pos(&s, ptr::null_mut(), &mut max), EDGEQ_OK);
            }
            assert_eq!((pos, max), (12, 16));
            unsafe {
                assert_eq!(edgeq_feed(&mut s, [1u32; 5].as_ptr(), 5), EDGEQ_ERR_CONTEXT_FULL);
                assert_eq!(edgeq_feed(&mut s, [1u32; 4].as_ptr(), 4), EDGEQ_OK);
                assert_eq!(edgeq_feed(&mut s, [1u32].as_ptr(), 1), EDGEQ_ERR_CONTEXT_FULL);
                assert_eq!(edgeq_session_reset(&mut s), EDGEQ_OK);
                let (mut p, mut n) = (ptr::null(), 0usize);
                assert_eq!(edgeq_logits(&s, &mut p, &mut n), EDGEQ_ERR_NO_LOGITS);
                assert_eq!(edgeq_feed(&mut s, prompt.as_ptr(), prompt.len()), EDGEQ_OK);
            }
            rs.reset();
            let mut want = Vec::new();
            for &t in &prompt {
                want = rs.step(t).unwrap().to_vec();
            }
            assert_eq!(logits_of(&s), want);
        }
    }
}

#[test]
fn sampling_matches_the_runtime_sampler() {
    let _k = kernels_lock();
    let mut file = Aligned::new(&model_file());
    let mut m = new_model();
    let mut need = 0usize;
    unsafe {
        assert_eq!(edgeq_model_open(file.ptr(), file.1, &mut m), EDGEQ_OK);
        assert_eq!(edgeq_arena_bytes(&m, 24, 1, EDGEQ_KV_F32, &mut need), EDGEQ_OK);
    }
    let mut arena = Aligned::zeroed(need);
    let mut s = new_session();
    let mut smp = new_sampler();
    unsafe {
        assert_eq!(edgeq_session_init(&mut s, &m, arena.ptr(), need, 24, 1, EDGEQ_KV_F32), EDGEQ_OK);
        assert_eq!(edgeq_session_set_acts(&mut s, 5), EDGEQ_ERR_INVALID_ARG);
        assert_eq!(edgeq_session_set_acts(&mut s, EDGEQ_ACTS_F32), EDGEQ_OK);
        assert_eq!(edgeq_sampler_init(&mut smp, f32::NAN, 0.9, 1), EDGEQ_ERR_INVALID_ARG);
        assert_eq!(edgeq_sampler_init(&mut smp, -1.0, 0.9, 1), EDGEQ_ERR_INVALID_ARG);
        assert_eq!(edgeq_sampler_init(ptr::null_mut(), 1.0, 0.9, 1), EDGEQ_ERR_NULL);
        assert_eq!(edgeq_sampler_init_milli(&mut smp, 1 << 24, 900, 1), EDGEQ_ERR_INVALID_ARG);
        // thousandths give exactly the float literal
        assert_eq!(edgeq_sampler_init_milli(&mut smp, 1500, 900, 7), EDGEQ_OK);
        let inner = &*(&smp as *const edgeq_sampler as *const SamplerInner);
        let mut a = Sampler::new(SamplerConfig {
            temperature: 1.5,
            top_p: 0.9,
            seed: 7,
        });
        let mut b = ptr::read(&inner.sampler);
        let mut x = [0.3f32, -1.0, 2.0, 0.7];
        let mut y = x;
        assert_eq!(a.sample(&mut x), b.sample(&mut y));
        assert_eq!(x, y);
        assert_eq!(edgeq_feed(&mut s, [1u32].as_ptr(), 1), EDGEQ_OK);
        // An unknown sampler handle.
        let mut t = 0;
        assert_eq!(edgeq_sample(&mut s, &mut new_sampler(), &mut t), EDGEQ_ERR_HANDLE);
        assert_eq!(edgeq_sample(&mut s, ptr::null_mut(), ptr::null_mut()), EDGEQ_ERR_NULL);
    }

    // The runtime's loop: sample from a copy, step.
    let reference = Model::from_bytes(file.bytes()).unwrap();
    let mut ra = vec![0u32; edgeq_runtime::arena_bytes(&reference.cfg, 24, 1).div_ceil(4)];
    let mut rs = Session::new(&reference, bytemuck::cast_slice_mut(&mut ra), 24, 1).unwrap();
    rs.set_matmul(MatmulOpts {
        acts: Activations::F32,
        threads: 1,
    });
    let cfg = SamplerConfig {
        temperature: 1.0,
        top_p: 0.95,
        seed: 1234,
    };
    let mut rsmp = Sampler::new(cfg);
    let mut logits = rs.step(1).unwrap().to_vec();
    unsafe { assert_eq!(edgeq_sampler_init(&mut smp, cfg.temperature, cfg.top_p, cfg.seed), EDGEQ_OK) };
    let mut distinct = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let before = logits_of(&s);
        assert_eq!(before, logits);
        let want = rsmp.sample(&mut logits);
        let mut t = 0u32;
        unsafe { assert_eq!(edgeq_sample(&mut s, &mut smp, &mut t), EDGEQ_OK) };
        assert_eq!(t, want);
        // The session's logits are untouched by sampling.
        assert_eq!(logits_of(&s), before);
        distinct.insert(t);
        logits = rs.step(t).unwrap().to_vec();
        unsafe { assert_eq!(edgeq_feed(&mut s, &t, 1), EDGEQ_OK) };
    }
    assert!(distinct.len() > 1, "{distinct:?}");
}

#[test]
fn tokenizer_round_trip() {
    let mut file = Aligned::new(&model_file());
    let mut m = new_model();
    unsafe { assert_eq!(edgeq_model_open(file.ptr(), file.1, &mut m), EDGEQ_OK) };
    let tok = Tokenizer::parse(Model::from_bytes(file.bytes()).unwrap().eqf.tokenizer_bytes()).unwrap();
    let text = "ab abc é";
    let mut out = [0u32; 32];
    let mut n = 0usize;
    unsafe {
        assert_eq!(
            edgeq_tokenize(&m, text.as_ptr().cast(), text.len(), 1, out.as_mut_ptr(), out.len(), &mut n),
            EDGEQ_OK
        );
    }
    let mut want = [0u32; 32];
    let k = tok.encode(text, true, &mut want).unwrap();
    assert_eq!(&out[..n], &want[..k]);
    assert_eq!(out[0], 1);
    unsafe {
        // Errors: NULL text with a length, invalid UTF-8, no room, NULL n.
        assert_eq!(edgeq_tokenize(&m, ptr::null(), 3, 1, out.as_mut_ptr(), 32, &mut n), EDGEQ_ERR_NULL);
        let bad = [b'a', 0xff];
        assert_eq!(
            edgeq_tokenize(&m, bad.as_ptr().cast(), 2, 0, out.as_mut_ptr(), 32, &mut n),
            EDGEQ_ERR_UTF8
        );
        assert_eq!(
            edgeq_tokenize(&m, text.as_ptr().cast(), text.len(), 1, out.as_mut_ptr(), 2, &mut n),
            EDGEQ_ERR_BUFFER_TOO_SMALL
        );
        assert_eq!(
            edgeq_tokenize(&m, text.as_ptr().cast(), text.len(), 1, out.as_mut_ptr(), 32, ptr::null_mut()),
            EDGEQ_ERR_NULL
        );
        // Empty text: just BOS (NULL text allowed with length 0).
        assert_eq!(edgeq_tokenize(&m, ptr::null(), 0, 1, out.as_mut_ptr(), 32, &mut n), EDGEQ_OK);
        assert_eq!((n, out[0]), (1, 1));
    }
    // Decode piece by piece back to the text (after BOS the leading space goes).
    let mut text_out = Vec::new();
    let mut prev = EDGEQ_NO_TOKEN;
    for &t in &want[..k] {
        let mut buf = [0x55u8; 16];
        let mut len = 0usize;
        unsafe {
            assert_eq!(
                edgeq_detokenize_piece(&m, prev, t, buf.as_mut_ptr().cast(), buf.len(), &mut len),
                EDGEQ_OK
            );
        }
        assert_eq!(buf[len], 0, "NUL after the piece");
        text_out.extend_from_slice(&buf[..len]);
        prev = t;
    }
    assert_eq!(text_out, text.as_bytes());
    unsafe {
        let mut len = 0usize;
        let mut one = [0u8; 1];
        // " ab" needs 3 bytes: too small, the size is reported, nothing written.
        assert_eq!(
            edgeq_detokenize_piece(&m, EDGEQ_NO_TOKEN, 263, one.as_mut_ptr().cast(), 1, &mut len),
            EDGEQ_ERR_BUFFER_TOO_SMALL
        );
        assert_eq!((len, one[0]), (3, 0));
        // Exactly enough room: no NUL.
        let mut three = [9u8; 3];
        assert_eq!(
            edgeq_detokenize_piece(&m, EDGEQ_NO_TOKEN, 263, three.as_mut_ptr().cast(), 3, &mut len),
            EDGEQ_OK
        );
        assert_eq!(&three, b" ab");
        assert_eq!(
            edgeq_detokenize_piece(&m, EDGEQ_NO_TOKEN, 1_000_000, three.as_mut_ptr().cast(), 3, &mut len),
            EDGEQ_ERR_BAD_TOKEN
        );
        assert_eq!(
            edgeq_detokenize_piece(&m, 0, 263, ptr::null_mut(), 0, &mut len),
            EDGEQ_ERR_BUFFER_TOO_SMALL
        );
        // A control token decodes to nothing; cap 0 with NULL is fine.
        assert_eq!(edgeq_detokenize_piece(&m, 0, 2, ptr::null_mut(), 0, &mut len), EDGEQ_OK);
        assert_eq!(len, 0);
    }
}

#[test]
fn uninitialised_handles_are_refused() {
    let m = new_model();
    let mut s = new_session();
    let mut n = 0usize;
    unsafe {
        assert_eq!(edgeq_arena_bytes(&m, 16, 1, EDGEQ_KV_F32, &mut n), EDGEQ_ERR_HANDLE);
        assert_eq!(
            edgeq_tokenize(&m, ptr::null(), 0, 1, [0u32; 4].as_mut_ptr(), 4, &mut n),
            EDGEQ_ERR_HANDLE
        );
        assert_eq!(edgeq_feed(&mut s, [1u32].as_ptr(), 1), EDGEQ_ERR_HANDLE);
        assert_eq!(edgeq_session_reset(&mut s), EDGEQ_ERR_HANDLE);
        assert_eq!(edgeq_session_reset(ptr::null_mut()), EDGEQ_ERR_NULL);
        let mut t = 0u32;
        assert_eq!(edgeq_sample(&mut s, ptr::null_mut(), &mut t), EDGEQ_ERR_HANDLE);
        let (mut p, mut k) = (ptr::null(), 0usize);
        assert_eq!(edgeq_logits(&s, &mut p, &mut k), EDGEQ_ERR_HANDLE);
        assert_eq!(
            edgeq_session_init(&mut s, &m, [0u32; 4].as_mut_ptr().cast(), 16, 8, 1, EDGEQ_KV_F32),
            EDGEQ_ERR_HANDLE
        );
    }
}

#[test]
fn kernels_can_be_forced() {
    let _k = kernels_lock();
    assert_eq!(edgeq_set_kernels(42), EDGEQ_ERR_INVALID_ARG);
    assert_eq!(edgeq_set_kernels(EDGEQ_KERNELS_SCALAR), EDGEQ_OK);
    assert_eq!(unsafe { CStr::from_ptr(edgeq_kernels_name()) }.to_str().unwrap(), "scalar");
    assert_eq!(edgeq_set_kernels(EDGEQ_KERNELS_AUTO), EDGEQ_OK);
    let name = unsafe { CStr::from_ptr(edgeq_kernels_name()) }.to_str().unwrap();
    assert_eq!(name, edgeq_kernels::detected().name());
}
