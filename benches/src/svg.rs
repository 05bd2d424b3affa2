//! A minimal SVG line chart (no plotting dependency): log2 x axis, linear y axis, one
//! polyline per series, a legend. Enough for throughput- and latency-vs-concurrency plots.

use std::fmt::Write as _;

/// One line on a chart.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points; x > 0 (log2 axis).
    pub points: Vec<(f64, f64)>,
    /// CSS colour.
    pub colour: &'static str,
    /// Dashed line (for reference levels such as a ceiling).
    pub dashed: bool,
}

/// Renders charts side by side: each `(title, y label, series)`, linear y axes.
pub fn render(panels: &[(&str, &str, Vec<Series>)]) -> String {
    render_scaled(panels, &[])
}

/// As [`render`], with a log10 y axis for panel `i` where `log_y[i]` (for latencies that
/// differ by orders of magnitude between contenders; y values must be > 0).
pub fn render_scaled(panels: &[(&str, &str, Vec<Series>)], log_y: &[bool]) -> String {
    let (w, h, m) = (460.0, 320.0, 60.0);
    let total_w = w * panels.len() as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, (title, ylabel, series)) in panels.iter().enumerate() {
        let ox = w * i as f64;
        let pts = series.iter().flat_map(|s| s.points.iter());
        let xmax = pts
            .clone()
            .map(|p| p.0.log2())
            .fold(0.0f64, f64::max)
            .max(1.0);
        let log = log_y.get(i).copied().unwrap_or(false);
        let ys = pts.map(|p| p.1).filter(|y| !log || *y > 0.0);
        let (ymin, ymax) = if log {
            let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
            let lo = if lo == f64::MAX { 1.0 } else { lo };
            (lo.log10().floor(), hi.max(lo * 10.0).log10().ceil())
        } else {
            (0.0, ys.fold(0.0f64, f64::max).max(1e-9) * 1.1)
        };
        // The y value as a fraction of the axis.
        let fy = |y: f64| {
            if log {
                (y.max(1e-300).log10() - ymin) / (ymax - ymin)
            } else {
                y / ymax
            }
        };
        let px = |x: f64| ox + m + (x.log2() / xmax) * (w - 1.5 * m);
        let py = |y: f64| h - m + 10.0 - fy(y) * (h - 1.6 * m);
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{title}</text>",
            ox + m
        );
        let _ = writeln!(
            out,
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/><line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{3}\" stroke=\"black\"/>",
            ox + m,
            h - m + 10.0,
            ox + w - 0.5 * m,
            0.6 * m
        );
        for k in 0..=(xmax as u32) {
            let x = f64::from(1u32 << k);
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x}</text>",
                px(x),
                h - m + 24.0
            );
        }
        let ticks: Vec<f64> = if log {
            (ymin as i32..=ymax as i32).map(|e| 10f64.powi(e)).collect()
        } else {
            (0..=4).map(|k| ymax * f64::from(k) / 4.0).collect()
        };
        for y in ticks {
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                ox + m - 4.0,
                py(y) + 4.0,
                short(y)
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">concurrency</text>",
            ox + w / 2.0,
            h - 8.0
        );
        let _ = writeln!(out, "<text x=\"{}\" y=\"{}\" transform=\"rotate(-90 {0} {1})\" text-anchor=\"middle\">{ylabel}</text>", ox + 14.0, h / 2.0);
        for (j, s) in series.iter().enumerate() {
            let path: Vec<String> = s
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let dash = if s.dashed {
                " stroke-dasharray=\"6 4\""
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
                s.colour,
                path.join(" ")
            );
            let ly = 0.6 * m + 14.0 * j as f64;
            let _ = writeln!(
                out,
                "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{3}\" stroke-width=\"2\"{dash}/><text x=\"{4}\" y=\"{5}\">{6}</text>",
                ox + m + 10.0,
                ly,
                ox + m + 30.0,
                s.colour,
                ox + m + 34.0,
                ly + 4.0,
                s.label
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
