//! Resuming the sequential pipeline: after each block, what is done (the
//! block's quantized tensors and reports) and the state the next block
//! needs (every calibration sample's hidden states) are saved in
//! `OUT.partial/`; a later run with the same input, method, settings and
//! calibration tokens (the `key`) continues after the last saved block and
//! writes the same file an uninterrupted run would. The directory is removed
//! once the output is written.
//!
//! Layout: `state.json` (key, next block, tensor metadata, reports, sample
//! lengths) names `state-N.bin` (the tensors' bytes, then the hidden states
//! as little-endian f32). Each file is written atomically, the binary one
//! first, so a crash leaves the previous consistent pair.
use super::pipeline::LayerReport;
use crate::model_file::write_atomic_with;
use anyhow::{ensure, Context, Result};
use edgeq_core::format::writer::{PermEntry, TensorEntry};
use edgeq_core::TensorRole;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    pub dir: PathBuf,
    key: String,
}

/// What a checkpoint restores.
pub struct Resume {
    pub next_block: usize,
    pub entries: Vec<TensorEntry>,
    /// Input permutations of the act-order layers among `entries`.
    pub perms: Vec<PermEntry>,
    pub reports: Vec<LayerReport>,
    /// Inputs of block `next_block`, one per calibration sample.
    pub xs: Vec<Vec<f32>>,
}

impl Checkpoint {
    /// The checkpoint of output `out` for a run described by `key`.
    pub fn new(out: &Path, key: String) -> Checkpoint {
        let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".partial");
        Checkpoint {
            dir: out.with_file_name(name),
            key,
        }
    }

    /// The saved state, if there is one for this key and it is complete;
    /// `sample_lens` × `dim` are the shapes it must have.
    pub fn load(&self, sample_lens: &[usize], dim: usize) -> Result<Option<Resume>> {
        let Ok(text) = std::fs::read_to_string(self.dir.join("state.json")) else {
            return Ok(None);
        };
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: bad state.json", self.dir.display()))?;
        if v["key"].as_str() != Some(self.key.as_str()) {
            return Ok(None); // another run's checkpoint: start over (it is replaced at the first save)
        }
        let next_block = v["next_block"].as_u64().context("next_block")? as usize;
        let bin = std::fs::read(self.dir.join(v["bin"].as_str().context("bin")?))
            .with_context(|| format!("{}: missing state file", self.dir.display()))?;
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = bin
                .get(at..at + n)
                .with_context(|| format!("{}: truncated state", self.dir.display()))?;
            at += n;
            Ok(s)
        };
        let mut entries = Vec::new();
        let mut perms = Vec::new();
        for t in v["tensors"].as_array().context("tensors")? {
            let spec = crate::quantize::parse_spec_name(t["spec"].as_str().context("spec")?)?;
            let len = t["len"].as_u64().context("len")? as usize;
            let e = TensorEntry {
                role: TensorRole::from_u16(t["role"].as_u64().context("role")? as u16).context("role")?,
                layer: t["layer"].as_u64().context("layer")? as u16,
                spec,
                rows: t["rows"].as_u64().context("rows")? as u32,
                cols: t["cols"].as_u64().context("cols")? as u32,
                data: take(len)?.to_vec(),
            };
            if let Some(p) = t.get("perm").filter(|p| !p.is_null()) {
                let perm: Vec<u32> = serde_json::from_value(p.clone()).context("perm")?;
                ensure!(perm.len() == e.cols as usize, "{}: bad input permutation", self.dir.display());
                perms.push(PermEntry {
                    role: e.role,
                    layer: e.layer,
                    perm,
                });
            }
            entries.push(e);
        }
        let mut xs = Vec::with_capacity(sample_lens.len());
        for &n in sample_lens {
            let b = take(n * dim * 4)?;
            xs.push(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
        }
        ensure!(at == bin.len(), "{}: state file longer than its description", self.dir.display());
        let reports = v["reports"]
            .as_array()
            .context("reports")?
            .iter()
            .map(|r| {
                Ok(LayerReport {
                    tensor: r["tensor"].as_str().context("tensor")?.to_string(),
                    scheme: r["scheme"].as_str().context("scheme")?.to_string(),
                    rel_err: r["rel_err"].as_f64().context("rel_err")?,
                    metric: match r["metric"].as_str() {
                        Some("output") => "output",
                        Some("output (scaled layer)") => "output (scaled layer)",
                        _ => "weight",
                    },
                    seconds: r["seconds"].as_f64().unwrap_or(0.0),
                    note: r["note"].as_str().unwrap_or("").to_string(),
                    details: r.get("details").cloned().unwrap_or(Value::Null),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Resume {
            next_block,
            entries,
            perms,
            reports,
            xs,
        }))
    }

    /// Saves the state before block `next_block`.
    pub fn save(
        &self,
        next_block: usize,
        entries: &[TensorEntry],
        perms: &[PermEntry],
        reports: &[LayerReport],
        xs: &[Vec<f32>],
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let bin = format!("state-{next_block}.bin");
        write_atomic_with(&self.dir.join(&bin), |w| {
            for e in entries {
                w.write_all(&e.data)?;
            }
            for x in xs {
                for v in x {
                    w.write_all(&v.to_le_bytes())?;
                }
            }
            Ok(())
        })?;
        let meta = json!({
            "key": self.key,
            "next_block": next_block,
            "bin": bin,
            "tensors": entries.iter().map(|e| json!({
                "role": e.role as u16, "layer": e.layer, "spec": crate::quantize::spec_name(&e.spec),
                "rows": e.rows, "cols": e.cols, "len": e.data.len(),
                "perm": perms.iter().find(|p| (p.role, p.layer) == (e.role, e.layer)).map(|p| &p.perm),
            })).collect::<Vec<_>>(),
            "reports": reports,
        });
        write_atomic_with(&self.dir.join("state.json"), |w| {
            serde_json::to_writer_pretty(&mut *w, &meta)?;
            Ok(())
        })?;
        // older state files are no longer referenced
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for f in rd.flatten() {
                let n = f.file_name().to_string_lossy().to_string();
                if n.starts_with("state-") && n.ends_with(".bin") && n != bin {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }

    /// Removes the checkpoint (after the output is written).
    pub fn finish(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeq_core::{QuantSpec, Scheme};

    #[test]
    fn save_and_load_round_trip_and_check_the_key() {
        let dir = std::env::temp_dir().join(format!("edgeq-ckpt-{}", std::process::id()));
        let out = dir.join("m.eqf");
        let ck = Checkpoint::new(&out, "k1".into());
        let spec = QuantSpec::per_group(Scheme::Q4Sym, 32);
        let layout = spec.layout(2, 64).unwrap();
        let e = TensorEntry {
            role: TensorRole::Wq,
            layer: 0,
            spec,
            rows: 2,
            cols: 64,
            data: (0..layout.total_bytes).map(|i| i as u8).collect(),
        };
        let rep = LayerReport {
            tensor: "blk.0.attn_q".into(),
            scheme: "q4-g32".into(),
            rel_err: 0.01,
            metric: "output",
            seconds: 1.5,
            note: "damp 0.01".into(),
            details: Value::Null,
        };
        let xs = vec![vec![1.0f32, -2.5, 3.25, 0.0], vec![0.5, 0.25]];
        let perm = PermEntry {
            role: TensorRole::Wq,
            layer: 0,
            perm: (0..64).rev().collect(),
        };
        ck.save(1, std::slice::from_ref(&e), &[], std::slice::from_ref(&rep), &xs).unwrap();
        ck.save(
            2,
            std::slice::from_ref(&e),
            std::slice::from_ref(&perm),
            std::slice::from_ref(&rep),
            &xs,
        )
        .unwrap();
        let r = ck.load(&[2, 1], 2).unwrap().unwrap();
        assert_eq!(r.perms, vec![perm]);
        assert_eq!(r.next_block, 2);
        assert_eq!(r.xs, xs);
        assert_eq!(r.entries[0].data, e.data);
        assert_eq!(r.entries[0].spec, e.spec);
        assert_eq!(
            (r.reports[0].rel_err, r.reports[0].metric, &r.reports[0].note[..]),
            (0.01, "output", "damp 0.01")
        );
        assert!(!ck.dir.join("state-1.bin").exists(), "older state removed");
        // another run's key, or other shapes, do not resume
        assert!(Checkpoint::new(&out, "k2".into()).load(&[2, 1], 2).unwrap().is_none());
        assert!(ck.load(&[3, 1], 2).is_err());
        ck.finish();
        assert!(!ck.dir.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
