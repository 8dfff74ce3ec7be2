//! Property tests of the reference quantizers: `quantize` → `TensorView::new`
//! → `dequantize_row` round trips for every scheme and granularity, checked
//! against an independent decoder written from docs/FORMAT.md and against
//! the error bounds each scheme guarantees.
#![cfg(feature = "alloc")]

use edgeq_core::error::QuantError;
use edgeq_core::quant::{fp8, int, quantize};
use edgeq_core::scheme::{TensorLayout, BLOCK};
use edgeq_core::{Granularity, QuantSpec, Scheme, TensorView};
use half::{bf16, f16};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A 64-byte aligned, zero-filled byte buffer (no `unsafe`).
struct Aligned {
    store: Vec<u8>,
    start: usize,
    len: usize,
}
impl Aligned {
    fn new(len: usize) -> Aligned {
        let store = vec![0u8; len + 64];
        let start = store.as_ptr().align_offset(64);
        Aligned { store, start, len }
    }
    fn bytes(&self) -> &[u8] {
        &self.store[self.start..self.start + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.store[self.start..self.start + self.len]
    }
}

fn quantized(spec: QuantSpec, rows: u32, cols: u32, src: &[f32]) -> Aligned {
    let l = spec.layout(rows, cols).unwrap();
    let mut buf = Aligned::new(l.total_bytes as usize);
    // Pre-fill with garbage: quantize must overwrite every byte it owns.
    buf.bytes_mut().fill(0xA5);
    quantize(spec, rows, cols, src, buf.bytes_mut()).unwrap();
    buf
}

fn dequantized(v: &TensorView<'_>) -> Vec<f32> {
    let (rows, cols) = (v.rows(), v.cols());
    let mut all = Vec::with_capacity(rows * cols);
    let mut out = vec![f32::from_bits(0x7FC0_0ABC); cols + 7];
    for r in 0..rows {
        v.dequantize_row(r, &mut out);
        assert!(
            out[cols..].iter().all(|v| v.to_bits() == 0x7FC0_0ABC),
            "dequantize_row wrote past cols"
        );
        all.extend_from_slice(&out[..cols]);
    }
    all
}

const fn up(v: u64, m: u64) -> u64 {
    v.div_ceil(m) * m
}

fn rd_f16(b: &[u8], o: usize) -> f32 {
    f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
}
fn rd_f32(b: &[u8], o: usize) -> f32 {
    f32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// Region offsets computed from the rules of docs/FORMAT.md §8, not from
/// `QuantSpec::layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SpecLayout {
    group_len: u64,
    groups_per_row: u64,
    row_stride: u64,
    scales_offset: u64,
    n_scales: u64,
    mins_offset: u64,
    total: u64,
}

fn spec_layout(spec: QuantSpec, rows: u32, cols: u32) -> SpecLayout {
    let (r, c) = (rows as u64, cols as u64);
    let s = spec.scheme;
    if s.is_float() {
        let w = match s {
            Scheme::F32 => 4,
            _ => 2,
        };
        return SpecLayout {
            group_len: c,
            groups_per_row: 1,
            row_stride: c * w,
            scales_offset: 0,
            n_scales: 0,
            mins_offset: 0,
            total: r * c * w,
        };
    }
    if s.is_int() {
        let g = if spec.granularity == Granularity::PerGroup {
            spec.group as u64
        } else {
            up(c, 32)
        };
        let groups = c.div_ceil(g);
        let bits = if matches!(s, Scheme::Q4Sym | Scheme::Q4Asym) { 4 } else { 8 };
        let stride = groups * g * bits / 8;
        let n = r * groups;
        let so = up(r * stride, 64);
        let (mo, total) = if s.is_asym() {
            (up(so + 2 * n, 64), up(so + 2 * n, 64) + 2 * n)
        } else {
            (0, so + 2 * n)
        };
        return SpecLayout {
            group_len: g,
            groups_per_row: groups,
            row_stride: stride,
            scales_offset: so,
            n_scales: n,
            mins_offset: mo,
            total,
        };
    }
    let n = match spec.granularity {
        Granularity::PerTensor => 1,
        Granularity::PerChannel => r,
        _ => r.div_ceil(spec.group as u64) * c.div_ceil(spec.group as u64),
    };
    let so = up(r * c, 64);
    SpecLayout {
        group_len: if spec.granularity == Granularity::Block {
            spec.group as u64
        } else {
            c
        },
        groups_per_row: if spec.granularity == Granularity::Block {
            c.div_ceil(spec.group as u64)
        } else {
            1
        },
        row_stride: c,
        scales_offset: so,
        n_scales: n,
        mins_offset: 0,
        total: so + 4 * n,
    }
}

/// FP8 decode written from the OCP spec (docs/FORMAT.md §9), independent of `fp8::decode`.
fn fp8_ref_decode(scheme: Scheme, c: u8) -> f32 {
    let (ebits, mbits, bias) = if scheme == Scheme::Fp8E4M3 { (4, 3, 7) } else { (5, 2, 15) };
    let sign = if c & 0x80 != 0 { -1.0f64 } else { 1.0 };
    let e = ((c as u32 & 0x7F) >> mbits) as i32;
    let m = (c as u32 & ((1 << mbits) - 1)) as f64;
    let emax = (1 << ebits) - 1;
    if scheme == Scheme::Fp8E4M3 && e == emax && m as u32 == 7 {
        return f32::NAN;
    }
    if scheme == Scheme::Fp8E5M2 && e == emax {
        return if m == 0.0 { (sign * f64::INFINITY) as f32 } else { f32::NAN };
    }
    let v = if e == 0 {
        m / (1 << mbits) as f64 * 2f64.powi(1 - bias)
    } else {
        (1.0 + m / (1 << mbits) as f64) * 2f64.powi(e - bias)
    };
    (sign * v) as f32
}

/// Element `(r, c)` decoded straight from the raw tensor bytes following
/// docs/FORMAT.md, plus the (scale, min, code) it used.
fn ref_element(spec: QuantSpec, l: &SpecLayout, b: &[u8], cols: u32, r: usize, c: usize) -> (f32, f32, f32, i32) {
    let cols = cols as usize;
    match spec.scheme {
        Scheme::F32 => (rd_f32(b, 4 * (r * cols + c)), 0.0, 0.0, 0),
        Scheme::F16 => (rd_f16(b, 2 * (r * cols + c)), 0.0, 0.0, 0),
        Scheme::BF16 => {
            let o = 2 * (r * cols + c);
            (bf16::from_le_bytes([b[o], b[o + 1]]).to_f32(), 0.0, 0.0, 0)
        }
        s if s.is_int() => {
            let gi = c / l.group_len as usize;
            let si = r * l.groups_per_row as usize + gi;
            let scale = rd_f16(b, l.scales_offset as usize + 2 * si);
            let min = if s.is_asym() {
                rd_f16(b, l.mins_offset as usize + 2 * si)
            } else {
                0.0
            };
            let row = &b[r * l.row_stride as usize..];
            let q: i32 = match s {
                Scheme::Q4Sym | Scheme::Q4Asym => {
                    let (blk, j) = (c / 32, c % 32);
                    let byte = row[blk * 16 + j % 16];
                    (if j < 16 { byte & 0x0F } else { byte >> 4 }) as i32
                }
                Scheme::Q8Sym => row[c] as i8 as i32,
                _ => row[c] as i32,
            };
            let v = match s {
                Scheme::Q4Sym => scale * (q - 8) as f32,
                Scheme::Q8Sym => scale * q as f32,
                _ => scale * q as f32 + min,
            };
            (v, scale, min, q)
        }
        s => {
            let si = match spec.granularity {
                Granularity::PerTensor => 0,
                Granularity::PerChannel => r,
                _ => {
                    let g = spec.group as usize;
                    (r / g) * cols.div_ceil(g) + c / g
                }
            };
            let scale = rd_f32(b, l.scales_offset as usize + 4 * si);
            let code = b[r * cols + c];
            (fp8_ref_decode(s, code) * scale, scale, 0.0, code as i32)
        }
    }
}

fn maxq(s: Scheme) -> f32 {
    match s {
        Scheme::Q4Sym | Scheme::Q4Asym => 15.0,
        Scheme::Q8Sym => 127.0,
        _ => 255.0,
    }
}
fn minq(s: Scheme) -> f32 {
    if s == Scheme::Q8Sym {
        -128.0
    } else {
        0.0
    }
}

const F16_MIN_NORMAL: f32 = 6.103_515_6e-5; // 2^-14

/// The full round-trip check; returns an error string instead of panicking
/// so proptest can shrink.
fn check_round_trip(spec: QuantSpec, rows: u32, cols: u32, src: &[f32]) -> Result<(), String> {
    let layout: TensorLayout = spec.layout(rows, cols).map_err(|e| format!("layout: {e:?}"))?;
    let sl = spec_layout(spec, rows, cols);
    if layout.total_bytes != sl.total
        || layout.scales_offset != sl.scales_offset
        || layout.n_scales != sl.n_scales
        || layout.row_stride != sl.row_stride
        || (spec.scheme.is_asym() && layout.mins_offset != sl.mins_offset)
        || layout.group_len as u64 != sl.group_len
        || layout.groups_per_row as u64 != sl.groups_per_row
    {
        return Err(format!("layout {layout:?} differs from the spec's {sl:?}"));
    }
    for off in [layout.scales_offset, layout.mins_offset] {
        if off % 64 != 0 {
            return Err(format!("region offset {off} not 64-aligned"));
        }
    }
    let buf = quantized(spec, rows, cols, src);
    let bytes = buf.bytes();
    let view = TensorView::new(spec, rows, cols, bytes).map_err(|e| format!("view: {e:?}"))?;
    let deq = dequantized(&view);
    let (rows_u, cols_u) = (rows as usize, cols as usize);
    let s = spec.scheme;

    // Bytes between regions are zero.
    if !s.is_float() {
        let gaps = [
            (layout.codes_bytes, layout.scales_offset),
            (
                layout.scales_offset + (if s.is_int() { 2 } else { 4 }) * layout.n_scales,
                if s.is_asym() { layout.mins_offset } else { layout.total_bytes },
            ),
        ];
        for (a, b) in gaps {
            if bytes[a as usize..b as usize].iter().any(|&x| x != 0) {
                return Err(format!("non-zero alignment padding in {a}..{b}"));
            }
        }
    }

    for r in 0..rows_u {
        for c in 0..cols_u {
            let x = src[r * cols_u + c];
            let got = deq[r * cols_u + c];
            let (want, scale, min, q) = ref_element(spec, &sl, bytes, cols, r, c);
            if got.to_bits() != want.to_bits() && !(got == want) {
                return Err(format!("[{r},{c}]: dequantize_row {got} but the spec decoder gives {want}"));
            }
            if !got.is_finite() {
                return Err(format!("[{r},{c}]: x = {x} dequantized to {got}"));
            }
            let err = (got - x).abs();
            match s {
                Scheme::F32 => {
                    if got.to_bits() != x.to_bits() {
                        return Err(format!("F32 not exact: {x} -> {got}"));
                    }
                }
                Scheme::F16 => {
                    let bound = if x.abs() >= F16_MIN_NORMAL {
                        x.abs() * 2f32.powi(-11)
                    } else {
                        2f32.powi(-25)
                    };
                    if err > bound {
                        return Err(format!("F16 [{r},{c}] {x} -> {got}: err {err} > {bound}"));
                    }
                }
                Scheme::BF16 => {
                    let bound = if x.abs() >= f32::MIN_POSITIVE {
                        x.abs() * 2f32.powi(-8)
                    } else {
                        2f32.powi(-134)
                    };
                    if err > bound {
                        return Err(format!("BF16 [{r},{c}] {x} -> {got}: err {err} > {bound}"));
                    }
                }
                s if s.is_int() => {
                    let (lo_q, hi_q) = (minq(s), maxq(s));
                    if (q as f32) < lo_q || (q as f32) > hi_q {
                        return Err(format!("code {q} out of range"));
                    }
                    if scale < 0.0 || !scale.is_finite() {
                        return Err(format!("bad scale {scale}"));
                    }
                    if scale == 0.0 {
                        // The group's range underflowed f16: everything is 0.
                        if got != 0.0 || x.abs() > hi_q * 2f32.powi(-24) {
                            return Err(format!("zero scale: {x} -> {got}"));
                        }
                        continue;
                    }
                    // Zero point in code units and the f16 rounding error of min.
                    let (zero, delta) = match s {
                        Scheme::Q4Sym => (8.0, 0.0),
                        Scheme::Q8Sym => (0.0, 0.0),
                        _ => {
                            let z = (-(min as f64) / scale as f64).round();
                            (z as f32, (min as f64 + scale as f64 * z).abs() as f32)
                        }
                    };
                    if !(0.0..=hi_q).contains(&zero) || delta > scale * hi_q * 2f32.powi(-11) + 2f32.powi(-24) {
                        return Err(format!(
                            "asym zero point {zero} / min rounding {delta} implausible (scale {scale}, min {min})"
                        ));
                    }
                    let ends = |q: f32| match s {
                        Scheme::Q4Sym => scale * (q - 8.0),
                        Scheme::Q8Sym => scale * q,
                        _ => scale * q + min,
                    };
                    let (lo, hi) = (ends(lo_q), ends(hi_q));
                    let slack = 2f32.powi(-20) * (x.abs() + min.abs() + scale * hi_q);
                    if x >= lo && x <= hi {
                        let bound = scale / 2.0 + delta + slack;
                        if err > bound {
                            return Err(format!(
                                "{s:?} [{r},{c}] {x} -> {got} (q {q}, scale {scale}, min {min}): err {err} > {bound}"
                            ));
                        }
                    } else {
                        // Outside the representable range: clipped to the nearer end.
                        let want = if x < lo { lo } else { hi };
                        if (got - want).abs() > slack {
                            return Err(format!("{s:?} [{r},{c}] {x} outside [{lo}, {hi}] gave {got}, not {want}"));
                        }
                    }
                    // Global bound: clipping costs at most the f16 rounding of the scale.
                    let global = scale * (0.5 + hi_q * 2f32.powi(-10)) + delta + hi_q * 2f32.powi(-24) + slack;
                    if err > global {
                        return Err(format!(
                            "{s:?} [{r},{c}] {x} -> {got}: err {err} > global bound {global} (scale {scale})"
                        ));
                    }
                    // Sym codes never use the extra negative code with a normal scale.
                    if s == Scheme::Q8Sym && scale >= F16_MIN_NORMAL && q == -128 {
                        return Err(format!("Q8 sym code -128 for {x}"));
                    }
                    let _ = zero;
                }
                s => {
                    // FP8.
                    if !(scale > 0.0 && scale.is_finite()) {
                        return Err(format!("FP8 scale {scale}"));
                    }
                    let code = q as u8;
                    let f = fp8::format_of(s);
                    if code & 0x7F > f.max_code {
                        return Err(format!("FP8 code {code:#04x} is NaN/Inf for finite {x}"));
                    }
                    let y = x / scale;
                    let (rel, min_normal, sub_step) = if s == Scheme::Fp8E4M3 {
                        (2f32.powi(-4), 2f32.powi(-6), 2f32.powi(-9))
                    } else {
                        (2f32.powi(-3), 2f32.powi(-14), 2f32.powi(-16))
                    };
                    let slack = x.abs() * 2f32.powi(-20) + f32::from_bits(1) * 4.0;
                    let bound = if y.abs() >= min_normal {
                        x.abs() * rel
                    } else {
                        sub_step / 2.0 * scale
                    } + slack;
                    if err > bound {
                        return Err(format!(
                            "{s:?} [{r},{c}] {x} (y {y}, scale {scale}, code {code:#04x}) -> {got}: err {err} > {bound}"
                        ));
                    }
                }
            }
        }
    }

    // Integer padding codes hold the group's zero point (dequantize to ~0).
    if s.is_int() {
        for r in 0..rows_u {
            for c in cols_u..layout.padded_cols as usize {
                let gi = c / layout.group_len as usize;
                let si = r * layout.groups_per_row as usize + gi;
                let scale = rd_f16(bytes, layout.scales_offset as usize + 2 * si);
                let row = &bytes[r * layout.row_stride as usize..(r + 1) * layout.row_stride as usize];
                let q = match s {
                    Scheme::Q4Sym | Scheme::Q4Asym => int::q4_code(row, c) as i32,
                    Scheme::Q8Sym => row[c] as i8 as i32,
                    _ => row[c] as i32,
                };
                let want = match s {
                    Scheme::Q4Sym => 8,
                    Scheme::Q8Sym => 0,
                    _ => {
                        let min = rd_f16(bytes, layout.mins_offset as usize + 2 * si);
                        if scale == 0.0 {
                            0
                        } else {
                            (-(min as f64) / scale as f64).round() as i32
                        }
                    }
                };
                if q != want {
                    return Err(format!("padding code at [{r},{c}] is {q}, expected zero point {want}"));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn all_specs() -> Vec<QuantSpec> {
    use Granularity::*;
    let mut v = vec![QuantSpec::F32, QuantSpec::float(Scheme::F16), QuantSpec::float(Scheme::BF16)];
    for s in [Scheme::Q8Sym, Scheme::Q8Asym, Scheme::Q4Sym, Scheme::Q4Asym] {
        v.push(QuantSpec::per_channel(s));
        for g in [32, 64, 128, 256] {
            v.push(QuantSpec::per_group(s, g));
        }
    }
    for s in [Scheme::Fp8E4M3, Scheme::Fp8E5M2] {
        v.push(QuantSpec {
            scheme: s,
            granularity: PerTensor,
            group: 0,
        });
        v.push(QuantSpec {
            scheme: s,
            granularity: PerChannel,
            group: 0,
        });
        for g in [1, 3, 16, 32, 128] {
            v.push(QuantSpec {
                scheme: s,
                granularity: Block,
                group: g,
            });
        }
    }
    v
}

/// Largest power-of-two exponent for element magnitudes (|x| < 8·2^k) that
/// stays inside what the scheme can store (see the `*_overflow` tests).
fn max_exp(s: Scheme) -> i32 {
    match s {
        // f16 storage: |x| and |min| must stay below 65504.
        Scheme::F16 | Scheme::Q8Asym | Scheme::Q4Asym => 12,
        // scale = 2·amax/15 must stay below 65504.
        Scheme::Q4Sym => 15,
        // scale = amax/127 must stay below 65504.
        Scheme::Q8Sym => 19,
        _ => 120,
    }
}

#[derive(Debug, Clone)]
enum Pattern {
    /// Elements as generated.
    Raw,
    /// Row `r` all zeros.
    ZeroRow(usize),
    /// Every group of `g` elements of a row set to its first element.
    ConstGroups(usize),
    /// One outlier 2^e times larger than the rest at index i.
    Outlier(usize, i32),
}

fn element() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -1.0f32..1.0,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        // f32 subnormals ("denormal" inputs)
        1 => (1u32..0x0080_0000, any::<bool>()).prop_map(|(m, neg)| f32::from_bits(m | if neg { 0x8000_0000 } else { 0 })),
        // exact multiples of 1/2
        1 => (-16i32..=16).prop_map(|k| k as f32 * 0.5),
    ]
}

fn case() -> impl Strategy<Value = (QuantSpec, u32, u32, Vec<f32>)> {
    let specs = all_specs();
    (
        0..specs.len(),
        1u32..=5,
        prop_oneof![
            Just(1u32),
            Just(5),
            Just(31),
            Just(32),
            Just(33),
            Just(64),
            Just(100),
            Just(172),
            Just(256),
            Just(300),
            1u32..=300
        ],
        -40i32..=120,
        prop::collection::vec(element(), 5 * 300),
        prop_oneof![
            4 => Just(Pattern::Raw),
            1 => (0usize..5).prop_map(Pattern::ZeroRow),
            1 => prop_oneof![Just(1usize), Just(7), Just(32), Just(64)].prop_map(Pattern::ConstGroups),
            1 => (0usize..1500, 1i32..12).prop_map(|(i, e)| Pattern::Outlier(i, e)),
        ],
    )
        .prop_map(move |(si, rows, cols, k, raw, pat)| {
            let spec = specs[si];
            let k = k.min(max_exp(spec.scheme));
            let n = (rows * cols) as usize;
            let mut v: Vec<f32> = raw[..n].iter().map(|x| x * 2f32.powi(k)).collect();
            match pat {
                Pattern::Raw => {}
                Pattern::ZeroRow(r) => {
                    let r = r % rows as usize;
                    v[r * cols as usize..(r + 1) * cols as usize].fill(0.0);
                }
                Pattern::ConstGroups(g) => {
                    for row in v.chunks_mut(cols as usize) {
                        for grp in row.chunks_mut(g) {
                            let c = grp[0];
                            grp.fill(c);
                        }
                    }
                }
                Pattern::Outlier(i, e) => {
                    let i = i % n;
                    let cap = 2f32.powi(max_exp(spec.scheme) + 2);
                    v[i] = (v[i] * 2f32.powi(e)).clamp(-cap, cap);
                }
            }
            (spec, rows, cols, v)
        })
}

/// FP8 known limitation (see `fp8_tiny_tile_gives_nan`): a tile whose
/// |max| is so small that the f32 scale `amax / 448` is subnormal (loses
/// precision; saturation errors grow) or underflows to 0 (NaN codes).
fn fp8_scale_underflows(spec: QuantSpec, rows: u32, cols: u32, v: &[f32]) -> bool {
    if !spec.scheme.is_fp8() {
        return false;
    }
    let fmax = fp8::format_of(spec.scheme).max;
    let (rows, cols) = (rows as usize, cols as usize);
    let tile = |r0: usize, r1: usize, c0: usize, c1: usize| {
        let mut m = 0f32;
        for r in r0..r1 {
            for c in c0..c1 {
                m = m.max(v[r * cols + c].abs());
            }
        }
        m > 0.0 && m / fmax < f32::MIN_POSITIVE
    };
    match spec.granularity {
        Granularity::PerTensor => tile(0, rows, 0, cols),
        Granularity::PerChannel => (0..rows).any(|r| tile(r, r + 1, 0, cols)),
        _ => {
            let b = spec.group as usize;
            (0..rows.div_ceil(b))
                .any(|tr| (0..cols.div_ceil(b)).any(|tc| tile(tr * b, ((tr + 1) * b).min(rows), tc * b, ((tc + 1) * b).min(cols))))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, max_shrink_iters: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every scheme and granularity: layout, spec-level decode, error bounds,
    /// code ranges, padding codes.
    #[test]
    fn round_trip_within_bounds((spec, rows, cols, v) in case()) {
        prop_assume!(!fp8_scale_underflows(spec, rows, cols, &v));
        let r = check_round_trip(spec, rows, cols, &v);
        prop_assert!(r.is_ok(), "{:?} {}x{}: {}", spec, rows, cols, r.unwrap_err());
    }

    /// NaN / ±Inf anywhere: `NonFinite` with the index of the first one.
    #[test]
    fn non_finite_inputs_are_rejected(
        si in 0..all_specs().len(),
        rows in 1u32..4,
        cols in 1u32..80,
        idx in prop::collection::vec(0usize..320, 1..4),
        kinds in prop::collection::vec(0u8..3, 4),
    ) {
        let spec = all_specs()[si];
        let n = (rows * cols) as usize;
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut first = usize::MAX;
        for (k, &i) in idx.iter().enumerate() {
            let i = i % n;
            v[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][kinds[k] as usize];
            first = first.min(i);
        }
        let l = spec.layout(rows, cols).unwrap();
        let mut out = Aligned::new(l.total_bytes as usize);
        prop_assert_eq!(quantize(spec, rows, cols, &v, out.bytes_mut()), Err(QuantError::NonFinite { index: first }));
    }

    /// Q8 sym: re-quantizing the dequantized tensor reproduces its bytes
    /// exactly (as long as every scale is a normal f16).
    #[test]
    fn q8_sym_requantization_is_idempotent(
        gsel in 0usize..5,
        rows in 1u32..5,
        cols in 1u32..300,
        k in -6i32..19,
        raw in prop::collection::vec(-1.0f32..1.0, 4 * 300),
        zero_row in any::<bool>(),
    ) {
        let spec = if gsel == 0 { QuantSpec::per_channel(Scheme::Q8Sym) } else { QuantSpec::per_group(Scheme::Q8Sym, 32 << (gsel - 1)) };
        let n = (rows * cols) as usize;
        let mut v: Vec<f32> = raw[..n].iter().map(|x| x * 2f32.powi(k)).collect();
        if zero_row {
            v[..cols as usize].fill(0.0);
        }
        let a = quantized(spec, rows, cols, &v);
        let view = TensorView::new(spec, rows, cols, a.bytes()).unwrap();
        let scales = match view.scales { edgeq_core::tensor::Scales::F16(s) => s.to_vec(), _ => unreachable!() };
        prop_assume!(scales.iter().all(|s| s.to_f32() >= F16_MIN_NORMAL));
        let d = dequantized(&view);
        let b = quantized(spec, rows, cols, &d);
        prop_assert_eq!(a.bytes(), b.bytes());
    }

    /// Q4 sym / Q8 sym / asym: with the stored scale (and min) fixed, the
    /// dequantized value of every code quantizes back to that code.
    #[test]
    fn codes_are_fixed_points_of_their_group_params(
        si in 0usize..4,
        lo in -100.0f32..0.0,
        hi in 0.0f32..100.0,
    ) {
        let scheme = [Scheme::Q4Sym, Scheme::Q8Sym, Scheme::Q4Asym, Scheme::Q8Asym][si];
        let p = int::GroupParams::from_range(scheme, lo, hi);
        prop_assume!(p.scale.to_f32() >= F16_MIN_NORMAL);
        let mut q = p.minq;
        while q <= p.maxq {
            let v = p.value(q);
            if scheme.is_asym() {
                // value uses the f16-rounded min, code the exact zero point:
                // they agree to within the min's rounding (< scale/8).
                prop_assert_eq!(p.code(v), q, "{:?} scale {} min {} zero {}", scheme, p.scale, p.min, p.zero);
            } else {
                prop_assert_eq!(p.code(v), q);
            }
            q += 1.0;
        }
    }

    /// FP8 encode: matches an exhaustive nearest-code search (ties to even),
    /// saturates, never yields NaN for finite input.
    #[test]
    fn fp8_encode_is_nearest_code(bits in any::<u32>(), e5 in any::<bool>()) {
        let x = f32::from_bits(bits);
        prop_assume!(x.is_finite());
        let (scheme, f) = if e5 { (Scheme::Fp8E5M2, fp8::E5M2) } else { (Scheme::Fp8E4M3, fp8::E4M3) };
        let c = fp8::encode(&f, x);
        prop_assert!(c & 0x7F <= f.max_code, "{} -> {:#04x}", x, c);
        prop_assert_eq!(c & 0x80 != 0, x.is_sign_negative());
        let a = x.abs() as f64;
        if a >= f.max as f64 {
            prop_assert_eq!(c & 0x7F, f.max_code, "saturates: {}", x);
            return Ok(());
        }
        // nearest among the finite non-negative codes, ties to the even code
        let mut best = 0u8;
        let mut best_err = f64::INFINITY;
        for k in 0..=f.max_code {
            let d = (fp8_ref_decode(scheme, k) as f64 - a).abs();
            if d < best_err || (d == best_err && k % 2 == 0) {
                best = k;
                best_err = d;
            }
        }
        prop_assert_eq!(c & 0x7F, best, "{} ({:e})", x, x);
    }
}

// ---------------------------------------------------------------------------
// Deterministic edge cases
// ---------------------------------------------------------------------------

#[test]
fn every_spec_on_edge_shapes() {
    let shapes = [(1u32, 1u32), (1, 31), (2, 32), (3, 33), (4, 172), (2, 255), (1, 257)];
    for spec in all_specs() {
        for (rows, cols) in shapes {
            let n = (rows * cols) as usize;
            let patterns: Vec<Vec<f32>> = vec![
                vec![0.0; n],
                vec![-0.0; n],
                vec![0.75; n],
                vec![-3.0; n],
                (0..n).map(|i| ((i * 7919) % 113) as f32 / 56.0 - 1.0).collect(),
                (0..n).map(|i| if i % 2 == 0 { 1e-3 } else { -2.5e-3 }).collect(),
                (0..n).map(|i| f32::from_bits(1 + i as u32)).collect(),
                (0..n).map(|i| if i == n / 2 { 5.0 } else { 0.01 * (i as f32).cos() }).collect(),
            ];
            for v in patterns {
                check_case(spec, rows, cols, &v);
            }
        }
    }
}

fn check_case(spec: QuantSpec, rows: u32, cols: u32, v: &[f32]) {
    if fp8_scale_underflows(spec, rows, cols, v) {
        return;
    }
    if let Err(e) = check_round_trip(spec, rows, cols, v) {
        panic!("{spec:?} {rows}x{cols} {:?}...: {e}", &v[..v.len().min(4)]);
    }
}

#[test]
fn zero_and_constant_groups_reconstruct_exactly_for_sym_schemes() {
    for s in [Scheme::Q8Sym, Scheme::Q4Sym] {
        let spec = QuantSpec::per_group(s, 32);
        // 172 columns: 5 full groups and one of 12.
        let mut v = vec![0f32; 2 * 172];
        for c in 32..64 {
            v[c] = 0.5; // constant positive group
        }
        for c in 160..172 {
            v[172 + c] = -0.25; // constant negative partial group
        }
        let a = quantized(spec, 2, 172, &v);
        let view = TensorView::new(spec, 2, 172, a.bytes()).unwrap();
        let d = dequantized(&view);
        for (i, (x, y)) in v.iter().zip(&d).enumerate() {
            if *x == 0.0 {
                assert_eq!(*y, 0.0, "{s:?} [{i}]");
            } else {
                // amax of a constant group sits at code 127 (Q8) / is clipped from 7.5 to 7 or -8 (Q4)
                let tol = if s == Scheme::Q8Sym {
                    0.5 * 2f32.powi(-11)
                } else {
                    x.abs() / 15.0 + 1e-3
                };
                assert!((x - y).abs() <= tol, "{s:?} [{i}] {x} -> {y}");
            }
        }
        // All-zero groups keep the reference's [-1, 1] range.
        let want = if s == Scheme::Q8Sym {
            f16::from_f32(1.0 / 127.0)
        } else {
            f16::from_f32(2.0 / 15.0)
        };
        assert_eq!(view.row_scales_f16(0)[0], want);
    }
}

/// Q4 packing (docs/FORMAT.md §8.3): byte j of a 32-element block holds
/// element j in its low nibble and element j+16 in its high nibble.
#[test]
fn q4_nibble_order_known_vector() {
    // x = (c - 16) / 8: amax 2, scale f16(4/15) = 0x3444, codes rne(x/scale) + 8.
    let v: Vec<f32> = (0..32).map(|c| (c as f32 - 16.0) / 8.0).collect();
    let spec = QuantSpec::per_group(Scheme::Q4Sym, 32);
    let a = quantized(spec, 1, 32, &v);
    let b = a.bytes();
    assert_eq!(b.len(), 64 + 2);
    assert_eq!(
        &b[..16],
        &[0x80, 0x81, 0x91, 0x92, 0xA2, 0xA3, 0xB3, 0xB4, 0xC4, 0xC5, 0xD5, 0xD6, 0xE6, 0xE7, 0xF7, 0xF8]
    );
    assert!(b[16..64].iter().all(|&x| x == 0));
    assert_eq!(&b[64..66], &[0x44, 0x34]);
    // Same values as Q8 sym: amax/127 = 0x2C08 (0.01575), codes rne(x/s).
    let spec8 = QuantSpec::per_channel(Scheme::Q8Sym);
    let a8 = quantized(spec8, 1, 32, &v);
    let b8 = a8.bytes();
    assert_eq!(b8.len(), 66);
    let s8 = f16::from_f32(2.0 / 127.0);
    assert_eq!(&b8[64..66], &s8.to_le_bytes());
    for (c, x) in v.iter().enumerate() {
        assert_eq!(b8[c] as i8, (x / s8.to_f32()).round_ties_even() as i8);
    }
    // Q4 asym on [0, 1.5]: scale f16(1.5/15), zero 0, min -0.
    let w: Vec<f32> = (0..32).map(|c| (c % 16) as f32 * 0.1).collect();
    let spec4a = QuantSpec::per_channel(Scheme::Q4Asym);
    let a4 = quantized(spec4a, 1, 32, &w);
    let b4 = a4.bytes();
    assert_eq!(b4.len(), 64 + 64 + 2, "codes | pad | scale | pad | min");
    assert_eq!(&b4[64..66], &f16::from_f32(0.1).to_le_bytes());
    assert_eq!(b4[0], 0x00);
    assert_eq!(b4[15], 0xFF);
}

/// FP8 known vectors: E4M3 of [448, -1, 0.5, 2^-9] per tensor (scale 1).
#[test]
fn fp8_known_vector() {
    let v = [448.0f32, -1.0, 0.5, 2f32.powi(-9)];
    let spec = QuantSpec {
        scheme: Scheme::Fp8E4M3,
        granularity: Granularity::PerTensor,
        group: 0,
    };
    let a = quantized(spec, 1, 4, &v);
    let b = a.bytes();
    assert_eq!(&b[..4], &[0x7E, 0xB8, 0x30, 0x01]);
    assert_eq!(rd_f32(b, 64), 1.0);
    let spec = QuantSpec {
        scheme: Scheme::Fp8E5M2,
        granularity: Granularity::PerTensor,
        group: 0,
    };
    let v = [57344.0f32, -1.0, 0.5, 2f32.powi(-16)];
    let a = quantized(spec, 1, 4, &v);
    assert_eq!(&a.bytes()[..4], &[0x7B, 0xBC, 0x38, 0x01]);
    // Block 2x2 scales, row-major over tiles.
    let spec = QuantSpec {
        scheme: Scheme::Fp8E4M3,
        granularity: Granularity::Block,
        group: 2,
    };
    let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    let a = quantized(spec, 3, 3, &v);
    let b = a.bytes();
    let scales: Vec<f32> = (0..4).map(|i| rd_f32(b, 64 + 4 * i)).collect();
    assert_eq!(scales, [5.0 / 448.0, 6.0 / 448.0, 8.0 / 448.0, 9.0 / 448.0]);
}

#[test]
fn every_fp8_code_decodes_like_the_spec() {
    for (s, f) in [(Scheme::Fp8E4M3, fp8::E4M3), (Scheme::Fp8E5M2, fp8::E5M2)] {
        for c in 0..=255u8 {
            let (a, b) = (fp8::decode(&f, c), fp8_ref_decode(s, c));
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{s:?} {c:#04x}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn spec_validation_table() {
    use Granularity::*;
    for s in [Scheme::F32, Scheme::F16, Scheme::BF16] {
        assert!(QuantSpec {
            scheme: s,
            granularity: PerTensor,
            group: 0
        }
        .validate()
        .is_ok());
        for (g, grp) in [(PerTensor, 32), (PerChannel, 0), (PerGroup, 32), (Block, 32)] {
            assert!(
                QuantSpec {
                    scheme: s,
                    granularity: g,
                    group: grp
                }
                .validate()
                .is_err(),
                "{s:?} {g:?} {grp}"
            );
        }
    }
    for s in [Scheme::Q8Sym, Scheme::Q8Asym, Scheme::Q4Sym, Scheme::Q4Asym] {
        assert!(QuantSpec::per_channel(s).validate().is_ok());
        for g in [32, 64, 96, 65536] {
            assert!(QuantSpec::per_group(s, g).validate().is_ok());
        }
        for g in [0, 16, 48, 65536 + 32] {
            assert!(QuantSpec::per_group(s, g).validate().is_err());
        }
        for (g, grp) in [(PerTensor, 0), (PerChannel, 32), (Block, 32)] {
            assert!(
                QuantSpec {
                    scheme: s,
                    granularity: g,
                    group: grp
                }
                .validate()
                .is_err(),
                "{s:?} {g:?}"
            );
        }
    }
    for s in [Scheme::Fp8E4M3, Scheme::Fp8E5M2] {
        for (g, grp, ok) in [
            (PerTensor, 0, true),
            (PerChannel, 0, true),
            (Block, 1, true),
            (Block, 128, true),
            (Block, 65536, true),
            (Block, 0, false),
            (Block, 65537, false),
            (PerGroup, 32, false),
            (PerTensor, 1, false),
        ] {
            assert_eq!(
                QuantSpec {
                    scheme: s,
                    granularity: g,
                    group: grp
                }
                .validate()
                .is_ok(),
                ok,
                "{s:?} {g:?} {grp}"
            );
        }
    }
    assert!(QuantSpec::F32.layout(0, 4).is_err());
    assert!(QuantSpec::F32.layout(4, 0).is_err());
}

#[test]
fn bad_lengths_and_alignment_are_errors() {
    let spec = QuantSpec::per_group(Scheme::Q4Asym, 32);
    let l = spec.layout(2, 40).unwrap();
    let mut out = Aligned::new(l.total_bytes as usize + 1);
    let v = vec![0.5f32; 80];
    assert_eq!(
        quantize(spec, 2, 40, &v[..79], &mut out.bytes_mut()[..l.total_bytes as usize]),
        Err(QuantError::BadLength { expected: 80, actual: 79 })
    );
    assert_eq!(
        quantize(spec, 2, 40, &v, out.bytes_mut()),
        Err(QuantError::BadLength {
            expected: l.total_bytes as usize,
            actual: l.total_bytes as usize + 1
        })
    );
    assert!(matches!(
        quantize(QuantSpec::per_group(Scheme::Q4Asym, 33), 2, 40, &v, out.bytes_mut()),
        Err(QuantError::BadSpec(_))
    ));
    quantize(spec, 2, 40, &v, &mut out.bytes_mut()[..l.total_bytes as usize]).unwrap();
    assert!(TensorView::new(spec, 2, 40, &out.bytes()[..l.total_bytes as usize]).is_ok());
    assert!(matches!(
        TensorView::new(spec, 2, 40, out.bytes()),
        Err(QuantError::BadLength { .. })
    ));
    assert!(matches!(
        TensorView::new(spec, 2, 72, &out.bytes()[..l.total_bytes as usize]),
        Err(QuantError::BadLength { .. })
    ));
    // Scales at an odd address: misaligned for f16.
    let n = l.total_bytes as usize;
    let mut shifted = Aligned::new(n + 1);
    assert!(matches!(
        TensorView::new(spec, 2, 40, &shifted.bytes_mut()[1..]),
        Err(QuantError::BadSpec(_))
    ));
    let f = QuantSpec::F32;
    let mut fb = Aligned::new(17);
    assert!(matches!(
        TensorView::new(f, 1, 4, &fb.bytes_mut()[1..]),
        Err(QuantError::BadSpec(_))
    ));
    let _ = BLOCK;
}

// ---------------------------------------------------------------------------
// Known bugs / limitations (ignored; see the report in docs and the doc comments)
// ---------------------------------------------------------------------------

fn deq_all(spec: QuantSpec, rows: u32, cols: u32, v: &[f32]) -> Vec<f32> {
    let a = quantized(spec, rows, cols, v);
    let view = TensorView::new(spec, rows, cols, a.bytes()).unwrap();
    dequantized(&view)
}

/// BUG (core/src/quant/int.rs `GroupParams::from_range`): finite inputs
/// whose f16 scale (or asym min) overflows give an infinite scale / min and
/// dequantize to NaN / -inf instead of being rejected or saturated:
/// * Q8 sym: amax > 65504·127 (e.g. [1e7]): scale = inf, code 0, value inf·0 = NaN.
/// * Q4 sym: amax > 65504·7.5 (e.g. [1e6]): scale = inf, value NaN.
/// * Q8 asym: min = −scale·zero overflows f16 when xmin < −65504 (e.g. [−1e5, 0]).
#[test]
fn int_scale_overflow() {
    for (spec, v) in [
        (QuantSpec::per_channel(Scheme::Q8Sym), vec![1e7f32, 1.0]),
        (QuantSpec::per_channel(Scheme::Q4Sym), vec![1e6f32, 1.0]),
        (QuantSpec::per_channel(Scheme::Q8Asym), vec![-1e5f32, 0.0]),
        (QuantSpec::per_channel(Scheme::Q4Asym), vec![-1e5f32, 1.0]),
    ] {
        let l = spec.layout(1, 2).unwrap();
        let mut out = Aligned::new(l.total_bytes as usize);
        if quantize(spec, 1, 2, &v, out.bytes_mut()).is_ok() {
            let d = deq_all(spec, 1, 2, &v);
            assert!(d.iter().all(|x| x.is_finite()), "{spec:?} {v:?} -> {d:?}");
        }
    }
}

/// BF16 (same exponent range as f32): |x| >= 3.3895e38 rounds to inf, e.g. f32::MAX.
#[test]
fn bf16_overflow() {
    let spec = QuantSpec::float(Scheme::BF16);
    let mut out = Aligned::new(spec.layout(1, 2).unwrap().total_bytes as usize);
    assert_eq!(
        quantize(spec, 1, 2, &[1.0, f32::MAX], out.bytes_mut()),
        Err(QuantError::OutOfRange { index: 1 })
    );
}

/// F16 storage of finite values above 65504 (rounding to > 65519.99) gives
/// ±inf; quantize does not report it.
#[test]
fn f16_overflow() {
    let v = [1e5f32, -7e4];
    let spec = QuantSpec::float(Scheme::F16);
    let l = spec.layout(1, 2).unwrap();
    let mut out = Aligned::new(l.total_bytes as usize);
    if quantize(spec, 1, 2, &v, out.bytes_mut()).is_ok() {
        let d = deq_all(spec, 1, 2, &v);
        assert!(d.iter().all(|x| x.is_finite()), "{d:?}");
    }
}

/// BUG (core/src/quant/fp8.rs `quantize` + `scale_for`): when a tile's
/// amax is so small that `amax / 448` (E4M3) or `amax / 57344` (E5M2)
/// underflows to 0.0 (amax < ~3.1e-43, resp. ~4.0e-41), the stored scale is
/// 0 and every element is encoded as `x / 0`: non-zero ones as ±inf →
/// saturated max code, zero ones as 0/0 = NaN → the NaN code 0x7F.
/// Dequantizing gives NaN for input [1e-45, 0.0].
#[test]
fn fp8_tiny_tile_gives_nan() {
    for s in [Scheme::Fp8E4M3, Scheme::Fp8E5M2] {
        let spec = QuantSpec {
            scheme: s,
            granularity: Granularity::PerTensor,
            group: 0,
        };
        let v = [f32::from_bits(1), 0.0];
        let d = deq_all(spec, 1, 2, &v);
        assert!(d.iter().all(|x| x.is_finite()), "{s:?}: {v:?} -> {d:?}");
    }
}

/// Not a code bug but a property of the GPTQ Q4 sym convention (scale =
/// 2·amax/15, codes −8..7): the extreme codes dequantize to 7·s or −8·s, never
/// ±7.5·s, so fitting again picks a different scale. E.g. x = [−1, 0.5]:
/// scale 0x3044 (0.13330), codes [0, 12]; dequantized [−1.0664, 0.5332];
/// re-quantized: scale 0x308d (0.14221), codes [1, 12]. Only Q8 sym is
/// byte-idempotent; the fixed-point property that does hold for every
/// integer scheme is `codes_are_fixed_points_of_their_group_params`.
#[test]
#[ignore = "by design: Q4 sym RTN is not idempotent (amax maps to 7.5 codes)"]
fn q4_sym_requantization_is_idempotent() {
    let spec = QuantSpec::per_channel(Scheme::Q4Sym);
    let v = [-1.0f32, 0.5];
    let a = quantized(spec, 1, 2, &v);
    let d = deq_all(spec, 1, 2, &v);
    let b = quantized(spec, 1, 2, &d);
    assert_eq!(a.bytes(), b.bytes());
}

/// scheme.rs says padding codes "dequantize to exactly 0". For asym schemes
/// they hold the zero point, whose value `scale·zero + min` is the f16
/// rounding error of `min = −scale·zero`, not 0. E.g. Q4 asym group
/// [−0.7, 1.3]: scale f16(2/15) = 0.13330, zero 5, min f16(−0.66650) = −0.66650…
/// (choose inputs so that −scale·zero is not an f16 value).
#[test]
#[ignore = "doc bug: asym padding / zero codes do not dequantize to exactly 0"]
fn asym_zero_point_dequantizes_to_exact_zero() {
    let mut worst = 0f32;
    for i in 1..200 {
        let lo = -(i as f32) * 0.0137;
        let p = int::GroupParams::from_range(Scheme::Q8Asym, lo, 1.0);
        worst = worst.max(p.value(p.zero).abs());
    }
    assert_eq!(worst, 0.0);
}

/// Huge finite inputs: FP8 keeps them finite through its f32 scale, F32
/// exactly, BF16 up to 3.38e38.
#[test]
fn huge_values_stay_finite_in_f32_bf16_fp8() {
    let v = [f32::MAX, -f32::MAX, 1.0, -3e38, 1e38, 0.0];
    check_case(QuantSpec::float(Scheme::BF16), 2, 3, &[3.3e38, -3.38e38, 1.0, -3e38, 1e38, 0.0]);
    for spec in [
        QuantSpec::F32,
        QuantSpec {
            scheme: Scheme::Fp8E4M3,
            granularity: Granularity::PerTensor,
            group: 0,
        },
        QuantSpec {
            scheme: Scheme::Fp8E5M2,
            granularity: Granularity::PerChannel,
            group: 0,
        },
        QuantSpec {
            scheme: Scheme::Fp8E4M3,
            granularity: Granularity::Block,
            group: 2,
        },
    ] {
        check_case(spec, 2, 3, &v);
    }
}
