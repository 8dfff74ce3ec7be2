//! Resuming the sequential pipeline: after each block, what is done (the
//! block's quantized tensors and reports) and the state the next block
//! needs (every calibration sample's hidden states) are saved in
//! `OUT.partial/`; a later run with the same input, method, settings and
//! calibration tokens (the `key`) continues after the last saved block and
//! writes the same file an uninterrupted run would. The directory is removed
//! once the output is written.
//!
//! Layout:
//! - `block-L.bin`: block L's quantized tensors, back to back, written once
//!   when the block is done. The pipeline then drops them from memory and
//!   keeps [`SpilledBytes`] references, which the final writer streams from:
//!   a run holds one block's tensors, and each block is written once (not
//!   the whole state again after every block).
//! - `acts-N.bin`: the inputs of block N, one run of little-endian f32 per
//!   calibration sample.
//! - `state.json`: the key, the next block, every saved tensor (shape,
//!   scheme, file, offset, length, CRC, input permutation), the reports.
//!
//! Each file is written atomically, the binary ones first, so a crash
//! leaves the previous consistent state; files `state.json` no longer names
//! are removed after it is written.
use super::pipeline::LayerReport;
use crate::model_file::write_atomic_with;
use crate::tensor_data::{SpilledBytes, TensorData};
use anyhow::{ensure, Context, Result};
use edgeq_core::format::writer::{PermEntry, TensorBytes, TensorEntry};
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
    /// The saved tensors, as references into the block files.
    pub entries: Vec<TensorEntry<TensorData>>,
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
        let d = self.dir.display();
        let Ok(text) = std::fs::read_to_string(self.dir.join("state.json")) else {
            return Ok(None);
        };
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{d}: bad state.json"))?;
        if v["key"].as_str() != Some(self.key.as_str()) {
            return Ok(None); // another run's checkpoint: start over (it is replaced at the first save)
        }
        if v.get("acts").is_none() {
            return Ok(None); // an older edgeq's layout: start over
        }
        let next_block = v["next_block"].as_u64().context("next_block")? as usize;
        let file = |v: &Value| -> Result<PathBuf> {
            let name = v.as_str().context("file name")?;
            ensure!(
                !name.contains(['/', '\\']) && !name.starts_with('.'),
                "{d}: state.json names {name:?}, not a file of the checkpoint"
            );
            Ok(self.dir.join(name))
        };
        let mut entries = Vec::new();
        let mut perms = Vec::new();
        for t in v["tensors"].as_array().context("tensors")? {
            let spec = crate::quantize::parse_spec_name(t["spec"].as_str().context("spec")?)?;
            let path = file(&t["file"])?;
            let (offset, len) = (t["offset"].as_u64().context("offset")?, t["len"].as_u64().context("len")?);
            let size = std::fs::metadata(&path)
                .with_context(|| format!("{d}: missing block file {}", path.display()))?
                .len();
            ensure!(
                offset.checked_add(len).is_some_and(|end| end <= size),
                "{}: truncated ({size} bytes; state.json has a tensor at {offset}..{offset}+{len})",
                path.display()
            );
            let e = TensorEntry {
                role: TensorRole::from_u16(t["role"].as_u64().context("role")? as u16).context("role")?,
                layer: t["layer"].as_u64().context("layer")? as u16,
                spec,
                rows: t["rows"].as_u64().context("rows")? as u32,
                cols: t["cols"].as_u64().context("cols")? as u32,
                data: TensorData::Spilled(SpilledBytes {
                    path,
                    offset,
                    len: len as usize,
                    crc: t["crc"].as_u64().context("crc")? as u32,
                }),
            };
            if let Some(p) = t.get("perm").filter(|p| !p.is_null()) {
                let perm: Vec<u32> = serde_json::from_value(p.clone()).context("perm")?;
                ensure!(perm.len() == e.cols as usize, "{d}: bad input permutation");
                perms.push(PermEntry {
                    role: e.role,
                    layer: e.layer,
                    perm,
                });
            }
            entries.push(e);
        }
        let acts_path = file(&v["acts"])?;
        let acts = std::fs::read(&acts_path).with_context(|| format!("{d}: missing {}", acts_path.display()))?;
        let want: usize = sample_lens.iter().map(|n| n * dim * 4).sum();
        ensure!(
            acts.len() == want,
            "{}: {} bytes, but {} calibration samples of these lengths need {want}",
            acts_path.display(),
            acts.len(),
            sample_lens.len()
        );
        let mut at = 0;
        let mut xs = Vec::with_capacity(sample_lens.len());
        for &n in sample_lens {
            let b = &acts[at..at + n * dim * 4];
            at += b.len();
            xs.push(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
        }
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

    /// Saves the state before block `next_block`: the entries still in
    /// memory (block `next_block - 1`'s) go to that block's file and are
    /// replaced in `entries` by references to it.
    pub fn save(
        &self,
        next_block: usize,
        entries: &mut [TensorEntry<TensorData>],
        perms: &[PermEntry],
        reports: &[LayerReport],
        xs: &[Vec<f32>],
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let block = self.dir.join(format!("block-{}.bin", next_block.saturating_sub(1)));
        let fresh: Vec<usize> = (0..entries.len())
            .filter(|&i| matches!(entries[i].data, TensorData::Owned(_)))
            .collect();
        if !fresh.is_empty() {
            write_atomic_with(&block, |w| {
                for &i in &fresh {
                    if let TensorData::Owned(b) = &entries[i].data {
                        w.write_all(b)?;
                    }
                }
                Ok(())
            })?;
            let mut offset = 0u64;
            for &i in &fresh {
                let d = &mut entries[i].data;
                let len = d.byte_len();
                *d = TensorData::Spilled(SpilledBytes {
                    path: block.clone(),
                    offset,
                    len,
                    crc: d.crc32(),
                });
                offset += len as u64;
            }
        }
        let acts = format!("acts-{next_block}.bin");
        write_atomic_with(&self.dir.join(&acts), |w| {
            for v in xs.iter().flatten() {
                w.write_all(&v.to_le_bytes())?;
            }
            Ok(())
        })?;
        let mut tensors = Vec::with_capacity(entries.len());
        let mut keep = vec!["state.json".to_string(), acts.clone()];
        for e in entries.iter() {
            let TensorData::Spilled(s) = &e.data else {
                anyhow::bail!("internal error: tensor {:?} of block {} was not spilled", e.role, e.layer);
            };
            let file = s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            tensors.push(json!({
                "role": e.role as u16, "layer": e.layer, "spec": crate::quantize::spec_name(&e.spec),
                "rows": e.rows, "cols": e.cols, "file": file, "offset": s.offset, "len": s.len, "crc": s.crc,
                "perm": perms.iter().find(|p| (p.role, p.layer) == (e.role, e.layer)).map(|p| &p.perm),
            }));
            if !keep.contains(&file) {
                keep.push(file);
            }
        }
        let meta = json!({
            "key": self.key,
            "next_block": next_block,
            "acts": acts,
            "tensors": tensors,
            "reports": reports,
        });
        write_atomic_with(&self.dir.join("state.json"), |w| {
            serde_json::to_writer_pretty(&mut *w, &meta)?;
            Ok(())
        })?;
        // Files state.json no longer names (the previous block's inputs,
        // another run's blocks, an older layout's state files).
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for f in rd.flatten() {
                let n = f.file_name().to_string_lossy().to_string();
                if n.ends_with(".bin") && !keep.contains(&n) {
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
        let entry = |layer: u16, role, seed: u8| TensorEntry {
            role,
            layer,
            spec,
            rows: 2,
            cols: 64,
            data: TensorData::Owned((0..layout.total_bytes).map(|i| (i as u8).wrapping_mul(seed)).collect()),
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
            role: TensorRole::Wk,
            layer: 1,
            perm: (0..64).rev().collect(),
        };
        // Block 0 (two tensors), then block 1 (one, act-order).
        let mut entries = vec![entry(0, TensorRole::Wq, 3), entry(0, TensorRole::Wk, 5)];
        let want: Vec<Vec<u8>> = entries.iter().map(|e| e.data.to_vec().unwrap()).collect();
        ck.save(1, &mut entries, &[], std::slice::from_ref(&rep), &xs).unwrap();
        assert!(
            entries.iter().all(|e| matches!(e.data, TensorData::Spilled(_))),
            "saved tensors leave memory"
        );
        assert!(ck.dir.join("block-0.bin").exists() && ck.dir.join("acts-1.bin").exists());
        entries.push(entry(1, TensorRole::Wk, 7));
        let want_1 = entries[2].data.to_vec().unwrap();
        ck.save(2, &mut entries, std::slice::from_ref(&perm), std::slice::from_ref(&rep), &xs)
            .unwrap();
        assert_eq!(
            std::fs::metadata(ck.dir.join("block-0.bin")).unwrap().len(),
            2 * layout.total_bytes,
            "block 0 is written once, not again with block 1"
        );
        assert!(!ck.dir.join("acts-1.bin").exists(), "the previous inputs are removed");
        let r = ck.load(&[2, 1], 2).unwrap().unwrap();
        assert_eq!(r.perms, vec![perm]);
        assert_eq!(r.next_block, 2);
        assert_eq!(r.xs, xs);
        let got: Vec<Vec<u8>> = r.entries.iter().map(|e| e.data.to_vec().unwrap()).collect();
        assert_eq!(got, [want[0].clone(), want[1].clone(), want_1]);
        assert_eq!(
            (r.entries[2].layer, r.entries[2].role, r.entries[2].spec),
            (1, TensorRole::Wk, spec)
        );
        assert_eq!(
            (r.reports[0].rel_err, r.reports[0].metric, &r.reports[0].note[..]),
            (0.01, "output", "damp 0.01")
        );
        // another run's key, or other shapes, do not resume
        assert!(Checkpoint::new(&out, "k2".into()).load(&[2, 1], 2).unwrap().is_none());
        assert!(ck.load(&[3, 1], 2).is_err());
        // A truncated block file is an error naming it.
        let f = std::fs::OpenOptions::new().write(true).open(ck.dir.join("block-0.bin")).unwrap();
        f.set_len(layout.total_bytes).unwrap();
        let e = format!("{:#}", ck.load(&[2, 1], 2).err().unwrap());
        assert!(e.contains("block-0.bin") && e.contains("truncated"), "{e}");
        ck.finish();
        assert!(!ck.dir.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
