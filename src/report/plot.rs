//! Plots: GB/s against transfer size on log-log axes, one series per
//! backend / operation / setting, the expected rate as a dashed reference
//! line, the legend beside the data; SVG and PNG. Text is laid out with a
//! TrueType font from this host (debug/setup.sh installs DejaVu); without
//! one the plots are skipped with a warning, the results are not affected.
//! Pure functions of the results, like the tables.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::schema::SweepResults;
use crate::units::size_label;

/// One line of a plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (bytes, GB/s), in size order.
    pub points: Vec<(u64, f64)>,
}

/// What to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// Title.
    pub title: String,
    /// The lines.
    pub series: Vec<Series>,
    /// Reference rates (GB/s) with their legend text: the expected rates.
    pub references: Vec<(f64, String)>,
}

/// One series per (backend, operation) of a sweep; the verdict's expected
/// rates as references. KV rows are skipped (their sizes are requests).
pub fn of_results(r: &SweepResults, prefix: &str) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for row in r.rows.iter().filter(|x| x.kv.is_none() && x.gbps > 0.0) {
        let label = format!("{prefix}{} {}", row.label(), row.op);
        match out.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push((row.size_bytes, row.gbps)),
            None => out.push(Series { label, points: vec![(row.size_bytes, row.gbps)] }),
        }
    }
    for s in &mut out {
        s.points.sort_by_key(|p| p.0);
    }
    out
}

/// The expected rates of a sweep's verdict (distinct), as references.
pub fn references_of(r: &SweepResults, prefix: &str) -> Vec<(f64, String)> {
    let mut out: Vec<(f64, String)> = Vec::new();
    if let Some(v) = &r.verdict {
        for p in &v.paths {
            if let Some(e) = &p.expected {
                if !out.iter().any(|(g, _)| (g - e.gbps).abs() < 1e-9) {
                    out.push((e.gbps, format!("{prefix}expected {:.3} GB/s ({})", e.gbps, short(&e.basis))));
                }
            }
        }
    }
    out
}

fn short(s: &str) -> String {
    let s = s.split(" between").next().unwrap_or(s);
    let s = s.split(',').next().unwrap_or(s);
    if s.chars().count() > 30 { format!("{}...", s.chars().take(27).collect::<String>()) } else { s.to_string() }
}

/// The series colours (matplotlib's tab10, first eight), shared with `pipeline::viz`.
pub(crate) const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Reference lines are dark, dashed, and never share a series colour.
const REFERENCE: [RGBColor; 3] = [RGBColor(0, 0, 0), RGBColor(90, 90, 90), RGBColor(150, 150, 150)];

/// Draws `p` on `root` (also used by `pipeline::viz` for the transport chart).
pub(crate) fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, p: &Plot) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (w, _) = root.dim_in_pixel();
    let (chart_area, legend_area) = root.split_horizontally(w.saturating_sub(380).max(200));
    let pts: Vec<(u64, f64)> = p.series.iter().flat_map(|s| s.points.iter().copied()).collect();
    if pts.is_empty() {
        return Err("nothing to plot".into());
    }
    // x is log2(bytes) on a linear axis, so ticks land on powers of two and
    // read as sizes (4K, 16K, ... 256M).
    let lg = |b: u64| (b.max(1) as f64).log2();
    let xmin = lg(pts.iter().map(|q| q.0).min().unwrap_or(1)).floor();
    let xmax = lg(pts.iter().map(|q| q.0).max().unwrap_or(2)).ceil().max(xmin + 1.0);
    let ys = pts.iter().map(|q| q.1).chain(p.references.iter().map(|r| r.0)).filter(|y| *y > 0.0);
    let ymin = ys.clone().fold(f64::MAX, f64::min) / 1.5;
    let ymax = ys.fold(0.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(&p.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(xmin..xmax, (ymin..ymax).log_scale())
        .map_err(|x| e(&x))?;
    let span = (xmax - xmin) as usize;
    chart
        .configure_mesh()
        .x_desc("transfer size (bytes, binary units, log scale)")
        .y_desc("GB/s (1e9 bytes/s, log scale)")
        .x_labels(span + 1)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .x_label_formatter(&|x| {
            let k = x.round();
            // every power of two is a tick; label every other one when crowded
            if (x - k).abs() > 0.01 || (span > 12 && (k as i64) % 2 != 0) {
                String::new()
            } else {
                size_label(2f64.powf(k).round() as u64)
            }
        })
        .y_label_formatter(&|y| if *y >= 1.0 { format!("{y:.0}") } else { format!("{y:.2}") })
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, s) in p.series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let line: Vec<(f64, f64)> = s.points.iter().map(|&(b, g)| (lg(b), g)).collect();
        chart.draw_series(LineSeries::new(line.clone(), c.stroke_width(2))).map_err(|x| e(&x))?;
        chart.draw_series(line.iter().map(|&q| Circle::new(q, 3, c.filled()))).map_err(|x| e(&x))?;
    }
    for (i, (g, _)) in p.references.iter().enumerate() {
        let c = REFERENCE[i % REFERENCE.len()];
        // dashed: short segments along the reference rate
        let n = 40;
        let segs = (0..n).filter(|k| k % 2 == 0).map(|k| {
            let a = xmin + (xmax - xmin) * k as f64 / n as f64;
            let b = xmin + (xmax - xmin) * (k + 1) as f64 / n as f64;
            PathElement::new(vec![(a, *g), (b, *g)], c.stroke_width(2))
        });
        chart.draw_series(segs).map_err(|x| e(&x))?;
    }
    // The legend, beside the chart.
    let mut y = 50;
    legend_area.draw(&Text::new("legend", (10, y - 25), ("sans-serif", 16).into_font())).map_err(|x| e(&x))?;
    let (_, h) = legend_area.dim_in_pixel();
    let room = ((h as i32 - 60) / 22).max(1) as usize;
    let shown = p.series.len().min(room.saturating_sub(p.references.len().min(room / 2) + 1).max(1));
    for (i, s) in p.series.iter().enumerate().take(shown) {
        let c = PALETTE[i % PALETTE.len()];
        legend_area.draw(&PathElement::new(vec![(10, y), (40, y)], c.stroke_width(3))).map_err(|x| e(&x))?;
        legend_area
            .draw(&Text::new(s.label.clone(), (48, y - 7), ("sans-serif", 14).into_font()))
            .map_err(|x| e(&x))?;
        y += 22;
    }
    if shown < p.series.len() {
        let more = format!("... {} more series (colours repeat; see the table)", p.series.len() - shown);
        legend_area.draw(&Text::new(more, (10, y - 7), ("sans-serif", 12).into_font())).map_err(|x| e(&x))?;
        y += 22;
    }
    for (i, (_, label)) in p.references.iter().enumerate() {
        let c = REFERENCE[i % REFERENCE.len()];
        for k in 0..3 {
            legend_area
                .draw(&PathElement::new(vec![(10 + 11 * k, y), (16 + 11 * k, y)], c.stroke_width(3)))
                .map_err(|x| e(&x))?;
        }
        legend_area.draw(&Text::new(label.clone(), (48, y - 7), ("sans-serif", 12).into_font())).map_err(|x| e(&x))?;
        y += 22;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// The plot as SVG text.
pub fn svg(p: &Plot) -> Result<String, String> {
    font()?;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (1100, 560)).into_drawing_area();
        draw(root, p)?;
    }
    Ok(s)
}

/// Fonts tried for PNG text, in order.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a font for bitmap text once (`KVPROBE_FONT`, a TrueType file,
/// first; then the system's); the path used, or the places searched.
pub(crate) fn font() -> Result<&'static str, String> {
    static FONT: std::sync::OnceLock<Result<&'static str, String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let own: Option<&'static str> = std::env::var("KVPROBE_FONT").ok().map(|s| &*Box::leak(s.into_boxed_str()));
        for f in own.iter().chain(FONTS.iter()) {
            if let Ok(bytes) = std::fs::read(f) {
                // The font must live as long as the process (plotters keeps a reference).
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(*f);
                }
            }
        }
        Err(format!(
            "no TrueType font found (searched {}{}); install fonts-dejavu-core or point KVPROBE_FONT at a .ttf",
            own.map(|o| format!("KVPROBE_FONT={o}, ")).unwrap_or_default(),
            FONTS.join(", ")
        ))
    })
    .clone()
}

/// Writes `<stem>.svg` and `<stem>.png` into `dir`. Returns the files
/// written and a warning when the PNG could not be drawn.
pub fn write(dir: &Path, stem: &str, p: &Plot) -> (Vec<PathBuf>, Option<String>) {
    let mut files = Vec::new();
    let mut warning = None;
    match svg(p) {
        Ok(s) => {
            let f = dir.join(format!("{stem}.svg"));
            match super::write_atomic(&f, s.as_bytes()) {
                Ok(()) => files.push(f),
                Err(e) => warning = Some(format!("cannot write {}: {e}", f.display())),
            }
        }
        Err(e) => return (files, Some(format!("plots skipped: {e}"))),
    }
    let f = dir.join(format!("{stem}.png"));
    let root = BitMapBackend::new(&f, (1100, 560)).into_drawing_area();
    match draw(root, p) {
        Ok(()) => files.push(f),
        Err(e) => warning = Some(format!("PNG plot: {e}")),
    }
    (files, warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot() -> Plot {
        Plot {
            title: "kvprobe test".into(),
            series: vec![
                Series { label: "nixl READ".into(), points: vec![(4096, 0.05), (1 << 20, 3.1), (256 << 20, 5.8)] },
                Series { label: "ucx READ".into(), points: vec![(4096, 0.5), (1 << 20, 9.0), (256 << 20, 8.0)] },
            ],
            references: vec![(9.3, "expected 9.3 GB/s (memcpy on this host)".into())],
        }
    }

    #[test]
    fn svg_has_axes_units_legend_and_the_reference() {
        let s = svg(&plot()).unwrap();
        assert!(s.starts_with("<svg"));
        for want in [
            "GB/s (1e9 bytes/s, log scale)",
            "transfer size",
            "nixl READ",
            "ucx READ",
            "expected 9.3 GB/s",
            "kvprobe test",
        ] {
            assert!(s.contains(want), "{want} missing");
        }
        // log-scale size ticks in binary units
        for tick in ["4K", "1M", "256M"] {
            let texts: Vec<&str> = s.split("</text>").filter_map(|t| t.rsplit('>').next()).map(str::trim).collect();
            assert!(texts.contains(&tick), "size tick {tick} in {texts:?}");
        }
    }

    #[test]
    fn an_empty_plot_is_an_error_not_a_panic() {
        let p = Plot { title: "x".into(), series: vec![], references: vec![] };
        assert!(svg(&p).is_err());
    }
}
