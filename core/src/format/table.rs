//! The layout the ACT_QUANT and INPUT_PERM sections share: a 16-byte header
//! (`n_records`, `n_indices`, `reserved[2]`), `n_records` fixed-size records
//! keyed by `(layer, role)` and sorted strictly by that key, then
//! `n_indices` u32 indices that the records point into.
use super::records::TensorRole;
use crate::error::FormatError;
use bytemuck::{Pod, Zeroable};

/// The 16-byte header of a table section.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct TableHeader {
    pub n_records: u32,
    pub n_indices: u32,
    pub reserved: [u32; 2],
}

const _: () = assert!(core::mem::size_of::<TableHeader>() == 16);

/// Serializes a table section (the writer's side of [`split`]).
#[cfg(feature = "alloc")]
pub(super) fn write<R: Pod>(records: &[R], indices: &[u32]) -> alloc::vec::Vec<u8> {
    let header = TableHeader {
        n_records: records.len() as u32,
        n_indices: indices.len() as u32,
        reserved: [0; 2],
    };
    let mut out = bytemuck::bytes_of(&header).to_vec();
    out.extend_from_slice(bytemuck::cast_slice(records));
    out.extend_from_slice(bytemuck::cast_slice(indices));
    out
}

/// Splits a section body into its records and indices. `names` are the
/// section, records and indices as a misalignment error names them; `bad`
/// builds the section's own error.
pub(super) fn split<'a, R: Pod>(
    body: &'a [u8],
    names: [&'static str; 3],
    bad: fn(&'static str) -> FormatError,
) -> Result<(&'a [R], &'a [u32]), FormatError> {
    let misaligned = |what| FormatError::Misaligned { what, align: 4 };
    if body.len() < 16 {
        return Err(bad("section shorter than its 16-byte header"));
    }
    let head: &TableHeader = bytemuck::try_from_bytes(&body[..16]).map_err(|_| misaligned(names[0]))?;
    let (n_records, n_indices) = (head.n_records as u64, head.n_indices as u64);
    let rec_end = n_records
        .checked_mul(core::mem::size_of::<R>() as u64)
        .and_then(|v| v.checked_add(16));
    let end = rec_end.and_then(|r| n_indices.checked_mul(4).and_then(|v| v.checked_add(r)));
    let (Some(rec_end), Some(end)) = (rec_end, end) else {
        return Err(bad("record/index counts overflow"));
    };
    if end != body.len() as u64 {
        return Err(bad("size is not 16 + the records + 4·n_indices of its header"));
    }
    let records = bytemuck::try_cast_slice(&body[16..rec_end as usize]).map_err(|_| misaligned(names[1]))?;
    let indices = bytemuck::try_cast_slice(&body[rec_end as usize..]).map_err(|_| misaligned(names[2]))?;
    Ok((records, indices))
}

/// Checks one record's key: strictly after `prev` (then updated), naming a
/// block's linear layer (never the classifier) that the file has, whose
/// input width `cols_of` returns.
pub(super) fn linear_key(
    prev: &mut Option<(u16, u16)>,
    layer: u16,
    role: u16,
    cols_of: &impl Fn(u16, u16) -> Option<u32>,
    bad: fn(&'static str) -> FormatError,
) -> Result<u32, FormatError> {
    if prev.is_some_and(|p| p >= (layer, role)) {
        return Err(bad("records are not sorted by (layer, role), or repeat"));
    }
    *prev = Some((layer, role));
    if !TensorRole::from_u16(role).is_some_and(|x| x.is_linear() && x != TensorRole::Output) || layer == super::GLOBAL_LAYER {
        return Err(bad(
            "a record names a tensor that is not a block's linear layer (the classifier is never one)",
        ));
    }
    cols_of(layer, role).ok_or(bad("a record names a tensor the file does not have"))
}
