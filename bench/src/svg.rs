//! Plain SVG line charts for `strait-bench e2e --svg`: no plotting crate, just `<polyline>`s on
//! labelled axes. Pure: data in, the SVG text out.
//!
//! - [`Series`]: a named line of `(x, y)` points.
//! - [`line_chart`]: the whole chart.

use std::fmt::Write as _;

/// Chart size in pixels, and the room kept for the axes' labels.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Ticks on an axis without given ticks.
const TICKS: usize = 5;
/// Line colours, one per series in turn.
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// A named line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Text safe inside SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A short label for an axis value.
fn label(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A line chart of `series` with the y axis from 0. `x_ticks`: where to put the x ticks and
/// what to write there; `None`: evenly spaced numbers.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_ticks: Option<&[(f64, &str)]>,
) -> String {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_min = points().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min, x_max)
    } else {
        (0.0, 1.0)
    };
    let y_max = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
    let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * w;
    let py = |y: f64| TOP + h - y / y_max * h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Axes, grid and ticks.
    let _ = writeln!(
        s,
        r##"<path d="M{LEFT},{TOP} V{} H{}" fill="none" stroke="#333"/>"##,
        TOP + h,
        LEFT + w
    );
    for i in 0..=TICKS {
        let y = y_max * i as f64 / TICKS as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + w,
            LEFT - 6.0,
            py(y) + 4.0,
            label(y),
            y0 = py(y)
        );
    }
    let even: Vec<(f64, String)> = (0..=TICKS)
        .map(|i| {
            let x = x_min + (x_max - x_min) * i as f64 / TICKS as f64;
            (x, label(x))
        })
        .collect();
    let ticks: Vec<(f64, String)> = match x_ticks {
        Some(t) => t.iter().map(|(x, l)| (*x, l.to_string())).collect(),
        None => even,
    };
    for (x, l) in ticks.iter().filter(|(x, _)| (x_min..=x_max).contains(x)) {
        let _ = writeln!(
            s,
            r##"<line x1="{x0:.1}" x2="{x0:.1}" y1="{}" y2="{}" stroke="#333"/><text x="{x0:.1}" y="{}" text-anchor="middle">{}</text>"##,
            TOP + h,
            TOP + h + 5.0,
            TOP + h + 18.0,
            escape(l),
            x0 = px(*x)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + w / 2.0,
        HEIGHT - 10.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        TOP + h / 2.0,
        TOP + h / 2.0,
        escape(y_label)
    );
    // The lines, and a legend in the top right corner.
    for (i, series) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = series
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = TOP + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            LEFT + w - 170.0,
            LEFT + w - 150.0,
            LEFT + w - 145.0,
            ly + 4.0,
            escape(&series.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_one_line_per_series_with_every_point_inside_the_plot() {
        let series = vec![
            Series {
                name: "a<b".into(),
                points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)],
            },
            Series {
                name: "c".into(),
                points: vec![(0.5, 0.0)],
            },
        ];
        let svg = line_chart("t", "x", "y", &series, Some(&[(1.0, "one")]));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b") && svg.contains(">one<"));
        let first = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        for p in first.split(' ') {
            let (x, y) = p.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((LEFT..=WIDTH - RIGHT).contains(&x) && (TOP..=HEIGHT - BOTTOM).contains(&y));
        }
    }

    #[test]
    fn no_data_still_draws_the_axes() {
        let svg = line_chart("empty", "x", "y", &[], None);
        assert!(svg.contains("<path") && !svg.contains("NaN") && !svg.contains("inf"));
    }
}
