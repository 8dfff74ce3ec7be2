//! Round-to-nearest on the reference quantizer's grid (the baseline every
//! report shows next to GPTQ, AWQ and HQQ).
use super::{find_params, quantize_value, Grid, QuantizedLayer};

pub fn quantize(w: &[f32], rows: usize, cols: usize, grid: Grid) -> QuantizedLayer {
    let gl = grid.group_len(cols);
    let ng = grid.n_groups(cols);
    let maxq = grid.maxq();
    let mut q = QuantizedLayer {
        rows,
        cols,
        grid,
        codes: vec![0; rows * cols],
        scales: vec![0.0; rows * ng],
        zeros: vec![0.0; rows * ng],
        g_idx: None,
    };
    for r in 0..rows {
        for g in 0..ng {
            let (c0, c1) = (g * gl, ((g + 1) * gl).min(cols));
            let row = &w[r * cols..(r + 1) * cols];
            let (s, z) = find_params(&grid, row[c0..c1].iter().copied());
            q.scales[r * ng + g] = s;
            q.zeros[r * ng + g] = z;
            for c in c0..c1 {
                q.codes[r * cols + c] = quantize_value(row[c], s, z, maxq) as u8;
            }
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored in EQF, the layer dequantizes (through the runtime's reader)
    /// to its own values up to the f16 rounding of the scales.
    #[test]
    fn to_eqf_round_trips_through_the_reader() {
        let (rows, cols) = (3, 172);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32))
            .collect();
        for grid in [
            Grid {
                bits: 4,
                group: 32,
                sym: true,
            },
            Grid {
                bits: 4,
                group: 64,
                sym: false,
            },
            Grid {
                bits: 8,
                group: 0,
                sym: true,
            },
            Grid {
                bits: 8,
                group: 32,
                sym: false,
            },
        ] {
            let q = quantize(&w, rows, cols, grid);
            let deq = q.dequantize();
            let (spec, bytes) = q.to_eqf().unwrap();
            let aligned = crate::import::AlignedBytes::from(&bytes);
            let v = edgeq_core::TensorView::new(spec, rows as u32, cols as u32, aligned.as_bytes()).unwrap();
            let mut row = vec![0.0; cols];
            for r in 0..rows {
                v.dequantize_row(r, &mut row);
                for c in 0..cols {
                    let (a, b) = (deq[r * cols + c], row[c]);
                    let s = q.scales[r * grid.n_groups(cols) + q.group_of(c)];
                    // f16 scale (and min) rounding: at most 2^-11 relative each, times the code range
                    assert!((a - b).abs() <= s * grid.maxq() * 1.5e-3 + 1e-6, "{grid:?} r{r} c{c}: {a} vs {b}");
                }
            }
        }
    }
}
