//! The EQF reader on a small file, sized to run under Miri in seconds
//! (`scripts/miri.sh`: zero-copy casts, alignment checks and every
//! dequantizer checked for undefined behaviour). Also part of the normal
//! suite. The exhaustive corruption tests are in format.rs.
#![cfg(feature = "alloc")]

use edgeq_core::config::{flags, ARCH_LLAMA};
use edgeq_core::format::writer::{EqfWriter, TensorEntry};
use edgeq_core::format::GLOBAL_LAYER;
use edgeq_core::quant::quantize;
use edgeq_core::{Eqf, Granularity, ModelConfig, ParseOptions, QuantSpec, Scheme, TensorRole};

fn config() -> ModelConfig {
    ModelConfig {
        arch: ARCH_LLAMA,
        flags: flags::TIED_EMBEDDINGS,
        dim: 32,
        hidden_dim: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 16,
        vocab_size: 4,
        max_seq_len: 8,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        rope_dim: 16,
        bos_id: 1,
        eos_id: 2,
        ..bytemuck::Zeroable::zeroed()
    }
}

/// A tensor's role, spec, rows, cols and f32 source values.
type Source = (TensorRole, QuantSpec, u32, u32, Vec<f32>);

/// One tensor per scheme family; returns (file, the source of each).
fn small_file() -> (Vec<u8>, Vec<Source>) {
    let fp8 = |scheme, granularity, group| QuantSpec {
        scheme,
        granularity,
        group,
    };
    let tensors = [
        (TensorRole::TokEmbd, QuantSpec::float(Scheme::F16), 4u32, 32u32),
        (TensorRole::Wq, QuantSpec::per_group(Scheme::Q4Sym, 32), 32, 32),
        (TensorRole::Wk, QuantSpec::per_channel(Scheme::Q8Sym), 16, 32),
        (TensorRole::Wv, QuantSpec::per_group(Scheme::Q4Asym, 32), 16, 32),
        (TensorRole::Wo, QuantSpec::float(Scheme::BF16), 32, 32),
        (TensorRole::WGate, fp8(Scheme::Fp8E4M3, Granularity::Block, 32), 32, 32),
        (TensorRole::WUp, fp8(Scheme::Fp8E5M2, Granularity::PerChannel, 0), 32, 32),
        (TensorRole::WDown, QuantSpec::per_group(Scheme::Q8Asym, 32), 32, 32),
        (TensorRole::AttnNorm, QuantSpec::F32, 1, 32),
        (TensorRole::FfnNorm, QuantSpec::F32, 1, 32),
        (TensorRole::OutputNorm, QuantSpec::F32, 1, 32),
    ];
    let mut w = EqfWriter::new(config(), b"tok".to_vec());
    let mut src = Vec::new();
    for (i, (role, spec, rows, cols)) in tensors.into_iter().enumerate() {
        let values: Vec<f32> = (0..(rows * cols) as usize)
            .map(|k| ((k * 37 + i * 11) % 29) as f32 / 14.0 - 1.0)
            .collect();
        let mut data = vec![0u8; spec.layout(rows, cols).unwrap().total_bytes as usize];
        quantize(spec, rows, cols, &values, &mut data).unwrap();
        let layer = if role.is_global() { GLOBAL_LAYER } else { 0 };
        w.add(TensorEntry {
            role,
            layer,
            spec,
            rows,
            cols,
            data,
        })
        .unwrap();
        src.push((role, spec, rows, cols, values));
    }
    // EQF 1.1 activation records, so flips and truncations reach the ACT_QUANT parser too
    w.acts = vec![
        edgeq_core::format::writer::ActEntry {
            role: TensorRole::Wk,
            layer: 0,
            mode: edgeq_core::ActMode::Int8Token,
            threshold: 0.0,
            outliers: vec![],
        },
        edgeq_core::format::writer::ActEntry {
            role: TensorRole::WDown,
            layer: 0,
            mode: edgeq_core::ActMode::LlmInt8,
            threshold: 6.0,
            outliers: vec![3, 30],
        },
    ];
    (w.finish(), src)
}

/// A copy of `bytes` starting at a 64-byte boundary plus `shift`.
fn placed(bytes: &[u8], shift: usize) -> (Vec<u8>, usize) {
    let mut store = vec![0u8; bytes.len() + 128];
    let start = store.as_ptr().align_offset(64) + shift;
    store[start..start + bytes.len()].copy_from_slice(bytes);
    (store, start)
}

#[test]
fn small_file_parses_and_every_scheme_dequantizes() {
    let (file, src) = small_file();
    let (store, start) = placed(&file, 0);
    let eqf = Eqf::parse(&store[start..start + file.len()]).unwrap();
    assert_eq!(eqf.act_quant(TensorRole::WDown, 0).unwrap().outliers, &[3, 30]);
    let mut row = [0f32; 32];
    for (role, spec, rows, cols, values) in &src {
        let layer = if role.is_global() { GLOBAL_LAYER } else { 0 };
        let v = eqf.tensor(*role, layer, *rows, *cols).unwrap();
        assert_eq!(v.scheme(), spec.scheme);
        for r in 0..*rows as usize {
            v.dequantize_row(r, &mut row[..*cols as usize]);
            for c in 0..*cols as usize {
                let want = values[r * *cols as usize + c];
                assert!((row[c] - want).abs() <= 0.15, "{role:?} [{r},{c}]: {} vs {want}", row[c]);
            }
        }
    }
}

#[test]
fn misaligned_truncated_and_flipped_files_are_errors_not_ub() {
    let (file, _) = small_file();
    for shift in [1, 2, 4, 8, 32] {
        let (store, start) = placed(&file, shift);
        assert!(Eqf::parse(&store[start..start + file.len()]).is_err(), "misaligned by {shift}");
    }
    let (mut store, start) = placed(&file, 0);
    let step = if cfg!(miri) { 97 } else { 1 };
    for n in (0..file.len()).step_by(step) {
        assert!(Eqf::parse(&store[start..start + n]).is_err(), "prefix {n}");
    }
    let flips = if cfg!(miri) { 48 } else { 2000 };
    let mut s = 0x1234_5678u64;
    for _ in 0..flips {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let bit = (s % (file.len() as u64 * 8)) as usize;
        store[start + bit / 8] ^= 1 << (bit % 8);
        let bytes = &store[start..start + file.len()];
        let _ = Eqf::parse(bytes);
        if let Ok(e) = Eqf::parse_with(
            bytes,
            ParseOptions {
                verify_tensor_checksums: false,
            },
        ) {
            let mut row = vec![0f32; 64];
            for t in e.tensors() {
                if let Ok(v) = e.view(t) {
                    if v.cols() <= row.len() && v.rows() > 0 {
                        v.dequantize_row(v.rows() - 1, &mut row[..v.cols()]);
                    }
                }
            }
        }
        store[start + bit / 8] ^= 1 << (bit % 8);
    }
}
