//! A dependency-free loss-curve SVG: training loss as a line, held-out loss as dots.
use crate::error::Result;
use std::fmt::Write;
use std::path::Path;

pub fn write_loss_svg(path: &Path, rows: &[(usize, f64, Option<f64>)]) -> Result<()> {
    let (w, h, m) = (640.0, 360.0, 50.0);
    let vals: Vec<f64> = rows
        .iter()
        .flat_map(|r| std::iter::once(r.1).chain(r.2))
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = vals
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (lo.min(0.0), lo.max(0.0) + 1.0)
    };
    let max_step = rows.iter().map(|r| r.0).max().unwrap_or(1).max(1) as f64;
    let x = |s: usize| m + (w - 2.0 * m) * s as f64 / max_step;
    let y = |v: f64| h - m - (h - 2.0 * m) * (v - lo) / (hi - lo);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - m,
        w - m,
        h - m
    );
    let _ = writeln!(s, r#"<line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/>"#, h - m);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">step (max {max_step})</text>"#,
        w / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="5" y="{}">{hi:.3}</text><text x="5" y="{}">{lo:.3}</text>"#,
        m,
        h - m
    );
    let pts: Vec<String> = rows
        .iter()
        .filter(|r| r.1.is_finite())
        .map(|r| format!("{:.1},{:.1}", x(r.0), y(r.1)))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{}"/>"#,
        pts.join(" ")
    );
    for r in rows {
        if let Some(e) = r.2.filter(|e| e.is_finite()) {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="darkorange"/>"#,
                x(r.0),
                y(e)
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" fill="steelblue">train loss</text><text x="{}" y="20" fill="darkorange">held-out loss</text>"#,
        m,
        m + 100.0
    );
    s.push_str("</svg>\n");
    crate::fsutil::write_bytes_atomic(path, s.as_bytes())
}
