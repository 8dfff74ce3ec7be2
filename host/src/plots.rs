//! Plots of a comparison, drawn as SVG with plotters and rasterized to PNG
//! with resvg: perplexity against size with the Pareto front, and per-layer
//! reconstruction error per method.
use crate::compare::Row;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// The candidates that no other candidate beats on both size and perplexity.
pub fn pareto(points: &[(f64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].0.is_finite() && points[i].1.is_finite())
        .collect();
    idx.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0).then(points[a].1.total_cmp(&points[b].1)));
    let mut front = Vec::new();
    let mut best = f64::INFINITY;
    for i in idx {
        if points[i].1 < best {
            best = points[i].1;
            front.push(i);
        }
    }
    front
}

/// Perplexity (y) against file size in MB (x), one labelled point per
/// model, the reference dashed, the Pareto front joined.
pub fn ppl_vs_size(path: &Path, reference: &Row, rows: &[Row]) -> Result<()> {
    let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.size_mb, r.ppl)).collect();
    let all: Vec<(f64, f64)> = pts
        .iter()
        .copied()
        .chain([(reference.size_mb, reference.ppl)])
        .filter(|p| p.1.is_finite())
        .collect();
    let (x0, x1) = all.iter().fold((f64::INFINITY, 0f64), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all.iter().fold((f64::INFINITY, 0f64), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (xpad, ypad) = ((x1 - x0).max(x1 * 0.1) * 0.15, (y1 - y0).max(y1 * 0.01) * 0.15);
    let root = SVGBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Perplexity vs size", ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d((x0 - xpad).max(0.0)..x1 + xpad, (y0 - ypad).max(0.0)..y1 + ypad)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("file size (MB)")
        .y_desc("perplexity")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            [(x0 - xpad, reference.ppl), (x1 + xpad, reference.ppl)],
            ShapeStyle::from(&BLACK.mix(0.4)).stroke_width(1),
        ))
        .map_err(err)?
        .label(format!("{} ({:.3})", reference.name, reference.ppl))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.mix(0.4)));
    let front = pareto(&pts);
    chart
        .draw_series(LineSeries::new(
            front.iter().map(|&i| pts[i]),
            ShapeStyle::from(&COLORS[3]).stroke_width(2),
        ))
        .map_err(err)?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], COLORS[3]));
    for (i, r) in rows.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let style = if r.pass { c.filled() } else { c.stroke_width(2) };
        chart.draw_series([Circle::new((r.size_mb, r.ppl), 6, style)]).map_err(err)?;
        chart
            .draw_series([Text::new(r.name.clone(), (r.size_mb, r.ppl), ("sans-serif", 13).into_font())])
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Relative reconstruction error (log scale) of every quantized layer, in
/// model order, one line per method.
pub fn layer_errors(path: &Path, series: &[(String, Vec<(String, f64)>)]) -> Result<()> {
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(0).max(2);
    let vals: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(0f64, f64::max);
    let (lo, hi) = if vals.is_empty() { (1e-6, 1.0) } else { (lo / 2.0, hi * 2.0) };
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Per-layer relative reconstruction error", ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0usize..n - 1, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("quantized layer (model order: q, k, v, o, gate, up, down per block)")
        .y_desc("relative error")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let data: Vec<(usize, f64)> = pts.iter().enumerate().filter(|(_, p)| p.1 > 0.0).map(|(j, p)| (j, p.1)).collect();
        chart
            .draw_series(LineSeries::new(data, ShapeStyle::from(&c).stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Rasterizes an SVG file to PNG (text in the system's fonts; a warning
/// when the machine has none, since the labels would be missing).
#[cfg(feature = "png")]
pub fn svg_to_png(svg: &Path, png: &Path) -> Result<()> {
    let mut opt = resvg::usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    // "sans-serif" resolves to Arial by default: map it to a family this machine has.
    let families: Vec<String> = opt.fontdb.faces().filter_map(|f| f.families.first().map(|x| x.0.clone())).collect();
    let pick = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial", "FreeSans"]
        .iter()
        .find(|want| families.iter().any(|f| f == *want))
        .map(|s| s.to_string())
        .or_else(|| families.first().cloned());
    match pick {
        Some(f) => {
            opt.fontdb_mut().set_sans_serif_family(f.clone());
            opt.font_family = f;
        }
        None => eprintln!("warning: no system fonts found: {} has no text (the SVG has it)", png.display()),
    }
    let data = std::fs::read(svg).map_err(|e| anyhow!("cannot read {}: {e}", svg.display()))?;
    let tree = resvg::usvg::Tree::from_data(&data, &opt).map_err(|e| anyhow!("{}: {e}", svg.display()))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or_else(|| anyhow!("{}: empty image", svg.display()))?;
    resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
    let bytes = pixmap.encode_png().map_err(|e| anyhow!("{}: {e}", png.display()))?;
    crate::model_file::write_atomic(png, &bytes)
}

/// Without the `png` feature: says so and writes nothing (the SVG is there).
#[cfg(not(feature = "png"))]
pub fn svg_to_png(svg: &Path, png: &Path) -> Result<()> {
    eprintln!(
        "note: {} not written (edgeq built without the `png` feature); {} has the plot",
        png.display(),
        svg.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn pareto_front() {
        let pts = [(1.0, 5.0), (2.0, 4.0), (1.5, 6.0), (3.0, 4.5), (4.0, 3.0), (f64::NAN, 1.0)];
        assert_eq!(super::pareto(&pts), vec![0, 1, 4]);
    }
}
