//! The INPUT_PERM section (kind 7, EQF 1.3): a column permutation of a
//! linear layer's input. GPTQ with `--act-order` and dynamic groups
//! quantizes columns in order of decreasing Hessian diagonal and forms its
//! groups along that order, so a group is a set of scattered columns
//! (AutoGPTQ's `g_idx`). EQF groups are contiguous column ranges, so such a
//! layer is stored with its columns reordered, `W' = W[:, perm]`, and the
//! runtime gathers its input, `y = W'·x[perm]` (exllama's act-order trick).
//!
//! Unlike ACT_QUANT this section is *required* to read the file right (it is
//! written without `FLAG_OPTIONAL`): a reader that does not know it rejects
//! the file with `UnknownSection` instead of running scrambled weights.
//!
//! ```text
//! PermHeader  (16 bytes)   n_records, n_indices, reserved[2]
//! PermRecord  (8 bytes) × n_records, sorted strictly by (layer, role)
//! u32         × n_indices  per record, at `first`: perm[0..cols], then its
//!                          inverse inv[0..cols] (inv[perm[i]] == i)
//! ```
//! Storing the inverse lets a reader prove each run is a permutation in
//! O(cols) with no memory: `inv[perm[i]] == i` for every `i` makes `perm`
//! injective. Records whose layers share an input (q/k/v) may share a run.
use super::records::TensorRole;
use crate::error::FormatError;
use bytemuck::{Pod, Zeroable};

/// The section header (16 bytes): n_records, n_indices, reserved[2].
pub type PermHeader = super::table::TableHeader;

/// One linear layer's input permutation (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct PermRecord {
    pub layer: u16,
    pub role: u16,
    /// Start of the run (`2·cols` indices: the permutation, then its inverse).
    pub first: u32,
}

const _: () = assert!(core::mem::size_of::<PermRecord>() == 8);

/// The parsed section: records and indices, validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct PermSection<'a> {
    records: &'a [PermRecord],
    indices: &'a [u32],
}

impl<'a> PermSection<'a> {
    /// Parses the section body. `cols_of(layer, role)` gives the input
    /// width of the tensor a record refers to (None: no such tensor).
    pub fn parse(body: &'a [u8], cols_of: impl Fn(u16, u16) -> Option<u32>) -> Result<PermSection<'a>, FormatError> {
        let bad = FormatError::BadInputPerm;
        let names = ["INPUT_PERM section", "INPUT_PERM records", "INPUT_PERM indices"];
        let (records, indices): (&[PermRecord], _) = super::table::split(body, names, bad)?;
        let mut prev = None;
        for r in records {
            let cols = super::table::linear_key(&mut prev, r.layer, r.role, &cols_of, bad)?;
            let run = (cols as u64)
                .checked_mul(2)
                .and_then(|n| n.checked_add(r.first as u64))
                .filter(|&e| e <= indices.len() as u64);
            let Some(run_end) = run else {
                return Err(bad("a permutation runs past the index array"));
            };
            let run = &indices[r.first as usize..run_end as usize];
            let (perm, inv) = run.split_at(cols as usize);
            for (i, &p) in perm.iter().enumerate() {
                if inv.get(p as usize) != Some(&(i as u32)) {
                    return Err(bad("a run is not a permutation of 0..cols followed by its inverse"));
                }
            }
        }
        Ok(PermSection { records, indices })
    }

    pub fn records(&self) -> &'a [PermRecord] {
        self.records
    }

    /// True when no layer is permuted.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The permutation of `(role, layer)`'s input, if any: the stored
    /// column `i` multiplies input `x[perm[i]]`.
    pub fn get(&self, role: TensorRole, layer: u16, cols: u32) -> Option<&'a [u32]> {
        let key = (layer, role as u16);
        let i = self.records.binary_search_by(|r| (r.layer, r.role).cmp(&key)).ok()?;
        let first = self.records[i].first as usize;
        self.indices.get(first..first.checked_add(cols as usize)?)
    }
}
