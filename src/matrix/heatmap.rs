//! The matrix as a heatmap: one cell per ordered pair of endpoints (nodes,
//! or GPUs with `--gpus-per-node`), row = initiator (the one that reads),
//! column = target (the one that serves), colour = GB/s at the largest size
//! on a scale from 0 to the fastest pair, the value written in the cell
//! while cells are large enough; failed pairs marked, lost endpoints' labels
//! marked, outlier cells framed. Cells shrink as endpoints grow (hundreds of
//! GPUs still fit one picture). SVG and PNG; a pure function of `matrix.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::MatrixResult;

const LEFT: i32 = 200;
const TOP: i32 = 110;

/// Cell side in pixels for `n` endpoints: 72 for a few, shrinking so the
/// matrix stays about 3000 px wide, never under 6.
pub(crate) fn cell(n: usize) -> i32 {
    (3000 / n.max(1) as i32).clamp(6, 72)
}

/// Cold (slow) to warm (fast): red -> yellow -> green.
fn colour(frac: f64) -> RGBColor {
    let f = frac.clamp(0.0, 1.0);
    let (r, g) = if f < 0.5 { (220.0, 60.0 + 2.0 * f * 160.0) } else { (220.0 - (f - 0.5) * 2.0 * 170.0, 220.0) };
    RGBColor(r as u8, g as u8, 70)
}

pub(crate) fn size(n: usize) -> (u32, u32) {
    let side = cell(n) * n as i32;
    ((LEFT + side + 220).max(700) as u32, (TOP + side + 60).max(360) as u32)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, r: &MatrixResult) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Debug| format!("{x:?}");
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let eps = &r.endpoints;
    let n = eps.len();
    let side = cell(n);
    let gap = if side >= 20 { 2 } else { 0 };
    let max = r.pairs.iter().filter_map(|p| p.gbps).fold(0.0_f64, f64::max);
    let by_pair: HashMap<(usize, usize), &super::PairResult> =
        r.pairs.iter().map(|p| ((p.initiator, p.target), p)).collect();
    let outliers: std::collections::HashSet<(&str, &str)> = r
        .verdict
        .iter()
        .flat_map(|v| v.outlier_links.iter().map(|l| (l.initiator.as_str(), l.target.as_str())))
        .collect();
    let outlier = |i: usize, j: usize| outliers.contains(&(eps[i].label.as_str(), eps[j].label.as_str()));
    let font = |s: i32| ("sans-serif", s).into_font();
    let what = match (r.local, r.gpus_per_node) {
        (true, _) => {
            format!("{} GPUs of {}", r.endpoints.len(), r.nodes.first().map_or("this host", |n| n.address.as_str()))
        }
        (false, Some(g)) => format!("{} nodes x {g} GPUs", r.nodes.len()),
        (false, None) => format!("{} nodes", r.nodes.len()),
    };
    let title = format!(
        "kvprobe matrix: GB/s (1e9 B/s) at the largest size, {what}{}",
        if r.contention { ", overlapping (contention)" } else { "" }
    );
    root.draw(&Text::new(title, (20, 16), font(18))).map_err(|x| e(&x))?;
    root.draw(&Text::new("row: initiator (reads)   column: target (serves)", (20, 44), font(13))).map_err(|x| e(&x))?;
    let lost = |ep: &super::MatrixEndpoint| ep.lost.is_some() || r.nodes.get(ep.node).is_some_and(|n| n.lost.is_some());
    if side >= 12 {
        let fs = (side - 1).min(13);
        for (i, ep) in eps.iter().enumerate() {
            let label = format!("{}{}", ep.label, if lost(ep) { " (lost)" } else { "" });
            let y = TOP + i as i32 * side + side / 2 - fs / 2;
            root.draw(&Text::new(label.clone(), (10, y), font(fs))).map_err(|x| e(&x))?;
            if side >= 40 {
                let x = LEFT + i as i32 * side + 4;
                root.draw(&Text::new(label, (x, TOP - 22 - (i as i32 % 2) * 16), font(11))).map_err(|x| e(&x))?;
            }
        }
    }
    for i in 0..n {
        for j in 0..n {
            let (x0, y0) = (LEFT + j as i32 * side, TOP + i as i32 * side);
            let cell = [(x0, y0), (x0 + side - gap, y0 + side - gap)];
            if !r.is_link(i, j) {
                // itself, or GPUs of one node (not a network link)
                root.draw(&Rectangle::new(cell, RGBColor(235, 235, 235).filled())).map_err(|x| e(&x))?;
                continue;
            }
            let p = by_pair.get(&(i, j)).copied();
            match p.and_then(|p| p.gbps.map(|g| (p, g))) {
                Some((_, g)) => {
                    let frac = if max > 0.0 { g / max } else { 0.0 };
                    root.draw(&Rectangle::new(cell, colour(frac).filled())).map_err(|x| e(&x))?;
                    if outlier(i, j) && side < 40 {
                        root.draw(&Rectangle::new(cell, BLACK.stroke_width(1))).map_err(|x| e(&x))?;
                    }
                    if side < 40 {
                        continue;
                    }
                    let text = if g >= 10.0 {
                        format!("{g:.1}")
                    } else if g >= 1.0 {
                        format!("{g:.2}")
                    } else {
                        format!("{g:.3}")
                    };
                    root.draw(&Text::new(text, (x0 + 12, y0 + side / 2 - 8), font(14))).map_err(|x| e(&x))?;
                    // --local: the NVLink between the two GPUs, as NVML reports it
                    if let Some(nv) = r.nvlink(i, j) {
                        root.draw(&Text::new(nv, (x0 + 12, y0 + side / 2 + 10), font(10))).map_err(|x| e(&x))?;
                    }
                    if outlier(i, j) {
                        let inner = [(x0 + 2, y0 + 2), (x0 + side - 4, y0 + side - 4)];
                        root.draw(&Rectangle::new(inner, BLACK.stroke_width(3))).map_err(|x| e(&x))?;
                    }
                }
                None => {
                    root.draw(&Rectangle::new(cell, RGBColor(200, 200, 200).filled())).map_err(|x| e(&x))?;
                    if side < 40 {
                        continue;
                    }
                    let mark = match p.map(|p| p.status.as_str()) {
                        Some("failed") => "failed",
                        Some("skipped") => "lost",
                        _ => "-",
                    };
                    root.draw(&Text::new(mark, (x0 + 10, y0 + side / 2 - 8), font(13))).map_err(|x| e(&x))?;
                }
            }
        }
    }
    // the colour scale
    let x = LEFT + n as i32 * side + 30;
    for k in 0..=10 {
        let y = TOP + (10 - k) * 16;
        root.draw(&Rectangle::new([(x, y), (x + 20, y + 15)], colour(k as f64 / 10.0).filled())).map_err(|x| e(&x))?;
        if k % 5 == 0 {
            let v = max * k as f64 / 10.0;
            root.draw(&Text::new(format!("{v:.2} GB/s"), (x + 26, y), font(12))).map_err(|x| e(&x))?;
        }
    }
    root.draw(&Text::new("framed: outlier", (x, TOP + 11 * 16 + 10), font(12))).map_err(|x| e(&x))?;
    if let Some(v) = &r.verdict {
        let med = v.median_gbps.map(|m| format!("reference {m:.3} GB/s")).unwrap_or_default();
        root.draw(&Text::new(format!("verdict {} {med}", v.grade), (x, TOP + 11 * 16 + 30), font(12)))
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// The heatmap as SVG text.
pub fn svg(r: &MatrixResult) -> Result<String, String> {
    crate::report::plot::font()?;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, size(r.endpoints.len())).into_drawing_area();
        draw(root, r)?;
    }
    Ok(s)
}

/// Writes `heatmap.svg` and `heatmap.png` into `dir`; the files written and
/// a warning when one could not be drawn.
pub fn write(dir: &Path, r: &MatrixResult) -> (Vec<PathBuf>, Option<String>) {
    let mut files = Vec::new();
    let s = match svg(r) {
        Ok(s) => s,
        Err(e) => return (files, Some(format!("heatmap skipped: {e}"))),
    };
    let f = dir.join("heatmap.svg");
    if let Err(e) = crate::report::write_atomic(&f, s.as_bytes()) {
        return (files, Some(format!("cannot write {}: {e}", f.display())));
    }
    files.push(f);
    let f = dir.join("heatmap.png");
    let root = BitMapBackend::new(&f, size(r.endpoints.len())).into_drawing_area();
    match draw(root, r) {
        Ok(()) => files.push(f),
        Err(e) => return (files, Some(format!("PNG heatmap: {e}"))),
    }
    (files, None)
}
