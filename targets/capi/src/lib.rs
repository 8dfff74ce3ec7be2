//! The C API of the edgeq runtime (`include/edgeq.h`), built as `libedgeq.a`.
//!
//! * **No allocator.** The caller provides every byte: the model image (any
//!   memory, 64-byte aligned), the handles (`edgeq_model`, `edgeq_session`,
//!   `edgeq_sampler`: fixed-size opaque structs declared in the header, so
//!   they can live on the stack, in a static or inside the caller's own
//!   structs) and the session's arena, sized by `edgeq_arena_bytes`.
//! * **Error codes, no panics.** Every entry point checks its arguments
//!   (null pointers, alignment, ranges, sizes, UTF-8, initialised handles)
//!   and returns `EDGEQ_OK` (0) or a negative `EDGEQ_ERR_*` code;
//!   `edgeq_strerror` names it. Nothing in this file indexes, unwraps or
//!   overflows; the runtime underneath validates the model once at open and
//!   is written not to panic on any input (what a `--gc-sections` link still
//!   keeps of its bounds checks is listed in docs/TARGETS.md).
//! * **Borrowing.** A model borrows its image, a session borrows the model
//!   *handle* (the `edgeq_model` struct, at its address) and its arena. The
//!   Rust lifetimes of `Model<'a>` and `Session<'m, 'a, 'r>` are erased to
//!   `'static` inside the opaque structs: keeping those objects alive, in
//!   place and otherwise untouched while they are borrowed is the caller's
//!   side of the contract (stated on every `unsafe` function below and in
//!   the header).
//!
//! Hosted builds (the C test, Linux user space) link `std` for its panic
//! runtime; bare-metal builds (`target_os = "none"`: `x86_64-unknown-none`,
//! `aarch64-unknown-none-softfloat`, firmware) are `no_std` with the panic
//! handler at the end of this file.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_camel_case_types)]

#[cfg(not(target_os = "none"))]
extern crate std;

use core::ffi::c_char;
use core::mem::{align_of, size_of};
use core::ptr;
use edgeq_kernels::Implementation;
use edgeq_runtime::tokenizer::{Tokenizer, TokenizerError};
use edgeq_runtime::{
    arena_bytes_with, Activations, KvCache, MatmulOpts, Model, RuntimeError, Sampler, SamplerConfig, Session, SessionOptions,
};

// ---------------------------------------------------------------------------
// Constants shared with edgeq.h (the C test checks the header's values
// against the functions that return them).

/// Success.
pub const EDGEQ_OK: i32 = 0;
/// A required pointer argument is NULL.
pub const EDGEQ_ERR_NULL: i32 = -1;
/// An argument is out of range (unknown enum value, zero size, NaN, ...).
pub const EDGEQ_ERR_INVALID_ARG: i32 = -2;
/// A buffer or handle is not aligned as required (model image: 64 bytes; arena: 4).
pub const EDGEQ_ERR_ALIGN: i32 = -3;
/// The model image is malformed or fails validation (checksums included).
pub const EDGEQ_ERR_FORMAT: i32 = -4;
/// The model has no usable tokenizer section.
pub const EDGEQ_ERR_NO_TOKENIZER: i32 = -5;
/// The handle was never initialised (or its initialisation failed).
pub const EDGEQ_ERR_HANDLE: i32 = -6;
/// The arena is smaller than `edgeq_arena_bytes` says.
pub const EDGEQ_ERR_ARENA_TOO_SMALL: i32 = -7;
/// The tokens do not fit the session's remaining context.
pub const EDGEQ_ERR_CONTEXT_FULL: i32 = -8;
/// A token id outside the vocabulary.
pub const EDGEQ_ERR_BAD_TOKEN: i32 = -9;
/// An output buffer is too small (the needed size is reported where the call says so).
pub const EDGEQ_ERR_BUFFER_TOO_SMALL: i32 = -10;
/// Text is not valid UTF-8.
pub const EDGEQ_ERR_UTF8: i32 = -11;
/// No logits yet: feed at least one token first.
pub const EDGEQ_ERR_NO_LOGITS: i32 = -12;
/// The tokenizer cannot encode the text (no BOS token, no byte fallback, ...).
pub const EDGEQ_ERR_TOKENIZER: i32 = -13;
/// A size does not fit in `size_t`.
pub const EDGEQ_ERR_OVERFLOW: i32 = -14;
/// The requested kernel implementation is not available in this build or on this CPU.
pub const EDGEQ_ERR_UNSUPPORTED: i32 = -15;
/// An internal invariant failed (a bug: please report).
pub const EDGEQ_ERR_INTERNAL: i32 = -16;

/// KV cache precisions (`kv` arguments).
pub const EDGEQ_KV_F32: i32 = 0;
pub const EDGEQ_KV_F16: i32 = 1;
pub const EDGEQ_KV_Q8: i32 = 2;

/// Activation precisions of integer-weight layers (`edgeq_session_set_acts`).
pub const EDGEQ_ACTS_Q8: i32 = 0;
pub const EDGEQ_ACTS_F32: i32 = 1;

/// Kernel implementations (`edgeq_set_kernels`).
pub const EDGEQ_KERNELS_AUTO: i32 = 0;
pub const EDGEQ_KERNELS_SCALAR: i32 = 1;

/// "No token": the `prev` of the first piece.
pub const EDGEQ_NO_TOKEN: u32 = u32::MAX;

/// Bytes of the opaque handle structs declared in edgeq.h.
pub const EDGEQ_MODEL_SIZE: usize = 1024;
pub const EDGEQ_SESSION_SIZE: usize = 1024;
pub const EDGEQ_SAMPLER_SIZE: usize = 64;

/// A validated model and its tokenizer (opaque to C; `EDGEQ_MODEL_SIZE` bytes).
#[repr(C)]
pub struct edgeq_model {
    opaque: [u64; EDGEQ_MODEL_SIZE / 8],
}

/// A decoding session: KV cache and scratch in a caller arena (opaque; `EDGEQ_SESSION_SIZE` bytes).
#[repr(C)]
pub struct edgeq_session {
    opaque: [u64; EDGEQ_SESSION_SIZE / 8],
}

/// Sampler settings and RNG state (opaque; `EDGEQ_SAMPLER_SIZE` bytes).
#[repr(C)]
pub struct edgeq_sampler {
    opaque: [u64; EDGEQ_SAMPLER_SIZE / 8],
}

/// What `edgeq_model_get_info` reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct edgeq_model_info {
    pub vocab_size: u32,
    /// Longest context the model supports (`max_seq` is clamped to it).
    pub max_seq_len: u32,
    pub dim: u32,
    pub hidden_dim: u32,
    pub n_layers: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// BOS / EOS of the model config (where `edgeq run` stops).
    pub bos_id: u32,
    pub eos_id: u32,
    /// 1 when the model has a usable tokenizer.
    pub has_tokenizer: u32,
    /// 1 when the tokenizer asks for BOS at the start of a prompt.
    pub add_bos: u32,
}

// ---------------------------------------------------------------------------
// What the opaque structs hold.

const MODEL_MAGIC: u64 = u64::from_le_bytes(*b"edgeqMDL");
const SESSION_MAGIC: u64 = u64::from_le_bytes(*b"edgeqSES");
const SAMPLER_MAGIC: u64 = u64::from_le_bytes(*b"edgeqSMP");

/// `magic` first (repr(C)): read alone to recognise an initialised handle.
#[repr(C)]
struct ModelInner {
    magic: u64,
    /// Borrows the caller's image ('static erased: see `edgeq_model_open`).
    model: Model<'static>,
    tok: Option<Tokenizer<'static>>,
}

#[repr(C)]
struct SessionInner {
    magic: u64,
    /// Borrows the caller's `edgeq_model` (its `model` field) and the first
    /// part of the arena ('static erased: see `edgeq_session_init`).
    session: Session<'static, 'static, 'static>,
    /// The rest of the arena: a copy of the logits for the sampler, which
    /// overwrites its input with probabilities (the session's logits stay).
    copy: &'static mut [f32],
    /// The logits after the last token fed (null before the first feed):
    /// `vocab` floats inside the session's own arena buffer.
    logits: *const f32,
    vocab: usize,
    max_batch: usize,
}

#[repr(C)]
struct SamplerInner {
    magic: u64,
    sampler: Sampler,
}

// The header's structs must hold what they stand for, on every target.
const _: () = assert!(size_of::<ModelInner>() <= size_of::<edgeq_model>());
const _: () = assert!(align_of::<ModelInner>() <= align_of::<edgeq_model>());
const _: () = assert!(size_of::<SessionInner>() <= size_of::<edgeq_session>());
const _: () = assert!(align_of::<SessionInner>() <= align_of::<edgeq_session>());
const _: () = assert!(size_of::<SamplerInner>() <= size_of::<edgeq_sampler>());
const _: () = assert!(align_of::<SamplerInner>() <= align_of::<edgeq_sampler>());

type R<T> = Result<T, i32>;

fn code(r: R<()>) -> i32 {
    match r {
        Ok(()) => EDGEQ_OK,
        Err(e) => e,
    }
}

fn runtime_code(e: RuntimeError) -> i32 {
    match e {
        RuntimeError::Format(_) => EDGEQ_ERR_FORMAT,
        RuntimeError::ArenaTooSmall { .. } => EDGEQ_ERR_ARENA_TOO_SMALL,
        RuntimeError::ArenaMisaligned => EDGEQ_ERR_ALIGN,
        RuntimeError::ContextFull { .. } => EDGEQ_ERR_CONTEXT_FULL,
        RuntimeError::BatchTooLarge { .. } => EDGEQ_ERR_INVALID_ARG,
        RuntimeError::BadToken { .. } => EDGEQ_ERR_BAD_TOKEN,
        RuntimeError::Interrupted => EDGEQ_ERR_INTERNAL,
        RuntimeError::OutputTooSmall { .. } => EDGEQ_ERR_BUFFER_TOO_SMALL,
    }
}

fn tokenizer_code(e: TokenizerError) -> i32 {
    match e {
        TokenizerError::OutputTooSmall => EDGEQ_ERR_BUFFER_TOO_SMALL,
        TokenizerError::InvalidToken => EDGEQ_ERR_BAD_TOKEN,
        _ => EDGEQ_ERR_TOKENIZER,
    }
}

fn kv_cache(kv: i32) -> R<KvCache> {
    match kv {
        EDGEQ_KV_F32 => Ok(KvCache::F32),
        EDGEQ_KV_F16 => Ok(KvCache::F16),
        EDGEQ_KV_Q8 => Ok(KvCache::Q8),
        _ => Err(EDGEQ_ERR_INVALID_ARG),
    }
}

/// Checks a pointer the API is about to dereference as a `T`.
fn check_ptr<T>(p: *const T, align: usize) -> R<()> {
    if p.is_null() {
        return Err(EDGEQ_ERR_NULL);
    }
    if (p as usize) % align != 0 {
        return Err(EDGEQ_ERR_ALIGN);
    }
    Ok(())
}

/// Checks a caller buffer of `n` elements of `T` (NULL allowed when `n == 0`)
/// and returns it as a slice.
///
/// # Safety
/// When `n > 0`, `p` must point at `n` initialised, readable `T`s that stay
/// valid and unmodified for `'x`.
unsafe fn slice_in<'x, T>(p: *const T, n: usize) -> R<&'x [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    check_ptr(p, align_of::<T>())?;
    if n > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(EDGEQ_ERR_INVALID_ARG);
    }
    // SAFETY: non-null, aligned, size within isize::MAX (checked above);
    // readable and unaliased by writers for 'x (the caller's contract).
    Ok(unsafe { core::slice::from_raw_parts(p, n) })
}

/// [`slice_in`] for an output buffer.
///
/// # Safety
/// When `n > 0`, `p` must point at `n` writable `T`s (any contents: `T` is
/// a plain integer type here) not accessed by anything else for `'x`.
unsafe fn slice_out<'x, T>(p: *mut T, n: usize) -> R<&'x mut [T]> {
    if n == 0 {
        return Ok(&mut []);
    }
    check_ptr(p, align_of::<T>())?;
    if n > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(EDGEQ_ERR_INVALID_ARG);
    }
    // SAFETY: as in `slice_in`, with exclusive access (the caller's contract).
    Ok(unsafe { core::slice::from_raw_parts_mut(p, n) })
}

/// Writes `v` to an out-parameter.
///
/// # Safety
/// `p`, when non-null and aligned, must be valid for a write of `T`.
unsafe fn put<T>(p: *mut T, v: T) -> R<()> {
    check_ptr(p, align_of::<T>())?;
    // SAFETY: non-null and aligned (checked); writable (the caller's contract).
    unsafe { ptr::write(p, v) };
    Ok(())
}

/// Whether the handle at `p` starts with `magic` (p non-null and aligned).
///
/// # Safety
/// `p` must point at a handle struct of at least 8 bytes the caller owns.
unsafe fn has_magic(p: *const u64, magic: u64) -> bool {
    // SAFETY: the handle structs are at least 8 bytes and 8-aligned (checked
    // by the callers); the first word of every inner struct is its magic.
    unsafe { ptr::read(p) == magic }
}

/// Marks a handle uninitialised (after a failed init), if it can be written.
///
/// # Safety
/// `p`, when non-null and aligned, must be valid for an 8-byte write.
unsafe fn clear_magic(p: *mut u64) {
    if !p.is_null() && (p as usize) % align_of::<u64>() == 0 {
        // SAFETY: non-null, aligned, inside the caller's handle struct.
        unsafe { ptr::write(p, 0) };
    }
}

/// # Safety
/// `m` must be null or point at an `edgeq_model` (initialised or not).
unsafe fn model_ref<'x>(m: *const edgeq_model) -> R<&'x ModelInner> {
    check_ptr(m, align_of::<ModelInner>())?;
    // SAFETY: non-null, aligned, points at an edgeq_model (caller).
    if !unsafe { has_magic(m as *const u64, MODEL_MAGIC) } {
        return Err(EDGEQ_ERR_HANDLE);
    }
    // SAFETY: the magic says `edgeq_model_open` wrote a ModelInner here
    // (size and alignment asserted at compile time); it is only read.
    Ok(unsafe { &*(m as *const ModelInner) })
}

/// # Safety
/// `s` must be null or point at an `edgeq_session` (initialised or not)
/// that nothing else accesses during the call.
unsafe fn session_mut<'x>(s: *mut edgeq_session) -> R<&'x mut SessionInner> {
    check_ptr(s, align_of::<SessionInner>())?;
    // SAFETY: non-null, aligned, points at an edgeq_session (caller).
    if !unsafe { has_magic(s as *const u64, SESSION_MAGIC) } {
        return Err(EDGEQ_ERR_HANDLE);
    }
    // SAFETY: written by `edgeq_session_init` (magic); exclusive for the call.
    Ok(unsafe { &mut *(s as *mut SessionInner) })
}

/// # Safety
/// As [`session_mut`], shared.
unsafe fn session_ref<'x>(s: *const edgeq_session) -> R<&'x SessionInner> {
    check_ptr(s, align_of::<SessionInner>())?;
    // SAFETY: non-null, aligned, points at an edgeq_session (caller).
    if !unsafe { has_magic(s as *const u64, SESSION_MAGIC) } {
        return Err(EDGEQ_ERR_HANDLE);
    }
    // SAFETY: written by `edgeq_session_init` (magic); only read here.
    Ok(unsafe { &*(s as *const SessionInner) })
}

// ---------------------------------------------------------------------------
// Sizes, errors, kernels.

/// Bytes an `edgeq_model` needs (at most `sizeof(edgeq_model)`).
#[no_mangle]
pub extern "C" fn edgeq_model_size() -> usize {
    size_of::<ModelInner>()
}

/// Bytes an `edgeq_session` needs (at most `sizeof(edgeq_session)`).
#[no_mangle]
pub extern "C" fn edgeq_session_size() -> usize {
    size_of::<SessionInner>()
}

/// Bytes an `edgeq_sampler` needs (at most `sizeof(edgeq_sampler)`).
#[no_mangle]
pub extern "C" fn edgeq_sampler_size() -> usize {
    size_of::<SamplerInner>()
}

/// The library version, a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn edgeq_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A static NUL-terminated description of an error code.
#[no_mangle]
pub extern "C" fn edgeq_strerror(code: i32) -> *const c_char {
    let s: &'static [u8] = match code {
        EDGEQ_OK => b"ok\0",
        EDGEQ_ERR_NULL => b"a required pointer argument is NULL\0",
        EDGEQ_ERR_INVALID_ARG => b"an argument is out of range\0",
        EDGEQ_ERR_ALIGN => b"misaligned buffer or handle (model image: 64 bytes, arena: 4 bytes)\0",
        EDGEQ_ERR_FORMAT => b"the model image is malformed or fails validation\0",
        EDGEQ_ERR_NO_TOKENIZER => b"the model has no usable tokenizer\0",
        EDGEQ_ERR_HANDLE => b"the handle is not initialised\0",
        EDGEQ_ERR_ARENA_TOO_SMALL => b"arena too small (size it with edgeq_arena_bytes)\0",
        EDGEQ_ERR_CONTEXT_FULL => b"the tokens do not fit the session's context\0",
        EDGEQ_ERR_BAD_TOKEN => b"token id outside the vocabulary\0",
        EDGEQ_ERR_BUFFER_TOO_SMALL => b"output buffer too small\0",
        EDGEQ_ERR_UTF8 => b"text is not valid UTF-8\0",
        EDGEQ_ERR_NO_LOGITS => b"no logits yet: feed a token first\0",
        EDGEQ_ERR_TOKENIZER => b"the tokenizer cannot encode this text (no BOS token or no byte fallback)\0",
        EDGEQ_ERR_OVERFLOW => b"size overflows size_t\0",
        EDGEQ_ERR_UNSUPPORTED => b"kernel implementation not available here\0",
        EDGEQ_ERR_INTERNAL => b"internal error (a bug in edgeq)\0",
        _ => b"unknown edgeq error code\0",
    };
    s.as_ptr().cast()
}

/// Chooses the matrix-product kernels for the whole process:
/// `EDGEQ_KERNELS_AUTO` (the best this CPU and build support) or
/// `EDGEQ_KERNELS_SCALAR` (the reference: bit-identical on every machine).
#[no_mangle]
pub extern "C" fn edgeq_set_kernels(kernels: i32) -> i32 {
    let imp = match kernels {
        EDGEQ_KERNELS_AUTO => None,
        EDGEQ_KERNELS_SCALAR => Some(Implementation::Scalar),
        _ => return EDGEQ_ERR_INVALID_ARG,
    };
    if edgeq_kernels::force_implementation(imp) {
        EDGEQ_OK
    } else {
        EDGEQ_ERR_UNSUPPORTED
    }
}

/// The kernel implementation in use, a static NUL-terminated name
/// (`"scalar"`, `"x86_64-avx2-fma-f16c"`, ...).
#[no_mangle]
pub extern "C" fn edgeq_kernels_name() -> *const c_char {
    let s: &'static [u8] = match edgeq_kernels::implementation() {
        Implementation::Scalar => b"scalar\0",
        Implementation::Avx2Fma => b"x86_64-avx2-fma\0",
        Implementation::Avx2FmaF16c => b"x86_64-avx2-fma-f16c\0",
        Implementation::Neon => b"aarch64-neon\0",
        Implementation::NeonDot => b"aarch64-neon-dotprod\0",
        Implementation::NeonI8mm => b"aarch64-neon-i8mm\0",
        Implementation::Rvv => b"riscv64-rvv\0",
        Implementation::ArmDsp => b"armv7em-dsp\0",
    };
    s.as_ptr().cast()
}

// ---------------------------------------------------------------------------
// Models.

/// Validates the EQF image `buf[0..len]` (header, sections, every tensor
/// against the config, checksums) and its tokenizer, and writes the handle
/// to `*out`. `buf` must be 64-byte aligned.
///
/// # Safety
/// * `buf` points at `len` readable bytes that stay valid and unmodified
///   for as long as `*out` or any session opened on it is used (the model
///   reads its weights from there on every call: zero copy).
/// * `out` points at an `edgeq_model` the caller owns; while sessions use
///   it, it must stay at the same address and must not be reopened or
///   overwritten (sessions keep a pointer to it).
#[no_mangle]
pub unsafe extern "C" fn edgeq_model_open(buf: *const u8, len: usize, out: *mut edgeq_model) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { model_open(buf, len, out) })
}

unsafe fn model_open(buf: *const u8, len: usize, out: *mut edgeq_model) -> R<()> {
    check_ptr(out, align_of::<ModelInner>())?;
    // SAFETY: `out` is non-null and aligned: an invalid handle until success.
    unsafe { clear_magic(out as *mut u64) };
    if buf.is_null() {
        return Err(EDGEQ_ERR_NULL);
    }
    if (buf as usize) % 64 != 0 {
        return Err(EDGEQ_ERR_ALIGN);
    }
    // SAFETY: `buf` holds `len` readable bytes that outlive every use of the
    // handle (the caller's contract); the lifetime is erased to 'static and
    // bounded by that contract instead.
    let bytes: &'static [u8] = unsafe { slice_in(buf, len)? };
    let model = Model::from_bytes(bytes).map_err(runtime_code)?;
    let tok = Tokenizer::parse(model.eqf.tokenizer_bytes()).ok();
    let inner = ModelInner {
        magic: MODEL_MAGIC,
        model,
        tok,
    };
    // SAFETY: `out` is non-null, aligned for ModelInner and at least its
    // size (compile-time assertions): a plain write, nothing to drop.
    unsafe { ptr::write(out as *mut ModelInner, inner) };
    Ok(())
}

/// Fills `*out` with the model's dimensions and special tokens.
///
/// # Safety
/// `model` points at an `edgeq_model`; `out` at a writable `edgeq_model_info`.
#[no_mangle]
pub unsafe extern "C" fn edgeq_model_get_info(model: *const edgeq_model, out: *mut edgeq_model_info) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { model_info(model, out) })
}

unsafe fn model_info(model: *const edgeq_model, out: *mut edgeq_model_info) -> R<()> {
    // SAFETY: caller's contract.
    let m = unsafe { model_ref(model)? };
    let c = &m.model.cfg;
    let info = edgeq_model_info {
        vocab_size: c.vocab_size,
        max_seq_len: c.max_seq_len,
        dim: c.dim,
        hidden_dim: c.hidden_dim,
        n_layers: c.n_layers,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        bos_id: c.bos_id,
        eos_id: c.eos_id,
        has_tokenizer: m.tok.is_some() as u32,
        add_bos: m.tok.is_some_and(|t| t.add_bos_default()) as u32,
    };
    // SAFETY: caller's contract.
    unsafe { put(out, info) }
}

/// The session geometry `edgeq_arena_bytes` and `edgeq_session_init` agree on.
struct Plan {
    max_seq: usize,
    max_batch: usize,
    kv: KvCache,
    /// Offset of the logits copy (runtime part rounded up to 4 bytes).
    copy_at: usize,
    vocab: usize,
    /// Total arena bytes.
    total: usize,
}

fn plan(m: &ModelInner, max_seq: u32, max_batch: u32, kv: i32) -> R<Plan> {
    let kv = kv_cache(kv)?;
    if max_seq == 0 || max_batch == 0 {
        return Err(EDGEQ_ERR_INVALID_ARG);
    }
    let c = &m.model.cfg;
    // As Session::with_options clamps them (max_seq_len >= 1: validated).
    let max_seq = (max_seq as usize).min(c.max_seq_len as usize);
    let max_batch = (max_batch as usize).min(max_seq);
    let runtime = arena_bytes_with(c, max_seq, max_batch, kv);
    let vocab = c.vocab_size as usize;
    let copy_at = runtime.checked_add(3).ok_or(EDGEQ_ERR_OVERFLOW)? & !3;
    let total = vocab
        .checked_mul(4)
        .and_then(|b| b.checked_add(copy_at))
        .ok_or(EDGEQ_ERR_OVERFLOW)?;
    // arena_bytes_with saturates: a saturated size can never be provided.
    if runtime == usize::MAX || total > isize::MAX as usize {
        return Err(EDGEQ_ERR_OVERFLOW);
    }
    Ok(Plan {
        max_seq,
        max_batch,
        kv,
        copy_at,
        vocab,
        total,
    })
}

/// Writes to `*out` the bytes of arena a session with this context
/// (`max_seq` positions, clamped to the model's), batch size (`max_batch`
/// tokens per forward pass; `edgeq_feed` splits longer inputs) and KV
/// cache precision (`EDGEQ_KV_*`) needs.
///
/// # Safety
/// `model` points at an `edgeq_model`; `out` at a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn edgeq_arena_bytes(model: *const edgeq_model, max_seq: u32, max_batch: u32, kv: i32, out: *mut usize) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { arena_bytes(model, max_seq, max_batch, kv, out) })
}

unsafe fn arena_bytes(model: *const edgeq_model, max_seq: u32, max_batch: u32, kv: i32, out: *mut usize) -> R<()> {
    // SAFETY: caller's contract.
    let m = unsafe { model_ref(model)? };
    let p = plan(m, max_seq, max_batch, kv)?;
    // SAFETY: caller's contract.
    unsafe { put(out, p.total) }
}

// ---------------------------------------------------------------------------
// Sessions.

/// Creates a session of `max_seq` positions (clamped to the model's),
/// fed in passes of at most `max_batch` tokens, with a KV cache of
/// precision `kv`, in the caller's arena (`arena_len` bytes, at least what
/// `edgeq_arena_bytes` reports for the same arguments, 4-byte aligned; 64
/// recommended). Activations default to `EDGEQ_ACTS_Q8`.
///
/// # Safety
/// * `session` points at an `edgeq_session` the caller owns.
/// * `model` points at an `edgeq_model` opened by `edgeq_model_open`; it
///   and its image must stay valid, in place and unmodified while the
///   session is used (the session keeps a pointer to the handle).
/// * `arena` points at `arena_len` writable bytes used by nothing else
///   while the session is used (the session keeps its KV cache there).
#[no_mangle]
pub unsafe extern "C" fn edgeq_session_init(
    session: *mut edgeq_session,
    model: *const edgeq_model,
    arena: *mut u8,
    arena_len: usize,
    max_seq: u32,
    max_batch: u32,
    kv: i32,
) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { session_init(session, model, arena, arena_len, max_seq, max_batch, kv) })
}

unsafe fn session_init(
    session: *mut edgeq_session,
    model: *const edgeq_model,
    arena: *mut u8,
    arena_len: usize,
    max_seq: u32,
    max_batch: u32,
    kv: i32,
) -> R<()> {
    check_ptr(session, align_of::<SessionInner>())?;
    // SAFETY: non-null and aligned: an invalid handle until success.
    unsafe { clear_magic(session as *mut u64) };
    // SAFETY: caller's contract; the reference is used as `'static`, bounded
    // by the caller's promise to keep the handle alive and in place.
    let m: &'static ModelInner = unsafe { model_ref(model)? };
    let p = plan(m, max_seq, max_batch, kv)?;
    check_ptr(arena, 4)?;
    if arena_len < p.total {
        return Err(EDGEQ_ERR_ARENA_TOO_SMALL);
    }
    // SAFETY: `arena` holds `arena_len` writable bytes used by nothing else
    // while the session lives (caller's contract; lifetime erased as above).
    let arena: &'static mut [u8] = unsafe { slice_out(arena, arena_len)? };
    // [runtime part, padded to 4 | vocab floats for the sampler's copy]
    let (run, rest) = arena.split_at_mut_checked(p.copy_at).ok_or(EDGEQ_ERR_ARENA_TOO_SMALL)?;
    let copy_bytes = rest.get_mut(..p.vocab.saturating_mul(4)).ok_or(EDGEQ_ERR_ARENA_TOO_SMALL)?;
    // 4-byte aligned: the arena is, and copy_at is a multiple of 4.
    let copy: &'static mut [f32] = bytemuck::try_cast_slice_mut(copy_bytes).map_err(|_| EDGEQ_ERR_ALIGN)?;
    let opts = SessionOptions {
        kv: p.kv,
        matmul: MatmulOpts::default(),
    };
    let s = Session::with_options(&m.model, run, p.max_seq, p.max_batch, opts).map_err(runtime_code)?;
    let inner = SessionInner {
        magic: SESSION_MAGIC,
        session: s,
        copy,
        logits: ptr::null(),
        vocab: p.vocab,
        max_batch: p.max_batch,
    };
    // SAFETY: `session` is non-null, aligned for SessionInner and at least
    // its size (compile-time assertions): a plain write, nothing to drop.
    unsafe { ptr::write(session as *mut SessionInner, inner) };
    Ok(())
}

/// Sets the activation precision of integer-weight layers from the next
/// `edgeq_feed` on: `EDGEQ_ACTS_Q8` (the default: int8 dot products, as
/// `edgeq run --acts q8`) or `EDGEQ_ACTS_F32` (exact).
///
/// # Safety
/// `session` points at an `edgeq_session` nothing else uses during the call.
#[no_mangle]
pub unsafe extern "C" fn edgeq_session_set_acts(session: *mut edgeq_session, acts: i32) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { session_set_acts(session, acts) })
}

unsafe fn session_set_acts(session: *mut edgeq_session, acts: i32) -> R<()> {
    // SAFETY: caller's contract.
    let s = unsafe { session_mut(session)? };
    let acts = match acts {
        EDGEQ_ACTS_Q8 => Activations::Q8,
        EDGEQ_ACTS_F32 => Activations::F32,
        _ => return Err(EDGEQ_ERR_INVALID_ARG),
    };
    s.session.set_matmul(MatmulOpts { acts, threads: 1 });
    Ok(())
}

/// Feeds `tokens[0..n]` at the session's position (in passes of at most
/// `max_batch`) and keeps the logits after the last one for
/// `edgeq_logits` / `edgeq_sample`. Checks first that every id is in the
/// vocabulary and that all `n` fit the context: on those errors nothing
/// is fed. `n == 0` does nothing.
///
/// # Safety
/// `session` points at an `edgeq_session` nothing else uses during the call
/// (its model and arena still valid: see `edgeq_session_init`); `tokens`
/// points at `n` readable `uint32_t` (may be NULL when `n == 0`).
#[no_mangle]
pub unsafe extern "C" fn edgeq_feed(session: *mut edgeq_session, tokens: *const u32, n: usize) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { feed(session, tokens, n) })
}

unsafe fn feed(session: *mut edgeq_session, tokens: *const u32, n: usize) -> R<()> {
    // SAFETY: caller's contract.
    let s = unsafe { session_mut(session)? };
    // SAFETY: caller's contract.
    let tokens = unsafe { slice_in(tokens, n)? };
    if tokens.is_empty() {
        return Ok(());
    }
    if tokens.iter().any(|&t| t as usize >= s.vocab) {
        return Err(EDGEQ_ERR_BAD_TOKEN);
    }
    let room = s.session.max_seq().saturating_sub(s.session.pos());
    if tokens.len() > room {
        return Err(EDGEQ_ERR_CONTEXT_FULL);
    }
    s.logits = ptr::null();
    let mut last: *const f32 = ptr::null();
    for chunk in tokens.chunks(s.max_batch.max(1)) {
        let logits = s.session.forward(chunk, None).map_err(runtime_code)?;
        if logits.len() != s.vocab {
            return Err(EDGEQ_ERR_INTERNAL);
        }
        last = logits.as_ptr();
    }
    s.logits = last;
    Ok(())
}

/// The logits after the last token fed: `*out` points at `*n` floats
/// (the vocabulary size) inside the arena, valid until the next
/// `edgeq_feed`, `edgeq_session_reset` or `edgeq_session_init` of this
/// session. `EDGEQ_ERR_NO_LOGITS` before the first feed.
///
/// # Safety
/// `session` points at an `edgeq_session`; `out` and `n` at writable
/// out-parameters.
#[no_mangle]
pub unsafe extern "C" fn edgeq_logits(session: *const edgeq_session, out: *mut *const f32, n: *mut usize) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { logits(session, out, n) })
}

unsafe fn logits(session: *const edgeq_session, out: *mut *const f32, n: *mut usize) -> R<()> {
    // SAFETY: caller's contract.
    let s = unsafe { session_ref(session)? };
    check_ptr(out, align_of::<*const f32>())?;
    check_ptr(n, align_of::<usize>())?;
    if s.logits.is_null() {
        return Err(EDGEQ_ERR_NO_LOGITS);
    }
    // SAFETY: both checked non-null and aligned; writable (caller).
    unsafe {
        put(out, s.logits)?;
        put(n, s.vocab)
    }
}

/// The session's position (tokens fed since init or reset) and context.
///
/// # Safety
/// `session` points at an `edgeq_session`; `pos` and `max_seq` are NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn edgeq_session_pos(session: *const edgeq_session, pos: *mut u32, max_seq: *mut u32) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { session_pos(session, pos, max_seq) })
}

unsafe fn session_pos(session: *const edgeq_session, pos: *mut u32, max_seq: *mut u32) -> R<()> {
    // SAFETY: caller's contract.
    let s = unsafe { session_ref(session)? };
    // Both at most the model's max_seq_len (<= 2^20).
    let (p, m) = (s.session.pos() as u32, s.session.max_seq() as u32);
    // SAFETY: each written only when non-null (put checks); caller's contract.
    unsafe {
        if !pos.is_null() {
            put(pos, p)?;
        }
        if !max_seq.is_null() {
            put(max_seq, m)?;
        }
    }
    Ok(())
}

/// Forgets the context: the next token fed goes to position 0.
///
/// # Safety
/// `session` points at an `edgeq_session` nothing else uses during the call.
#[no_mangle]
pub unsafe extern "C" fn edgeq_session_reset(session: *mut edgeq_session) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { session_reset(session) })
}

unsafe fn session_reset(session: *mut edgeq_session) -> R<()> {
    // SAFETY: caller's contract.
    let s = unsafe { session_mut(session)? };
    s.session.reset();
    s.logits = ptr::null();
    Ok(())
}

// ---------------------------------------------------------------------------
// Sampling.

fn sampler_init(sampler: *mut edgeq_sampler, temperature: f32, top_p: f32, seed: u64) -> R<()> {
    check_ptr(sampler, align_of::<SamplerInner>())?;
    if temperature.is_nan() || temperature < 0.0 || temperature == f32::INFINITY || top_p.is_nan() {
        return Err(EDGEQ_ERR_INVALID_ARG);
    }
    let inner = SamplerInner {
        magic: SAMPLER_MAGIC,
        sampler: Sampler::new(SamplerConfig { temperature, top_p, seed }),
    };
    // SAFETY: non-null, aligned, at least the size (compile-time
    // assertions); the caller owns the struct. A plain write.
    unsafe { ptr::write(sampler as *mut SamplerInner, inner) };
    Ok(())
}

/// Initialises a sampler: `temperature` 0 is greedy (argmax); above 0 the
/// softmax at that temperature, restricted to the nucleus of mass `top_p`
/// (`top_p` <= 0 or >= 1: no restriction), with a xorshift RNG seeded by
/// `seed` — the sampler of `edgeq run --temp T --top-p P --seed S`.
///
/// Takes floats: not callable from code built without an FPU (a Linux
/// kernel): use `edgeq_sampler_init_milli` there.
///
/// # Safety
/// `sampler` points at an `edgeq_sampler` the caller owns.
#[no_mangle]
pub unsafe extern "C" fn edgeq_sampler_init(sampler: *mut edgeq_sampler, temperature: f32, top_p: f32, seed: u64) -> i32 {
    code(sampler_init(sampler, temperature, top_p, seed))
}

/// `edgeq_sampler_init` with the temperature and top-p in thousandths
/// (`800` = 0.8: exactly the float `0.8f`), for callers without floats.
///
/// # Safety
/// `sampler` points at an `edgeq_sampler` the caller owns.
#[no_mangle]
pub unsafe extern "C" fn edgeq_sampler_init_milli(sampler: *mut edgeq_sampler, temperature_milli: u32, top_p_milli: u32, seed: u64) -> i32 {
    // n / 1000 in f32 is the float nearest to the decimal n/1000 (one
    // correctly rounded division of two exactly representable values) for
    // n < 2^24; larger values are rejected.
    if temperature_milli >= 1 << 24 || top_p_milli >= 1 << 24 {
        return EDGEQ_ERR_INVALID_ARG;
    }
    code(sampler_init(
        sampler,
        temperature_milli as f32 / 1000.0,
        top_p_milli as f32 / 1000.0,
        seed,
    ))
}

/// Picks the next token from the session's current logits into `*token`.
/// `sampler` NULL: greedy (argmax, the first on ties). The session's
/// logits are left as they are (the sampler works on a copy in the arena),
/// and nothing is fed: call `edgeq_feed` with the token to continue.
///
/// # Safety
/// `session` points at an `edgeq_session` and `sampler` (when not NULL) at
/// an `edgeq_sampler`, neither used by anything else during the call;
/// `token` at a writable `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn edgeq_sample(session: *mut edgeq_session, sampler: *mut edgeq_sampler, token: *mut u32) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { sample(session, sampler, token) })
}

unsafe fn sample(session: *mut edgeq_session, sampler: *mut edgeq_sampler, token: *mut u32) -> R<()> {
    // SAFETY: caller's contract.
    let s = unsafe { session_mut(session)? };
    check_ptr(token, align_of::<u32>())?;
    if s.logits.is_null() {
        return Err(EDGEQ_ERR_NO_LOGITS);
    }
    // SAFETY: set by `feed` from the `vocab` logits the session returned;
    // they live in the arena (borrowed by the session for 'static, see
    // `edgeq_session_init`) and nothing writes them until the next feed,
    // reset or init, each of which clears or replaces this pointer.
    let logits = unsafe { core::slice::from_raw_parts(s.logits, s.vocab) };
    let t = if sampler.is_null() {
        edgeq_runtime::sampler::argmax(logits)
    } else {
        check_ptr(sampler, align_of::<SamplerInner>())?;
        // SAFETY: non-null, aligned, points at an edgeq_sampler (caller).
        if !unsafe { has_magic(sampler as *const u64, SAMPLER_MAGIC) } {
            return Err(EDGEQ_ERR_HANDLE);
        }
        // SAFETY: written by `sampler_init` (magic); exclusive for the call.
        let smp = unsafe { &mut *(sampler as *mut SamplerInner) };
        let copy = s.copy.get_mut(..logits.len()).ok_or(EDGEQ_ERR_INTERNAL)?;
        copy.copy_from_slice(logits);
        smp.sampler.sample(copy)
    };
    // SAFETY: checked non-null and aligned; writable (caller).
    unsafe { put(token, t) }
}

// ---------------------------------------------------------------------------
// Tokenizer.

/// Encodes `text[0..len]` (UTF-8, no NUL needed), preceded by BOS when
/// `add_bos` is non-zero, into `out[0..cap]`; `*n` gets the token count.
/// `out` is also the encoder's work space: `len + 3` slots always suffice
/// (fewer may fail with `EDGEQ_ERR_BUFFER_TOO_SMALL` even when the result
/// would fit). Needs no session.
///
/// # Safety
/// `model` points at an `edgeq_model`; `text` at `len` readable bytes (NULL
/// allowed when `len == 0`); `out` at `cap` writable `uint32_t`; `n` at a
/// writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn edgeq_tokenize(
    model: *const edgeq_model,
    text: *const c_char,
    len: usize,
    add_bos: i32,
    out: *mut u32,
    cap: usize,
    n: *mut usize,
) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { tokenize(model, text, len, add_bos, out, cap, n) })
}

unsafe fn tokenize(
    model: *const edgeq_model,
    text: *const c_char,
    len: usize,
    add_bos: i32,
    out: *mut u32,
    cap: usize,
    n: *mut usize,
) -> R<()> {
    // SAFETY: caller's contract.
    let m = unsafe { model_ref(model)? };
    check_ptr(n, align_of::<usize>())?;
    // SAFETY: caller's contract.
    let bytes = unsafe { slice_in(text as *const u8, len)? };
    // SAFETY: caller's contract.
    let out = unsafe { slice_out(out, cap)? };
    let tok = m.tok.as_ref().ok_or(EDGEQ_ERR_NO_TOKENIZER)?;
    let text = core::str::from_utf8(bytes).map_err(|_| EDGEQ_ERR_UTF8)?;
    let count = tok.encode(text, add_bos != 0, out).map_err(tokenizer_code)?;
    // SAFETY: checked non-null and aligned; writable (caller).
    unsafe { put(n, count) }
}

/// The bytes token `token` stands for after token `prev` (`EDGEQ_NO_TOKEN`
/// at the start): control tokens give none, byte tokens one raw byte, and
/// after BOS a SentencePiece piece loses its leading space — what
/// `edgeq run` prints. Writes them to `out[0..cap]` and their count to
/// `*n`, plus a NUL after them when `cap > *n` (not counted). Pieces are
/// bytes: one UTF-8 character may span several tokens. When `cap` is too
/// small: `EDGEQ_ERR_BUFFER_TOO_SMALL`, `*n` = the bytes needed, nothing
/// written to `out`.
///
/// # Safety
/// `model` points at an `edgeq_model`; `out` at `cap` writable bytes (NULL
/// allowed when `cap == 0`); `n` at a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn edgeq_detokenize_piece(
    model: *const edgeq_model,
    prev: u32,
    token: u32,
    out: *mut c_char,
    cap: usize,
    n: *mut usize,
) -> i32 {
    // SAFETY: the caller's contract above.
    code(unsafe { detokenize_piece(model, prev, token, out, cap, n) })
}

unsafe fn detokenize_piece(model: *const edgeq_model, prev: u32, token: u32, out: *mut c_char, cap: usize, n: *mut usize) -> R<()> {
    // SAFETY: caller's contract.
    let m = unsafe { model_ref(model)? };
    check_ptr(n, align_of::<usize>())?;
    // SAFETY: caller's contract.
    let out = unsafe { slice_out(out as *mut u8, cap)? };
    let tok = m.tok.as_ref().ok_or(EDGEQ_ERR_NO_TOKENIZER)?;
    let piece = tok.decode_piece(prev, token).map_err(tokenizer_code)?;
    // SAFETY: checked non-null and aligned; writable (caller).
    unsafe { put(n, piece.len())? };
    let dst = out.get_mut(..piece.len()).ok_or(EDGEQ_ERR_BUFFER_TOO_SMALL)?;
    dst.copy_from_slice(piece);
    if let Some(nul) = out.get_mut(piece.len()) {
        *nul = 0;
    }
    Ok(())
}

// ---------------------------------------------------------------------------

/// Bare metal: nothing to unwind to and no one to print to. The API checks
/// its arguments and the runtime validates the model once at open, so the
/// bounds checks the compiler keeps (listed in docs/TARGETS.md) should be
/// unreachable; should one fire anyway, the CPU executes the architecture's
/// trap instruction — what the Linux kernel's `BUG()` does (`ud2` on x86,
/// `brk` on arm64): the kernel reports an oops with a backtrace and kills
/// the calling task, firmware takes its fault handler — instead of
/// returning into inconsistent state.
#[cfg(all(target_os = "none", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        // SAFETY: each instruction only raises the CPU's undefined-instruction
        // or breakpoint exception; it touches no memory and no registers.
        #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
        unsafe {
            core::arch::asm!("ud2", options(nomem, nostack))
        };
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            core::arch::asm!("brk #0x1", options(nomem, nostack))
        };
        // SAFETY: as above.
        #[cfg(target_arch = "arm")]
        unsafe {
            core::arch::asm!("udf #0", options(nomem, nostack))
        };
        // SAFETY: as above.
        #[cfg(any(target_arch = "riscv32", target_arch = "riscv64"))]
        unsafe {
            core::arch::asm!("unimp", options(nomem, nostack))
        };
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests;
