//! A grouped bar chart of the table, drawn by hand as SVG: requests/s and
//! p99 latency per mode, one bar per server.

use std::fmt::Write as _;

use super::options::Options;
use super::process::Subject;
use super::rounds::{Cell, Figures};

/// A grouped bar chart, by hand: requests/s and p99 latency per mode,
/// one bar per server.
pub fn render_svg(subjects: &[Subject], modes: &[&str], cells: &[Cell], options: &Options) -> String {
    const COLORS: [&str; 8] = ["#4c72b0", "#64b5cd", "#8172b3", "#dd8452", "#55a868", "#c44e52", "#937860", "#da8bc3"];
    const LEGEND_COLUMNS: usize = 4;
    let legend_rows = subjects.len().div_ceil(LEGEND_COLUMNS) as f64;
    let (width, height) = (900.0, 350.0 + 16.0 * legend_rows);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    /// A chart panel: its title, the figure it shows, its left edge.
    type Panel = (&'static str, fn(&Figures) -> f64, f64);
    let panels: [Panel; 2] =
        [("requests/s (higher is better)", |f| f.rps, 20.0), ("p99 latency, ms (lower is better)", |f| f.p99, 470.0)];
    for (title, value, left) in panels {
        let (plot_w, plot_h, top) = (400.0, 260.0, 40.0);
        let _ = writeln!(svg, r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{title}</text>"#, left + plot_w / 2.0);
        let max = cells.iter().filter_map(Cell::median).map(|f| value(&f)).filter(|v| v.is_finite()).fold(0.0, f64::max);
        let max = if max > 0.0 { max * 1.15 } else { 1.0 };
        let _ = writeln!(svg, r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, top + plot_h, left + plot_w, top + plot_h);
        let group_w = plot_w / modes.len() as f64;
        for (g, mode) in modes.iter().enumerate() {
            let x0 = left + g as f64 * group_w;
            let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{mode}</text>"#, x0 + group_w / 2.0, top + plot_h + 18.0);
            let bar_w = (group_w - 20.0) / subjects.len() as f64;
            for (i, s) in subjects.iter().enumerate() {
                let Some(f) = cells.iter().find(|c| c.server == s.name && c.mode == *mode).and_then(Cell::median) else { continue };
                let v = value(&f);
                let h = if v.is_finite() { v / max * plot_h } else { 0.0 };
                let x = x0 + 10.0 + i as f64 * bar_w;
                let y = top + plot_h - h;
                let _ = writeln!(svg, r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#, bar_w - 2.0, COLORS[i % COLORS.len()]);
                let label = if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") };
                let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{label}</text>"#, x + bar_w / 2.0 - 1.0, y - 4.0);
            }
        }
    }
    for (i, s) in subjects.iter().enumerate() {
        let x = 20.0 + (i % LEGEND_COLUMNS) as f64 * 220.0;
        let y = 330.0 + (i / LEGEND_COLUMNS) as f64 * 16.0;
        let _ = writeln!(svg, r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/>"#, y - 10.0, COLORS[i % COLORS.len()]);
        let _ = writeln!(svg, r#"<text x="{}" y="{y}">{}</text>"#, x + 18.0, xml_escape(s.name));
    }
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{}" font-size="10" fill="dimgray">{} connections, mix {}, {} per run, median of {} rounds; pipelined depth {}</text>"#,
        height - 8.0,
        options.connections,
        xml_escape(&options.mix),
        xml_escape(&options.duration),
        options.rounds,
        options.depth
    );
    svg.push_str("</svg>\n");
    svg
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
