//! The normalized Walsh–Hadamard transform `x ← x·H/√n` for
//! `n = K·2^m`, in `O(n·(log n + K))` with no tables and no allocation.
//!
//! `H = H_K ⊗ H_{2^m}` (index `i = a·2^m + b`): a fast Walsh–Hadamard
//! butterfly of size `2^m` on each of the `K` contiguous chunks, then, for
//! each `b`, the `K` values `x[a·2^m + b]` mixed by `H_K`. `H_K` is
//! Sylvester's for `K ∈ {1, 2}` and otherwise built on the fly from
//! quadratic residues modulo a prime `q`:
//!
//! * **Paley I**, `K = q + 1`, `q ≡ 3 (mod 4)` (12, 20, 24, 32, 44, 48,
//!   60, 68, 72, 80, 84, 104, 108, 128, 132, 140, …): `H = I + S` with
//!   the skew conference matrix `S = [[0, 1ᵀ], [−1, Q]]`,
//!   `Q[i][j] = χ(j − i)` (the Legendre symbol mod `q`).
//! * **Paley II**, `K = 2(q + 1)`, `q ≡ 1 (mod 4)` (12, 28, 36, 60, 76,
//!   84, 108, …): with the symmetric conference matrix
//!   `C = [[0, 1ᵀ], [1, Q]]`, `H = C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]]`.
//!
//! This covers the sizes of most Llama-family models (576 = 36·16,
//! 1536 = 12·128, 3584 = 28·128, 8960 = 140·64, 14336 = 28·512, powers of
//! two). QuaRot's reference also ships hard-coded Hadamard matrices of
//! orders 52, 156 and 172 (Llama-2-7B's 11008 = 172·64), which need
//! Williamson-type or GF(p²) constructions: those sizes are unsupported
//! here ([`factor`] returns `None`).
//!
//! The transform is its own inverse only when `H_K` is symmetric (Sylvester,
//! Paley II); in general the inverse is `x ← x·Hᵀ/√n`. QuaRot needs only the
//! forward one: a weight `W` (`[out, in]`) whose input is transformed
//! online becomes `W·H/√n`, i.e. the same transform applied to each row.

/// Largest `K` handled (the mixing step keeps `K` values on the stack).
pub const MAX_K: usize = 256;

/// `n = K · 2^m` with a constructible `H_K`: `Some((K, 2^m))`, or `None`.
pub fn factor(n: usize) -> Option<(usize, usize)> {
    if n == 0 {
        return None;
    }
    let tz = n.trailing_zeros();
    let odd = n >> tz;
    // Prefer the smallest K (cheapest mixing step).
    (0..=tz)
        .map(|j| odd << j)
        .find(|&k| k <= MAX_K && construction(k).is_some())
        .and_then(|k| Some((k, n.checked_div(k)?)))
}

/// Whether `x ← x·H/√n` is available for `n`.
pub fn supported(n: usize) -> bool {
    factor(n).is_some()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Construction {
    Sylvester,
    PaleyI(usize),
    PaleyII(usize),
}

impl Construction {
    /// The prime whose quadratic residues define the matrix (1 for Sylvester).
    fn modulus(self) -> usize {
        match self {
            Construction::PaleyI(q) | Construction::PaleyII(q) => q,
            Construction::Sylvester => 1,
        }
    }
}

fn construction(k: usize) -> Option<Construction> {
    if k == 1 || k == 2 {
        return Some(Construction::Sylvester);
    }
    if k % 4 != 0 {
        return None;
    }
    if is_prime(k - 1) && (k - 1) % 4 == 3 {
        return Some(Construction::PaleyI(k - 1));
    }
    if k % 8 == 4 && is_prime(k / 2 - 1) && (k / 2 - 1) % 4 == 1 {
        return Some(Construction::PaleyII(k / 2 - 1));
    }
    None
}

fn is_prime(q: usize) -> bool {
    q >= 2 && (2..q).take_while(|d| d * d <= q).all(|d| q % d != 0)
}

/// Quadratic residues mod `q` (< [`MAX_K`]): `res[a]` for `a ≠ 0`.
fn residues(q: usize) -> [bool; MAX_K] {
    let mut res = [false; MAX_K];
    for a in 1..q {
        if let Some(r) = res.get_mut(a * a % q) {
            *r = true;
        }
    }
    res
}

/// `χ(a)` for `a` in `0..q`: 0, +1 (residue) or −1.
fn chi(res: &[bool; MAX_K], q: usize, a: usize) -> i32 {
    match a.checked_rem(q) {
        None | Some(0) => 0,
        Some(r) if res.get(r) == Some(&true) => 1,
        _ => -1,
    }
}

/// Entry `(i, j)` of the unnormalized `H_K` (±1).
fn entry(c: Construction, res: &[bool; MAX_K], i: usize, j: usize) -> i32 {
    match c {
        Construction::Sylvester => {
            if (i & j).count_ones() % 2 == 0 {
                1
            } else {
                -1
            }
        }
        Construction::PaleyI(q) => {
            let s = match (i, j) {
                (0, 0) => 0,
                (0, _) => 1,
                (_, 0) => -1,
                _ => chi(res, q, j + q - i),
            };
            s + (i == j) as i32
        }
        Construction::PaleyII(q) => {
            let (bi, bj, ri, rj) = (i / 2, j / 2, i % 2, j % 2);
            if bi == bj {
                // I ⊗ [[1, −1], [−1, −1]]
                if ri == 0 && rj == 0 {
                    1
                } else {
                    -1
                }
            } else {
                let c = match (bi, bj) {
                    (0, _) | (_, 0) => 1,
                    _ => chi(res, q, bj + q - bi),
                };
                // C[bi][bj] ⊗ [[1, 1], [1, −1]]
                if ri == 1 && rj == 1 {
                    -c
                } else {
                    c
                }
            }
        }
    }
}

/// Entry `(i, j)` of the unnormalized `H_K` (±1), `None` when `K` has no
/// construction here or an index is out of range.
pub fn h_k(k: usize, i: usize, j: usize) -> Option<i32> {
    let c = construction(k).filter(|_| k <= MAX_K && i < k && j < k)?;
    Some(entry(c, &residues(c.modulus()), i, j))
}

/// In-place `x ← x·H/√n`, `n = x.len()`. Returns false (and leaves `x`
/// untouched) when `n` is not supported ([`factor`]).
pub fn transform(x: &mut [f32]) -> bool {
    let Some((k, p)) = factor(x.len()).filter(|&(k, p)| k <= MAX_K && p > 0) else {
        return false;
    };
    // Fast Walsh–Hadamard butterflies within each chunk of `p`.
    for chunk in x.chunks_exact_mut(p) {
        let mut h = 1;
        while h < p {
            for blk in chunk.chunks_exact_mut((2 * h).max(2)) {
                let (lo, hi) = blk.split_at_mut(blk.len() / 2);
                for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                    let (u, v) = (*a, *b);
                    *a = u + v;
                    *b = u - v;
                }
            }
            h *= 2;
        }
    }
    // Mixing across the K chunks: y[a'] = Σ_a x[a]·H_K[a][a'].
    if k > 1 {
        let c = construction(k).unwrap_or(Construction::Sylvester);
        let res = residues(c.modulus());
        let mut col = [0.0f32; MAX_K];
        for b in 0..p {
            for (a, v) in col[..k].iter_mut().enumerate() {
                *v = x.get(a * p + b).copied().unwrap_or(0.0);
            }
            for a2 in 0..k {
                let mut s = 0.0f32;
                for (a, &v) in col[..k].iter().enumerate() {
                    s += if entry(c, &res, a, a2) > 0 { v } else { -v };
                }
                if let Some(d) = x.get_mut(a2 * p + b) {
                    *d = s;
                }
            }
        }
    }
    let norm = 1.0 / libm::sqrtf(x.len() as f32);
    x.iter_mut().for_each(|v| *v *= norm);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn every_constructed_h_k_is_hadamard() {
        let mut seen = Vec::new();
        for k in 1..=MAX_K {
            if construction(k).is_none() {
                continue;
            }
            seen.push(k);
            let h: Vec<i32> = (0..k * k).map(|e| h_k(k, e / k, e % k).unwrap()).collect();
            for i in 0..k {
                for j in i..k {
                    let dot: i32 = (0..k).map(|c| h[i * k + c] * h[j * k + c]).sum();
                    assert_eq!(dot, if i == j { k as i32 } else { 0 }, "K={k} rows {i},{j}");
                }
            }
        }
        for k in [12, 20, 28, 36, 44, 60, 108, 140] {
            assert!(seen.contains(&k), "K={k} should be constructible");
        }
        for k in [52, 156, 172] {
            assert!(construction(k).is_none(), "K={k} is documented as unsupported");
        }
    }

    #[test]
    fn sizes_of_real_models() {
        assert_eq!(factor(64), Some((1, 64)));
        assert_eq!(factor(576), Some((36, 16)));
        assert_eq!(factor(1536), Some((12, 128)));
        assert_eq!(factor(8960), Some((140, 64)));
        assert_eq!(factor(14336), Some((28, 512)));
        assert_eq!(factor(172), None);
        assert_eq!(factor(11008), None);
        assert_eq!(factor(0), None);
        assert_eq!(factor(3), None);
    }

    /// The fast transform equals the dense product with `H_K ⊗ H_{2^m}`,
    /// and preserves the norm.
    #[test]
    fn fast_transform_matches_the_dense_product() {
        for n in [1usize, 2, 8, 12, 24, 28, 36, 72, 96, 576] {
            let (k, p) = factor(n).unwrap();
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25 + (i as f32).sin()).collect();
            let mut y = x.clone();
            assert!(transform(&mut y));
            let syl = |i: usize, j: usize| if (i & j).count_ones() % 2 == 0 { 1.0 } else { -1.0 };
            for j in 0..n {
                let mut s = 0.0f64;
                for i in 0..n {
                    let h = h_k(k, i / p, j / p).unwrap() as f64 * syl(i % p, j % p);
                    s += x[i] as f64 * h;
                }
                let e = s / (n as f64).sqrt();
                assert!((y[j] as f64 - e).abs() < 1e-4 * (1.0 + e.abs()), "n={n} j={j}: {} vs {e}", y[j]);
            }
            let (nx, ny): (f64, f64) = (
                x.iter().map(|v| (*v as f64).powi(2)).sum(),
                y.iter().map(|v| (*v as f64).powi(2)).sum(),
            );
            assert!((nx - ny).abs() < 1e-4 * nx, "n={n}: norm {nx} -> {ny}");
        }
        let mut bad = vec![1.0f32; 172];
        assert!(!transform(&mut bad));
        assert!(bad.iter().all(|&v| v == 1.0));
    }
}
