//! The report as one self-contained HTML page: the summary, a latency histogram, latency and
//! calls over time as inline SVG charts, percentiles, status codes and errors. No script, no
//! external file, so it opens anywhere and can be attached to a ticket. Text that came from
//! the server (error messages) or the command line (the method) is escaped.

use std::fmt::Write as _;

use crate::report::Report;

/// Chart size in CSS pixels.
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 240.0;
/// Room for the axes' labels.
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 36.0;
const TOP: f64 = 12.0;

/// Colors, also looked for by the screenshot test.
pub const BAR_COLOR: &str = "#2563eb";
/// The mean latency line.
pub const MEAN_COLOR: &str = "#16a34a";
/// The max latency line.
pub const MAX_COLOR: &str = "#dc2626";

impl Report {
    /// The report as a self-contained HTML page.
    pub fn html(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = self.write_html(&mut out);
        out
    }

    fn write_html(&self, out: &mut String) -> std::fmt::Result {
        let title = format!("keel bench: {}", escape(&self.method));
        write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
             <style>body{{font:14px system-ui,sans-serif;margin:24px;color:#111;max-width:860px}}\
             h1{{font-size:20px}}h2{{font-size:16px;margin-top:28px}}\
             table{{border-collapse:collapse}}td,th{{padding:3px 12px 3px 0;text-align:left}}\
             td.n{{text-align:right;font-variant-numeric:tabular-nums}}\
             svg text{{font-size:11px;fill:#444}}.legend span{{margin-right:16px}}</style></head><body>\n\
             <h1>{title}</h1>\n"
        )?;
        let load = match self.load.rate {
            Some(rate) => format!(
                "{rate}/s asked, open loop (latency from each call's due time), at most {} in flight over {} connection(s)",
                self.load.concurrency, self.load.connections
            ),
            None => format!(
                "{} in flight, closed loop, over {} connection(s)",
                self.load.concurrency, self.load.connections
            ),
        };
        writeln!(out, "<h2>Summary</h2><table>")?;
        let mut row = |name: &str, value: String| {
            writeln!(out, "<tr><th>{name}</th><td class=\"n\">{value}</td></tr>")
        };
        row("Count", self.count.to_string())?;
        row("Total", format!("{:.2} ms", self.total_ms))?;
        row("Requests/sec", format!("{:.2}", self.requests_per_second))?;
        row("Average", format!("{:.2} ms", self.average_ms))?;
        row("Fastest", format!("{:.2} ms", self.fastest_ms))?;
        row("Slowest", format!("{:.2} ms", self.slowest_ms))?;
        row("Failed", self.failed().to_string())?;
        if let Some(cpu) = self.client_cpu_us_per_call {
            row("Client CPU", format!("{cpu:.2} µs/call"))?;
        }
        writeln!(out, "</table>\n<p>Load: {}</p>", escape(&load))?;

        writeln!(out, "<h2>Latency histogram</h2>")?;
        let bars: Vec<(String, f64)> = self
            .histogram
            .iter()
            .map(|bucket| (format!("{:.2}", bucket.mark_ms), bucket.count as f64))
            .collect();
        bar_chart(out, &bars, "calls", "latency up to (ms)")?;

        writeln!(out, "<h2>Latency over time</h2>")?;
        writeln!(
            out,
            "<div class=\"legend\"><span style=\"color:{MEAN_COLOR}\">■ mean</span>\
             <span style=\"color:{MAX_COLOR}\">■ max</span> per second, ms</div>"
        )?;
        let mean: Vec<f64> = self.over_time.iter().map(|s| s.mean_ms).collect();
        let max: Vec<f64> = self.over_time.iter().map(|s| s.max_ms).collect();
        line_chart(
            out,
            &[(&mean, MEAN_COLOR), (&max, MAX_COLOR)],
            "seconds from the start",
        )?;

        writeln!(out, "<h2>Calls per second</h2>")?;
        let calls: Vec<(String, f64)> = self
            .over_time
            .iter()
            .map(|s| (s.second.to_string(), s.calls as f64))
            .collect();
        bar_chart(out, &calls, "calls", "seconds from the start")?;

        writeln!(out, "<h2>Latency distribution</h2><table>")?;
        for p in &self.latency_distribution {
            writeln!(
                out,
                "<tr><th>{} %</th><td class=\"n\">{:.2} ms</td></tr>",
                p.percentile, p.latency_ms
            )?;
        }
        writeln!(out, "</table><h2>Status codes</h2><table>")?;
        for (code, count) in &self.status_codes {
            writeln!(
                out,
                "<tr><th>{}</th><td class=\"n\">{count}</td></tr>",
                escape(code)
            )?;
        }
        writeln!(out, "</table>")?;
        if !self.errors.is_empty() {
            writeln!(out, "<h2>Errors</h2><table>")?;
            for error in &self.errors {
                writeln!(
                    out,
                    "<tr><td class=\"n\">{}</td><td>{}</td></tr>",
                    error.count,
                    escape(&error.message)
                )?;
            }
            writeln!(out, "</table>")?;
        }
        writeln!(out, "</body></html>")
    }
}

/// `text` safe inside HTML elements and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A rounded-up axis maximum: 1, 2 or 5 times a power of ten.
fn nice_max(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * power)
}

fn open_chart(out: &mut String, top: f64, y_label: &str, x_label: &str) -> std::fmt::Result {
    let (plot_w, plot_h) = (WIDTH - LEFT - 8.0, HEIGHT - BOTTOM - TOP);
    write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\">\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{y0}\" stroke=\"#888\"/>\
         <line x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#888\"/>\
         <text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\">{top}</text>\
         <text x=\"{lx}\" y=\"{y0}\" text-anchor=\"end\">0</text>\
         <text x=\"4\" y=\"{mid}\" transform=\"rotate(-90 10 {mid})\">{y_label}</text>\
         <text x=\"{xmid}\" y=\"{xl}\" text-anchor=\"middle\">{x_label}</text>",
        y0 = TOP + plot_h,
        x1 = LEFT + plot_w,
        lx = LEFT - 6.0,
        ty = TOP + 10.0,
        mid = TOP + plot_h / 2.0,
        xmid = LEFT + plot_w / 2.0,
        xl = HEIGHT - 4.0,
    )
}

/// Bars with a label under each (every label when they fit, else some).
fn bar_chart(
    out: &mut String,
    bars: &[(String, f64)],
    y_label: &str,
    x_label: &str,
) -> std::fmt::Result {
    let top = nice_max(bars.iter().map(|(_, v)| *v).fold(0.0, f64::max));
    open_chart(out, top, y_label, x_label)?;
    let (plot_w, plot_h) = (WIDTH - LEFT - 8.0, HEIGHT - BOTTOM - TOP);
    let slot = plot_w / bars.len().max(1) as f64;
    let every = (bars.len() as f64 / 12.0).ceil().max(1.0) as usize;
    for (index, (label, value)) in bars.iter().enumerate() {
        let height = plot_h * value / top;
        let x = LEFT + slot * index as f64;
        write!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"{BAR_COLOR}\"><title>{label}: {value}</title></rect>",
            x + slot * 0.1,
            TOP + plot_h - height,
            slot * 0.8,
        )?;
        if index % every == 0 {
            write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
                x + slot / 2.0,
                TOP + plot_h + 14.0
            )?;
        }
    }
    writeln!(out, "</svg>")
}

/// Lines over the same x axis (one point per index), each in its color.
fn line_chart(out: &mut String, lines: &[(&[f64], &str)], x_label: &str) -> std::fmt::Result {
    let top = nice_max(
        lines
            .iter()
            .flat_map(|(values, _)| values.iter().copied())
            .fold(0.0, f64::max),
    );
    open_chart(out, top, "ms", x_label)?;
    let (plot_w, plot_h) = (WIDTH - LEFT - 8.0, HEIGHT - BOTTOM - TOP);
    let points = lines
        .iter()
        .map(|(values, _)| values.len())
        .max()
        .unwrap_or(0);
    let step = plot_w / points.max(1) as f64;
    for (values, color) in lines {
        let path: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(index, value)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + step * (index as f64 + 0.5),
                    TOP + plot_h - plot_h * value / top
                )
            })
            .collect();
        write!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2.5\"/>",
            path.join(" ")
        )?;
    }
    let every = (points as f64 / 12.0).ceil().max(1.0) as usize;
    for index in (0..points).step_by(every) {
        write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{index}</text>",
            LEFT + step * (index as f64 + 0.5),
            TOP + plot_h + 14.0
        )?;
    }
    writeln!(out, "</svg>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(0.7), 1.0);
        assert_eq!(nice_max(1.0), 1.0);
        assert_eq!(nice_max(1.2), 2.0);
        assert_eq!(nice_max(380.0), 500.0);
        assert_eq!(nice_max(5001.0), 10000.0);
    }
}
