//! The HTML report in a real browser: Debian's headless Chromium renders it to a PNG, and the
//! picture must show the histogram's bars and both latency-over-time lines, and the page
//! the summary. The screenshot stays in the target directory for a person to look at.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_bench::html::{BAR_COLOR, MAX_COLOR, MEAN_COLOR};
use keel_bench::record::Record;
use keel_bench::report::{Load, Report};
use tonic::Status;

/// Six seconds of calls, latencies spread from 1 to 20 ms, a stall in the fourth second and
/// a few failures.
fn report() -> Report {
    let mut record = Record::new();
    for n in 0..3000u64 {
        let end = Duration::from_millis(n * 2);
        let mut latency = Duration::from_micros(1000 + (n * 7919) % 19_000);
        if (1500..1600).contains(&n) {
            latency += Duration::from_millis(400);
        }
        let result = if n % 500 == 7 {
            Err(Status::unavailable("<b>connection reset</b>").into())
        } else {
            Ok(())
        };
        record.record(end, latency, result);
    }
    let load = Load {
        concurrency: 16,
        connections: 2,
        rate: Some(500.0),
    };
    Report::new(
        "helloworld.Greeter/SayHello".into(),
        &record,
        load,
        Some(Duration::from_millis(30)),
    )
}

fn chromium() -> &'static str {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name;
        }
    }
    panic!("no Chromium found: install Debian's chromium (scripts/test.sh does)");
}

/// Runs headless Chromium on `page` with `args`, bounded by coreutils' timeout.
fn headless(dir: &Path, page: &Path, args: &[&str]) -> std::process::Output {
    let output = Command::new("timeout")
        .args([
            "120",
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Pixels within a small distance of `color` (`#rrggbb`).
fn pixels_like(rgba: &[u8], channels: usize, color: &str) -> usize {
    let want: Vec<i32> = (0..3)
        .map(|i| i32::from_str_radix(&color[1 + 2 * i..3 + 2 * i], 16).unwrap())
        .collect();
    rgba.chunks(channels)
        .filter(|px| (0..3).all(|i| (i32::from(px[i]) - want[i]).abs() <= 24))
        .count()
}

#[test]
fn chromium_draws_the_histogram_and_the_latency_lines() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-bench-html");
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    let shot = dir.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let html = report().html();
    assert!(
        html.contains("&lt;b&gt;connection reset&lt;/b&gt;"),
        "server text is escaped"
    );
    std::fs::write(&page, html).unwrap();

    let dom = headless(&dir, &page, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    for text in [
        "Requests/sec",
        "Latency histogram",
        "Latency over time",
        "Unavailable",
        "500/s asked",
    ] {
        assert!(dom.contains(text), "the rendered page lacks {text:?}");
    }

    let screenshot = format!("--screenshot={}", shot.display());
    headless(
        &dir,
        &page,
        &["--hide-scrollbars", "--window-size=900,1400", &screenshot],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("a screenshot"),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buffer).unwrap();
    let channels = frame.color_type.samples();
    let pixels = &buffer[..frame.buffer_size()];
    let bars = pixels_like(pixels, channels, BAR_COLOR);
    let mean = pixels_like(pixels, channels, MEAN_COLOR);
    let max = pixels_like(pixels, channels, MAX_COLOR);
    // Two bar charts of 760 x 240 px fill well over 10,000 pixels; each line, hundreds.
    assert!(bars > 10_000, "{bars} bar pixels in {}", shot.display());
    assert!(
        mean > 300,
        "{mean} pixels of the mean line in {}",
        shot.display()
    );
    assert!(
        max > 300,
        "{max} pixels of the max line in {}",
        shot.display()
    );
}
