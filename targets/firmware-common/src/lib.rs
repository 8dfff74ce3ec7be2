//! What every edgeq firmware image shares, independent of the board:
//!
//! * [`MODEL`]: the EQF file named by `EDGEQ_MODEL` at build time, embedded
//!   in flash (`.rodata`) at a 64-byte aligned address through [`Aligned`]
//!   (the EQF reader needs 64; plain `include_bytes!` gives 1);
//! * [`arena`]: the session's KV cache and scratch, [`config::ARENA_BYTES`]
//!   bytes computed by the build script with `edgeq_runtime::arena_bytes_with`
//!   for the KV cache precision of `EDGEQ_KV`,
//!   in a zero-initialised static ([`StaticCell`], in `.bss`, no `static mut`)
//!   or, with the `heap` feature, allocated from an `embedded-alloc`
//!   `LlffHeap`;
//! * [`generate`]: the story from BOS, token by token, the same loop as the
//!   host's `edgeq run` (so their texts can be compared byte for byte);
//! * [`stack`]: the stack high-water mark from a painted stack.
//!
//! The board crates provide the console, the clock, the exit path and the
//! panic handler.
#![no_std]

#[cfg(feature = "heap")]
extern crate alloc;

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use edgeq_runtime::tokenizer::{Tokenizer, TokenizerError};
use edgeq_runtime::{MatmulOpts, Model, RuntimeError, Sampler, SamplerConfig, Session, SessionOptions};

/// The build-time configuration (`EDGEQ_*` variables; see `build.rs`).
pub mod config {
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}

/// Places `B` (e.g. the bytes of `include_bytes!`) at a 64-byte aligned address.
#[repr(C, align(64))]
pub struct Aligned<B: ?Sized>(pub B);

/// The embedded model, in flash.
pub static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/model.eqf")));

/// A static handed out as `&'static mut T` at most once (no `static mut`).
/// Zero-initialised contents land in `.bss`.
pub struct StaticCell<T> {
    v: UnsafeCell<T>,
    taken: AtomicBool,
}

// SAFETY: the only access to `v` is through `take`, which hands out the one
// mutable reference at most once (guarded by the atomic flag).
unsafe impl<T: Send> Sync for StaticCell<T> {}

impl<T> StaticCell<T> {
    pub const fn new(v: T) -> Self {
        StaticCell {
            v: UnsafeCell::new(v),
            taken: AtomicBool::new(false),
        }
    }
    /// The value, the first time; `None` afterwards.
    #[allow(clippy::mut_from_ref)] // interior mutability, handed out once
    pub fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: first and only take (see above); the static lives forever.
        Some(unsafe { &mut *self.v.get() })
    }
}

/// The generated token ids (BOS first), printed after the text.
static IDS: StaticCell<[u32; config::TOKENS + 1]> = StaticCell::new([0; config::TOKENS + 1]);

#[cfg(not(feature = "heap"))]
static ARENA: StaticCell<Aligned<[u8; config::ARENA_BYTES]>> = StaticCell::new(Aligned([0; config::ARENA_BYTES]));

/// The session's arena ([`config::ARENA_BYTES`] bytes, 64-byte aligned),
/// the first time it is called. From a static; with the `heap` feature, from
/// the global `LlffHeap` (see [`heap`]).
pub fn arena() -> Option<&'static mut [u8]> {
    #[cfg(not(feature = "heap"))]
    {
        ARENA.take().map(|a| &mut a.0[..])
    }
    #[cfg(feature = "heap")]
    {
        heap::arena()
    }
}

/// Static RAM the arena occupies in this build (the heap's memory with `heap`).
pub const fn arena_static_bytes() -> usize {
    #[cfg(not(feature = "heap"))]
    {
        config::ARENA_BYTES
    }
    #[cfg(feature = "heap")]
    {
        heap::HEAP_BYTES
    }
}

/// The `heap` variant: an `embedded-alloc` `LlffHeap` as the global
/// allocator over a static of [`heap::HEAP_BYTES`], from which the arena is
/// allocated like any other heap object.
#[cfg(feature = "heap")]
pub mod heap {
    use super::{config, Aligned, StaticCell};
    use core::alloc::Layout;
    use embedded_alloc::LlffHeap;

    #[global_allocator]
    static HEAP: LlffHeap = LlffHeap::empty();

    /// The arena, 64 bytes of alignment slack and the allocator's bookkeeping.
    pub const HEAP_BYTES: usize = config::ARENA_BYTES + 64 + 64;
    static HEAP_MEM: StaticCell<Aligned<[u8; HEAP_BYTES]>> = StaticCell::new(Aligned([0; HEAP_BYTES]));

    pub(crate) fn arena() -> Option<&'static mut [u8]> {
        let mem = &mut HEAP_MEM.take()?.0;
        // SAFETY: called once (HEAP_MEM.take succeeded), before any
        // allocation, with memory that is ours for the program's life.
        unsafe { HEAP.init(mem.as_mut_ptr() as usize, mem.len()) };
        let layout = Layout::from_size_align(config::ARENA_BYTES.max(1), 64).ok()?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` is a fresh, zeroed allocation of ARENA_BYTES that is never freed.
        Some(unsafe { core::slice::from_raw_parts_mut(p, config::ARENA_BYTES) })
    }

    /// Bytes in use / free in the heap.
    pub fn usage() -> (usize, usize) {
        (HEAP.used(), HEAP.free())
    }
}

/// Where the firmware writes (semihosting, a UART, defmt).
pub trait Console {
    fn write(&mut self, bytes: &[u8]);
}

/// Adapts a [`Console`] to `core::fmt::Write`.
pub struct Fmt<'c, C: Console + ?Sized>(pub &'c mut C);
impl<C: Console + ?Sized> fmt::Write for Fmt<'_, C> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    Runtime(RuntimeError),
    Tokenizer(TokenizerError),
    /// The vocabulary has no BOS token to start from.
    NoBos,
    /// The arena was already handed out (or the heap could not provide it).
    NoArena,
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Self {
        Error::Runtime(e)
    }
}
impl From<TokenizerError> for Error {
    fn from(e: TokenizerError) -> Self {
        Error::Tokenizer(e)
    }
}
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Runtime(e) => write!(f, "{e}"),
            Error::Tokenizer(e) => write!(f, "tokenizer: {e:?}"),
            Error::NoBos => f.write_str("the vocabulary has no BOS token"),
            Error::NoArena => f.write_str("no arena"),
        }
    }
}

/// What [`generate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Report {
    /// Tokens generated (printed), at most [`config::TOKENS`].
    pub generated: usize,
    /// Forward passes run (the BOS prefill, then one per generated token but the last).
    pub steps: usize,
    /// Clock ticks spent in model validation and in generation.
    pub t_load: u64,
    pub t_gen: u64,
}

/// Generates [`config::TOKENS`] tokens from BOS with the build's sampler
/// settings and writes the decoded text to `out` as it goes, exactly as the
/// host's `edgeq run MODEL -n TOKENS --temp T` prints it (without its final
/// newline): it stops early at EOS or BOS, and when the context is full.
/// `clock` is any monotonic tick counter (only differences are used).
/// The token ids (BOS, then each generated one) go to `ids` while it has room.
///
/// Stack: the model's validation ([`load`]), the header and the figures
/// ([`run`]) each run in a frame of their own (`inline(never)`), so that
/// only the model, tokenizer and session handles are on the stack below
/// `Session::step`, the deepest call.
#[inline(never)]
pub fn generate<C: Console + ?Sized>(
    model_bytes: &[u8],
    arena: &mut [u8],
    ids: &mut [u32],
    out: &mut C,
    clock: &mut dyn FnMut() -> u64,
) -> Result<Report, Error> {
    let t0 = clock();
    // The model, tokenizer and session are used where they were returned
    // (borrowed out of their `Result`s, not moved out: a move would keep a
    // second copy in this frame).
    let loaded = load(model_bytes);
    let (model, tok) = match &loaded {
        Ok((model, tok)) => (model, tok),
        Err(e) => return Err(*e),
    };
    let t1 = clock();
    // (the three ids, not a 128-byte copy of the config on the stack)
    let (bos_id, eos_id, vocab) = (model.cfg.bos_id, model.cfg.eos_id, model.cfg.vocab_size);
    let bos = tok.bos().unwrap_or(bos_id);
    if bos >= vocab {
        return Err(Error::NoBos);
    }
    let (arena, logits_copy) = arena.split_at_mut(config::SESSION_BYTES.min(arena.len()));
    let mut matmul = MatmulOpts::default();
    if let Some(acts) = config::ACTS {
        matmul = MatmulOpts { acts, threads: 1 };
    }
    let opts = SessionOptions { kv: config::KV, matmul };
    let mut session = Session::with_options(model, arena, config::MAX_SEQ, 1, opts);
    let s = match &mut session {
        Ok(s) => s,
        Err(e) => return Err((*e).into()),
    };
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: config::TEMPERATURE,
        top_p: config::TOP_P,
        seed: config::SEED,
    });
    let mut record = |i: usize, t: u32| {
        if let Some(slot) = ids.get_mut(i) {
            *slot = t;
        }
    };
    record(0, bos);
    let mut steps = 1;
    let mut logits: &[f32] = s.step(bos)?;
    let mut prev = bos;
    let mut generated = 0;
    for _ in 0..config::TOKENS {
        let next = if config::TEMPERATURE > 0.0 {
            // The sampler rewrites its input: sample from a copy.
            let copy: &mut [f32] = cast_f32(logits_copy, logits.len());
            copy.iter_mut().zip(logits).for_each(|(c, l)| *c = *l);
            sampler.sample(copy)
        } else {
            edgeq_runtime::sampler::argmax(logits)
        };
        if next == eos_id || next == bos_id {
            break;
        }
        if let Ok(p) = tok.decode_piece(prev, next) {
            out.write(p);
        }
        generated += 1;
        record(generated, next);
        prev = next;
        if s.pos() >= s.max_seq() {
            break;
        }
        logits = s.step(next)?;
        steps += 1;
    }
    let t2 = clock();
    Ok(Report {
        generated,
        steps,
        t_load: t1.wrapping_sub(t0),
        t_gen: t2.wrapping_sub(t1),
    })
}

/// Validates the model (CRCs included) and parses its tokenizer, in a frame
/// of its own: the temporaries of validation are gone before generation.
#[inline(never)]
pub fn load(model_bytes: &[u8]) -> Result<(Model<'_>, Tokenizer<'_>), Error> {
    let model = Model::from_bytes(model_bytes)?;
    let tok = Tokenizer::parse(model.eqf.tokenizer_bytes())?;
    Ok((model, tok))
}

/// The first `n` f32 of a 4-byte aligned byte buffer (the build sizes it).
fn cast_f32(b: &mut [u8], n: usize) -> &mut [f32] {
    let n = if b.as_ptr() as usize % 4 == 0 { n.min(b.len() / 4) } else { 0 };
    // SAFETY: aligned (checked, else empty), in bounds (n·4 ≤ len), every bit pattern is an f32.
    unsafe { core::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<f32>(), n) }
}

/// Stack painting: the board fills the unused stack with [`stack::PAINT`]
/// at reset; [`stack::high_water`] scans up from the bottom for the first
/// word that changed.
pub mod stack {
    /// The pattern (cortex-m-rt's `paint-stack` uses the same word).
    pub const PAINT: u32 = 0xCCCC_CCCC;

    /// Bytes of stack ever used, given the stack's lowest and highest
    /// addresses (`bottom..top`, word aligned), painted with [`PAINT`].
    ///
    /// # Safety
    /// `bottom..top` must be readable memory (the stack region).
    pub unsafe fn high_water(bottom: usize, top: usize) -> usize {
        let mut p = bottom;
        while p < top {
            // SAFETY: inside the stack region (caller's contract), aligned.
            if unsafe { core::ptr::read_volatile(p as *const u32) } != PAINT {
                break;
            }
            p += 4;
        }
        top - p
    }
}

/// Writes the run's header line.
#[inline(never)]
pub fn write_header(out: &mut (impl Console + ?Sized), target: &str) {
    use fmt::Write;
    let _ = writeln!(
        Fmt(out),
        "edgeq firmware: {target}, model {} ({} bytes at {:p}), arena {} bytes ({}), max_seq {}, kv {}, tokens {}, temperature {}, activations {}",
        config::MODEL_NAME,
        config::MODEL_BYTES,
        MODEL.0.as_ptr(),
        config::ARENA_BYTES,
        if cfg!(feature = "heap") { "LlffHeap" } else { "static" },
        config::MAX_SEQ,
        config::KV.name(),
        config::TOKENS,
        config::TEMPERATURE_TEXT,
        config::ACTS_NAME,
    );
}

/// The line before the generated text.
pub const TEXT_BEGIN: &str = "[edgeq:text]\n";
/// The line after it (preceded by a newline, like the host's output).
pub const TEXT_END: &str = "\n[edgeq:end]\n";

/// Runs the whole program: header, text between the markers, then one line
/// of figures (`key=value`, parsed by scripts/test-targets.sh). Returns
/// whether it succeeded. `ticks_per_s` scales `clock`; `stack` gives the
/// stack's `(bottom, top)` for the high-water mark, or `None`.
pub fn run(
    out: &mut (impl Console + ?Sized),
    target: &str,
    clock: &mut dyn FnMut() -> u64,
    ticks_per_s: u64,
    stack: Option<(usize, usize)>,
) -> bool {
    use fmt::Write;
    write_header(out, target);
    let Some(arena) = arena() else {
        let _ = writeln!(Fmt(out), "error: {}", Error::NoArena);
        return false;
    };
    let ids: &mut [u32] = match IDS.take() {
        Some(ids) => ids,
        None => &mut [],
    };
    out.write(TEXT_BEGIN.as_bytes());
    let r = generate(&MODEL.0, arena, ids, out, clock);
    out.write(TEXT_END.as_bytes());
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(Fmt(out), "error: {e}");
            return false;
        }
    };
    write_stats(out, &r, ids, ticks_per_s, stack);
    true
}

/// Writes the `stats:` line and the token ids (after generation, in a frame
/// of its own).
#[inline(never)]
fn write_stats(out: &mut (impl Console + ?Sized), r: &Report, ids: &[u32], ticks_per_s: u64, stack: Option<(usize, usize)>) {
    use fmt::Write;
    let ms = |t: u64| t.saturating_mul(1000) / ticks_per_s.max(1);
    let gen_ms = ms(r.t_gen);
    // tokens/s ×100, in integers (no float formatting code in flash)
    let tps100 = (r.steps as u64 * 100_000).checked_div(gen_ms).unwrap_or(0);
    let _ = write!(
        Fmt(out),
        "stats: generated={} steps={} load_ms={} gen_ms={} emulated_tok_per_s={}.{:02} arena_bytes={} arena_static_bytes={}",
        r.generated,
        r.steps,
        ms(r.t_load),
        gen_ms,
        tps100 / 100,
        tps100 % 100,
        config::ARENA_BYTES,
        arena_static_bytes(),
    );
    if let Some((bottom, top)) = stack {
        // SAFETY: the board passes its stack region.
        let used = unsafe { stack::high_water(bottom, top) };
        let _ = write!(Fmt(out), " stack_hwm_bytes={used} stack_region_bytes={}", top - bottom);
    }
    #[cfg(feature = "heap")]
    {
        let (used, free) = heap::usage();
        let _ = write!(Fmt(out), " heap_used={used} heap_free={free}");
    }
    let _ = writeln!(Fmt(out));
    // The ids as the host's `edgeq run --show-tokens` prints them.
    let _ = write!(Fmt(out), "tokens: [");
    for (i, t) in ids.iter().take(r.generated + 1).enumerate() {
        let _ = write!(Fmt(out), "{}{t}", if i > 0 { ", " } else { "" });
    }
    let _ = writeln!(Fmt(out), "]");
}
