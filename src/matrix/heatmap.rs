//! The matrix as a heatmap: one cell per ordered pair, row = initiator
//! (the node that reads), column = target (the node that serves), colour =
//! GB/s at the largest size on a scale from 0 to the fastest pair, the value
//! written in the cell; failed pairs crossed, lost nodes' labels marked,
//! outlier cells framed. SVG and PNG; a pure function of `matrix.json`.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::MatrixResult;

const CELL: i32 = 72;
const LEFT: i32 = 190;
const TOP: i32 = 110;

/// Cold (slow) to warm (fast): red -> yellow -> green.
fn colour(frac: f64) -> RGBColor {
    let f = frac.clamp(0.0, 1.0);
    let (r, g) = if f < 0.5 { (220.0, 60.0 + 2.0 * f * 160.0) } else { (220.0 - (f - 0.5) * 2.0 * 170.0, 220.0) };
    RGBColor(r as u8, g as u8, 70)
}

fn size(n: usize) -> (u32, u32) {
    let side = CELL * n as i32;
    ((LEFT + side + 220).max(700) as u32, (TOP + side + 60).max(360) as u32)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, r: &MatrixResult) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Debug| format!("{x:?}");
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let n = r.nodes.len();
    let max = r.pairs.iter().filter_map(|p| p.gbps).fold(0.0_f64, f64::max);
    let outlier = |i: usize, j: usize| {
        r.verdict.as_ref().is_some_and(|v| {
            v.outlier_links.iter().any(|l| l.initiator == r.nodes[i].address && l.target == r.nodes[j].address)
        })
    };
    let font = |s: i32| ("sans-serif", s).into_font();
    let title = format!(
        "kvprobe matrix: GB/s (1e9 B/s) at the largest size, {} nodes{}",
        n,
        if r.contention { ", overlapping (contention)" } else { "" }
    );
    root.draw(&Text::new(title, (20, 16), font(18))).map_err(|x| e(&x))?;
    root.draw(&Text::new("row: initiator (reads)   column: target (serves)", (20, 44), font(13))).map_err(|x| e(&x))?;
    for (i, node) in r.nodes.iter().enumerate() {
        let label = format!("{}{}", node.address, if node.lost.is_some() { " (lost)" } else { "" });
        let y = TOP + i as i32 * CELL + CELL / 2 - 7;
        root.draw(&Text::new(label.clone(), (10, y), font(13))).map_err(|x| e(&x))?;
        let x = LEFT + i as i32 * CELL + 4;
        root.draw(&Text::new(label, (x, TOP - 22 - (i as i32 % 2) * 16), font(11))).map_err(|x| e(&x))?;
    }
    for i in 0..n {
        for j in 0..n {
            let (x0, y0) = (LEFT + j as i32 * CELL, TOP + i as i32 * CELL);
            let cell = [(x0, y0), (x0 + CELL - 2, y0 + CELL - 2)];
            if i == j {
                root.draw(&Rectangle::new(cell, RGBColor(235, 235, 235).filled())).map_err(|x| e(&x))?;
                continue;
            }
            let p = r.pairs.iter().find(|p| p.initiator == i && p.target == j);
            match p.and_then(|p| p.gbps.map(|g| (p, g))) {
                Some((_, g)) => {
                    let frac = if max > 0.0 { g / max } else { 0.0 };
                    root.draw(&Rectangle::new(cell, colour(frac).filled())).map_err(|x| e(&x))?;
                    let text = if g >= 10.0 {
                        format!("{g:.1}")
                    } else if g >= 1.0 {
                        format!("{g:.2}")
                    } else {
                        format!("{g:.3}")
                    };
                    root.draw(&Text::new(text, (x0 + 12, y0 + CELL / 2 - 8), font(14))).map_err(|x| e(&x))?;
                    if outlier(i, j) {
                        let inner = [(x0 + 2, y0 + 2), (x0 + CELL - 4, y0 + CELL - 4)];
                        root.draw(&Rectangle::new(inner, BLACK.stroke_width(3))).map_err(|x| e(&x))?;
                    }
                }
                None => {
                    root.draw(&Rectangle::new(cell, RGBColor(200, 200, 200).filled())).map_err(|x| e(&x))?;
                    let mark = match p.map(|p| p.status.as_str()) {
                        Some("failed") => "failed",
                        Some("skipped") => "lost",
                        _ => "-",
                    };
                    root.draw(&Text::new(mark, (x0 + 10, y0 + CELL / 2 - 8), font(13))).map_err(|x| e(&x))?;
                }
            }
        }
    }
    // the colour scale
    let x = LEFT + n as i32 * CELL + 30;
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
        let root = SVGBackend::with_string(&mut s, size(r.nodes.len())).into_drawing_area();
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
    let root = BitMapBackend::new(&f, size(r.nodes.len())).into_drawing_area();
    match draw(root, r) {
        Ok(()) => files.push(f),
        Err(e) => return (files, Some(format!("PNG heatmap: {e}"))),
    }
    (files, None)
}
