//! riscv64 "V" (RVV 1.0) kernels, in `asm!` with `.option arch, +v`
//! (stable Rust has no RVV intrinsics and no stable `v` target feature).
//!
//! This slice dequantizes each weight row in scalar code — with
//! `TensorView::dequantize_row`, the reference itself, so weights are
//! bit-exact by construction — into `scratch`, then runs the dot products in
//! vector code: vector-length agnostic (`vsetvli` per strip, LMUL = 4),
//! one `vfmacc.vv` per strip and token into a per-token accumulator group
//! whose tail is left undisturbed (`tu`) on the last, short strip, then one
//! `vfredusum.vs` per token. Up to four tokens share each strip of the row
//! (one load of the weights); the instruction sequence for one token is the
//! same whether it runs alone or with others. F32 rows are read in place.
//! Quantized-domain vector dequantization is the next slice.
use core::arch::asm;
use core::ops::Range;
use edgeq_core::{Scheme, TensorView};

/// # Safety
/// The hart implements V (RVV 1.0) and the OS enabled it; `lib::matmul`'s
/// checks (`args_ok`, `simd_view_ok`) passed for these arguments.
pub(crate) unsafe fn matmul(y: &mut [f32], w: &TensorView<'_>, x: &[f32], t: usize, rows: Range<usize>, scratch: &mut [f32]) {
    let (n_rows, cols) = (w.rows(), w.cols());
    let s = w.scheme();
    if !(s.is_int() || s.is_fp8() || s == Scheme::F32 || s == Scheme::F16) {
        return crate::scalar::matmul(y, w, x, t, rows, scratch);
    }
    let f32_data = if s == Scheme::F32 { w.as_f32() } else { &[] };
    for r in rows {
        let row: &[f32] = if s == Scheme::F32 {
            &f32_data[r * cols..(r + 1) * cols]
        } else {
            w.dequantize_row(r, scratch);
            &scratch[..cols]
        };
        let mut i = 0;
        while i < t {
            let xs = |k: usize| x[(i + k) * cols..(i + k + 1) * cols].as_ptr();
            let n = (t - i).min(4);
            // SAFETY: `row` and each token's slice hold `cols` floats
            // (`args_ok`: x.len() ≥ t·cols); V is available (contract).
            let out: [f32; 4] = unsafe {
                match n {
                    4 => dot4(row.as_ptr(), [xs(0), xs(1), xs(2), xs(3)], cols),
                    2 | 3 => {
                        let [a, b] = dot2(row.as_ptr(), [xs(0), xs(1)], cols);
                        [a, b, 0.0, 0.0]
                    }
                    _ => [dot1(row.as_ptr(), xs(0), cols), 0.0, 0.0, 0.0],
                }
            };
            let done = if n == 3 { 2 } else { n };
            for (k, &o) in out[..done].iter().enumerate() {
                y[(i + k) * n_rows + r] = o;
            }
            i += done;
        }
    }
}

/// `Σ w[c]·x[c]`, `n` elements.
///
/// # Safety
/// `w` and `x` valid for `n` f32 reads; V available.
unsafe fn dot1(w: *const f32, x: *const f32, n: usize) -> f32 {
    let out: f32;
    // SAFETY: reads n floats from w and x (caller); clobbers only the
    // declared vector registers, vl/vtype and the temporaries.
    unsafe {
        asm!(
            ".option push",
            ".option arch, +v",
            "vsetvli {tmp}, zero, e32, m4, ta, ma",
            "vmv.v.i v8, 0",
            "beqz {n}, 2f",
            "1:",
            "vsetvli {vl}, {n}, e32, m4, tu, ma",
            "vle32.v v24, ({w})",
            "vle32.v v28, ({x0})",
            "vfmacc.vv v8, v24, v28",
            "slli {tmp}, {vl}, 2",
            "add {w}, {w}, {tmp}",
            "add {x0}, {x0}, {tmp}",
            "sub {n}, {n}, {vl}",
            "bnez {n}, 1b",
            "2:",
            "vsetvli {tmp}, zero, e32, m4, ta, ma",
            "vmv.s.x v4, zero",
            "vfredusum.vs v4, v8, v4",
            "vfmv.f.s {o0}, v4",
            ".option pop",
            n = inout(reg) n => _,
            w = inout(reg) w => _,
            x0 = inout(reg) x => _,
            vl = out(reg) _,
            tmp = out(reg) _,
            o0 = out(freg) out,
            out("v4") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack, readonly),
        );
    }
    out
}

/// Two tokens: the same per-token sequence as [`dot1`].
///
/// # Safety
/// `w` and each `x[k]` valid for `n` f32 reads; V available.
unsafe fn dot2(w: *const f32, x: [*const f32; 2], n: usize) -> [f32; 2] {
    let (o0, o1): (f32, f32);
    // SAFETY: reads n floats from w and each x[k] (caller); clobbers only
    // the declared vector registers, vl/vtype and the temporaries.
    unsafe {
        asm!(
            ".option push",
            ".option arch, +v",
            "vsetvli {tmp}, zero, e32, m4, ta, ma",
            "vmv.v.i v8, 0",
            "vmv.v.i v12, 0",
            "beqz {n}, 2f",
            "1:",
            "vsetvli {vl}, {n}, e32, m4, tu, ma",
            "vle32.v v24, ({w})",
            "vle32.v v28, ({x0})",
            "vfmacc.vv v8, v24, v28",
            "vle32.v v28, ({x1})",
            "vfmacc.vv v12, v24, v28",
            "slli {tmp}, {vl}, 2",
            "add {w}, {w}, {tmp}",
            "add {x0}, {x0}, {tmp}",
            "add {x1}, {x1}, {tmp}",
            "sub {n}, {n}, {vl}",
            "bnez {n}, 1b",
            "2:",
            "vsetvli {tmp}, zero, e32, m4, ta, ma",
            "vmv.s.x v4, zero",
            "vfredusum.vs v5, v8, v4",
            "vfmv.f.s {o0}, v5",
            "vfredusum.vs v5, v12, v4",
            "vfmv.f.s {o1}, v5",
            ".option pop",
            n = inout(reg) n => _,
            w = inout(reg) w => _,
            x0 = inout(reg) x[0] => _,
            x1 = inout(reg) x[1] => _,
            vl = out(reg) _,
            tmp = out(reg) _,
            o0 = out(freg) o0,
            o1 = out(freg) o1,
            out("v4") _, out("v5") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack, readonly),
        );
    }
    [o0, o1]
}

/// Four tokens: the same per-token sequence as [`dot1`].
///
/// # Safety
/// `w` and each `x[k]` valid for `n` f32 reads; V available.
unsafe fn dot4(w: *const f32, x: [*const f32; 4], n: usize) -> [f32; 4] {
    let (o0, o1, o2, o3): (f32, f32, f32, f32);
    // SAFETY: reads n floats from w and each x[k] (caller); clobbers only
    // the declared vector registers, vl/vtype and the temporaries.
    unsafe {
        asm!(
            ".option push",
            ".option arch, +v",
            "vsetvli {tmp}, zero, e32, m4, ta, ma",
            "vmv.v.i v8, 0",
            "vmv.v.i v12, 0",
            "vmv.v.i v16, 0",
            "vmv.v.i v20, 0",
            "beqz {n}, 2f",
            "1:",
            "vsetvli {vl}, {n}, e32, m4, tu, ma",
            "vle32.v v24, ({w})",
            "vle32.v v28, ({x0})",
            "vfmacc.vv v8, v24, v28",
            "vle32.v v28, ({x1})",
            "vfmacc.vv v12, v24, v28",
            "vle32.v v28, ({x2})",
            "vfmacc.vv v16, v24, v28",
            "vle32.v v28, ({x3})",
            "vfmacc.vv v20, v24, v28",
            "slli {tmp}, {vl}, 2",
            "add {w}, {w}, {tmp}",
            "add {x0}, {x0}, {tmp}",
            "add {x1}, {x1}, {tmp}",
            "add {x2}, {x2}, {tmp}",
            "add {x3}, {x3}, {tmp}",
            "sub {n}, {n}, {vl}",
            "bnez {n}, 1b",
            "2:",
            "vsetvli {tmp}, zero, e32, m4, ta, ma",
            "vmv.s.x v4, zero",
            "vfredusum.vs v5, v8, v4",
            "vfmv.f.s {o0}, v5",
            "vfredusum.vs v5, v12, v4",
            "vfmv.f.s {o1}, v5",
            "vfredusum.vs v5, v16, v4",
            "vfmv.f.s {o2}, v5",
            "vfredusum.vs v5, v20, v4",
            "vfmv.f.s {o3}, v5",
            ".option pop",
            n = inout(reg) n => _,
            w = inout(reg) w => _,
            x0 = inout(reg) x[0] => _,
            x1 = inout(reg) x[1] => _,
            x2 = inout(reg) x[2] => _,
            x3 = inout(reg) x[3] => _,
            vl = out(reg) _,
            tmp = out(reg) _,
            o0 = out(freg) o0,
            o1 = out(freg) o1,
            o2 = out(freg) o2,
            o3 = out(freg) o3,
            out("v4") _, out("v5") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(nostack, readonly),
        );
    }
    [o0, o1, o2, o3]
}
