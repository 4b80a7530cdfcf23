//! The suite's report in three forms: JUnit XML for CI systems, JSON with every figure, and one
//! HTML page with the latency histograms and the memory-over-time plots drawn (inline SVG: the
//! page is one file to attach to a release) and the target's logs of failed scenarios.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::suite::{Histogram, Series, Status, SuiteReport};

/// Writes `report.json`, `junit.xml` and `report.html` into `dir`.
pub fn write_all(report: &SuiteReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("report.json", serde_json::to_string_pretty(report)? + "\n")?;
    write("junit.xml", junit(report))?;
    write("report.html", html(report))?;
    Ok(())
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters, even escaped (logs may hold them).
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: one `<testsuite>` per run, one `<testcase>` per scenario; failed ones carry the
/// message and the target's log, skipped ones the missing capabilities.
pub fn junit(r: &SuiteReport) -> String {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuite name=\"vigil-hil {}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" errors=\"0\" time=\"{:.3}\" timestamp=\"{}\">",
        xml(&r.kind),
        r.scenarios.len(),
        r.count(Status::Failed),
        r.count(Status::Skipped),
        r.seconds,
        xml(&r.started_at)
    );
    let _ = writeln!(
        s,
        "  <properties><property name=\"target\" value=\"{}\"/><property name=\"vigil\" value=\"{}\"/></properties>",
        xml(&r.target),
        xml(&r.vigil_version)
    );
    for sc in &r.scenarios {
        let _ = write!(
            s,
            "  <testcase classname=\"vigil-hil.{}\" name=\"{}\" time=\"{:.3}\"",
            xml(&r.kind),
            xml(&sc.name),
            sc.seconds
        );
        let message = xml(sc.message.as_deref().unwrap_or(""));
        // Checks the scenario could not apply on this target: named, never counted as passed.
        let not_checked: String = sc
            .not_checked
            .iter()
            .map(|(check, why)| format!("<property name=\"not checked: {}\" value=\"{}\"/>", xml(check), xml(why)))
            .collect();
        match sc.status {
            Status::Passed if not_checked.is_empty() => s.push_str("/>\n"),
            Status::Passed => {
                let _ = writeln!(s, ">\n    <properties>{not_checked}</properties>\n  </testcase>");
            }
            Status::Skipped => {
                let _ = writeln!(s, ">\n    <skipped message=\"{message}\"/>\n  </testcase>");
            }
            Status::Failed => {
                let _ = writeln!(s, ">\n    <failure message=\"{message}\">{message}</failure>");
                if let Some(log) = &sc.log {
                    let _ = writeln!(s, "    <system-out>{}</system-out>", xml(log));
                }
                s.push_str("  </testcase>\n");
            }
        }
    }
    s.push_str("</testsuite>\n");
    s
}

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 200.0;
const MARGIN: f64 = 40.0;
/// Room for the y axis's labels ("160 MiB").
const LEFT: f64 = 72.0;

/// A bar chart of a histogram, axes labelled.
pub fn histogram_svg(h: &Histogram) -> String {
    let mut s = svg_open(&format!("{} ({}), {} samples", h.name, h.unit, h.count));
    let most = h.bins.iter().map(|b| b.2).max().unwrap_or(0).max(1) as f64;
    let (plot_w, plot_h) = (WIDTH - LEFT - MARGIN, HEIGHT - 2.0 * MARGIN);
    let bar_w = plot_w / h.bins.len().max(1) as f64;
    for (i, (_, _, n)) in h.bins.iter().enumerate() {
        let bh = *n as f64 / most * plot_h;
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#4a7bb7\"><title>{n}</title></rect>",
            LEFT + i as f64 * bar_w + 1.0,
            HEIGHT - MARGIN - bh,
            (bar_w - 2.0).max(1.0)
        );
    }
    let top = h.bins.last().map_or(0.0, |b| b.1);
    axes(&mut s, (0.0, top), (0.0, most), &h.unit, "count");
    for (label, v, colour) in [("p50", h.p50, "#2a9d3f"), ("p95", h.p95, "#d1495b")] {
        if top > 0.0 {
            let x = LEFT + v / top * plot_w;
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{MARGIN}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{colour}\">{label} {v:.0}</text>",
                HEIGHT - MARGIN,
                x + 3.0,
                MARGIN + 12.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// A line plot of a series over time.
pub fn series_svg(series: &Series) -> String {
    let mut s = svg_open(&format!("{} ({}) over time", series.name, series.unit));
    let xs = series.points.iter().map(|p| p.0);
    let ys = series.points.iter().map(|p| p.1);
    let x_max = xs.fold(0.0f64, f64::max).max(1.0);
    let y_max = ys.clone().fold(0.0f64, f64::max);
    // From zero: a flat line must look flat, and growth must look as big as it is.
    let y_top = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let (plot_w, plot_h) = (WIDTH - LEFT - MARGIN, HEIGHT - 2.0 * MARGIN);
    let points: Vec<String> = series
        .points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", LEFT + x / x_max * plot_w, HEIGHT - MARGIN - y / y_top * plot_h))
        .collect();
    let _ =
        write!(s, "<polyline fill=\"none\" stroke=\"#4a7bb7\" stroke-width=\"2\" points=\"{}\"/>", points.join(" "));
    axes(&mut s, (0.0, x_max), (0.0, y_top), "s", &series.unit);
    s.push_str("</svg>");
    s
}

fn svg_open(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">\
         <title>{0}</title><text x=\"{LEFT}\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{0}</text>",
        xml(title)
    )
}

fn axes(s: &mut String, x: (f64, f64), y: (f64, f64), x_unit: &str, y_unit: &str) {
    let (left, right, top, bottom) = (LEFT, WIDTH - MARGIN, MARGIN, HEIGHT - MARGIN);
    let _ = write!(
        s,
        "<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#333\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"#333\"/>\
         <text x=\"{left}\" y=\"{:.1}\" font-size=\"11\">{:.0}</text>\
         <text x=\"{right}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{:.0} {}</text>\
         <text x=\"{:.1}\" y=\"{bottom}\" font-size=\"11\" text-anchor=\"end\">{:.0}</text>\
         <text x=\"{:.1}\" y=\"{top}\" font-size=\"11\" text-anchor=\"end\">{:.0} {}</text>",
        bottom + 14.0,
        x.0,
        bottom + 14.0,
        x.1,
        xml(x_unit),
        left - 4.0,
        y.0,
        left - 4.0,
        y.1,
        xml(y_unit)
    );
}

/// The one-page report.
pub fn html(r: &SuiteReport) -> String {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vigil HIL report</title><style>\
         body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}\
         table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}\
         .passed{color:#2a9d3f}.failed{color:#d1495b}.skipped{color:#888}\
         pre{background:#f6f6f6;padding:.5em;max-height:30em;overflow:auto;font-size:12px}\
         section{margin-top:2em}</style></head><body>\n",
    );
    let _ = writeln!(
        s,
        "<h1>vigil HIL report</h1><p>{} on <b>{}</b>, {}; {:.0} s. <b class=\"passed\">{} passed</b>, \
         <b class=\"failed\">{} failed</b>, <b class=\"skipped\">{} skipped</b>.</p>",
        xml(&r.vigil_version),
        xml(&r.target),
        xml(&r.started_at),
        r.seconds,
        r.count(Status::Passed),
        r.count(Status::Failed),
        r.count(Status::Skipped)
    );
    s.push_str("<table><tr><th>scenario</th><th>result</th><th>time</th><th>what it checks</th></tr>\n");
    for sc in &r.scenarios {
        let status = match sc.status {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        };
        let _ = writeln!(
            s,
            "<tr><td><a href=\"#{0}\">{0}</a></td><td class=\"{status}\">{status}</td><td>{1:.0} s</td><td>{2}</td></tr>",
            xml(&sc.name),
            sc.seconds,
            xml(&sc.summary)
        );
    }
    s.push_str("</table>\n");
    for sc in &r.scenarios {
        let _ = writeln!(s, "<section id=\"{0}\"><h2>{0}</h2><p>{1}</p>", xml(&sc.name), xml(&sc.summary));
        if let Some(m) = &sc.message {
            let _ = writeln!(s, "<p><b>{}</b></p>", xml(m));
        }
        for (check, why) in &sc.not_checked {
            let _ = writeln!(s, "<p class=\"skipped\">not checked: <b>{}</b>: {}</p>", xml(check), xml(why));
        }
        if !sc.figures.is_empty() {
            s.push_str("<table>");
            for (k, v) in &sc.figures {
                let _ = write!(s, "<tr><td>{}</td><td>{}</td></tr>", xml(k), figure(*v));
            }
            s.push_str("</table>\n");
        }
        if !sc.boots.is_empty() {
            s.push_str("<table><tr><th>boot after a power cut</th><th>cut to shell (s)</th><th>cut to vigil active (s)</th></tr>");
            for b in &sc.boots {
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{:.1}</td><td>{:.1}</td></tr>",
                    xml(&b.id),
                    b.to_shell_s,
                    b.to_active_s
                );
            }
            s.push_str("</table>\n");
        }
        for h in &sc.histograms {
            s.push_str(&histogram_svg(h));
            s.push('\n');
        }
        for series in &sc.series {
            s.push_str(&series_svg(series));
            s.push('\n');
        }
        if let Some(log) = &sc.log {
            let _ = writeln!(s, "<details open><summary>the target's log</summary><pre>{}</pre></details>", xml(log));
        }
        s.push_str("</section>\n");
    }
    s.push_str("</body></html>\n");
    s
}

fn figure(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::suite::ScenarioReport;

    fn report() -> SuiteReport {
        let scenario = |name: &str, status: Status, message: Option<&str>| ScenarioReport {
            name: name.into(),
            summary: format!("{name} <checks>"),
            status,
            message: message.map(str::to_owned),
            seconds: 1.5,
            figures: BTreeMap::from([("precision".to_owned(), 0.9), ("events".to_owned(), 12.0)]),
            histograms: vec![Histogram::of("latency", "ms", &[10.0, 20.0, 30.0, 200.0], 4)],
            series: vec![Series { name: "rss".into(), unit: "MiB".into(), points: vec![(0.0, 50.0), (2.0, 51.0)] }],
            log: (status == Status::Failed).then(|| "line 1 <x> & \u{1b}[31mred\n".to_owned()),
            not_checked: BTreeMap::new(),
            boots: vec![crate::target::Boot { id: "0b1d".into(), to_shell_s: 25.0, to_active_s: 40.5 }],
        };
        SuiteReport {
            target: "local (vigil)".into(),
            kind: "local".into(),
            vigil_version: "vigil 0.1.1".into(),
            started_at: "2026-12-02T08:00:00Z".into(),
            seconds: 4.5,
            scenarios: vec![
                scenario("detection", Status::Passed, None),
                scenario("full-disk", Status::Skipped, Some("the ssh target cannot: fill-disk")),
                scenario("soak", Status::Failed, Some("memory grew \"5 MiB\"")),
            ],
        }
    }

    #[test]
    fn a_check_not_applied_is_named_as_not_checked_in_every_form() {
        let mut r = report();
        r.scenarios[0]
            .not_checked
            .insert("0 frames lost at the swap".into(), "the target was dropping frames <before>".into());
        let x = junit(&r);
        assert!(
            x.contains("<property name=\"not checked: 0 frames lost at the swap\" value=\"the target was dropping frames &lt;before&gt;\"/>"),
            "{x}"
        );
        let h = html(&r);
        assert!(h.contains("not checked: <b>0 frames lost at the swap</b>"), "{h}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(
            j["scenarios"][0]["not_checked"]["0 frames lost at the swap"],
            "the target was dropping frames <before>"
        );
    }

    #[test]
    fn junit_counts_and_carries_failures_with_the_log_escaped() {
        let x = junit(&report());
        assert!(x.contains("tests=\"3\" failures=\"1\" skipped=\"1\""), "{x}");
        assert!(x.contains("<testcase classname=\"vigil-hil.local\" name=\"detection\" time=\"1.500\"/>"), "{x}");
        assert!(x.contains("<skipped message=\"the ssh target cannot: fill-disk\"/>"), "{x}");
        assert!(x.contains("<failure message=\"memory grew &quot;5 MiB&quot;\">"), "{x}");
        assert!(x.contains("line 1 &lt;x&gt; &amp; \u{FFFD}[31mred"), "control characters replaced: {x}");
        assert!(!x.contains('\u{1b}'));
    }

    #[test]
    fn a_histogram_bins_its_samples_and_keeps_its_quantiles() {
        let h = Histogram::of("l", "ms", &[10.0, 20.0, 30.0, 200.0], 4);
        assert_eq!(h.bins.iter().map(|b| b.2).collect::<Vec<_>>(), [3, 0, 0, 1]);
        assert_eq!((h.count, h.max), (4, 200.0));
        assert_eq!(h.p50, 30.0);
        let svg = histogram_svg(&h);
        assert_eq!(svg.matches("<rect").count(), 4);
        assert!(svg.contains("p95 200"), "{svg}");
    }

    #[test]
    fn the_page_draws_each_picture_and_shows_failed_logs() {
        let page = html(&report());
        assert_eq!(page.matches("<svg").count(), 6, "a histogram and a plot per scenario");
        assert_eq!(page.matches("<polyline").count(), 3);
        assert!(page.contains("<b class=\"failed\">1 failed</b>"));
        assert_eq!(page.matches("the target's log").count(), 1, "only the failed scenario's");
        assert!(page.contains("detection &lt;checks&gt;"));
        assert_eq!(page.matches("<tr><td>0b1d</td><td>25.0</td><td>40.5</td></tr>").count(), 3, "each scenario's boot");
        let json: serde_json::Value = serde_json::to_value(report()).unwrap();
        assert_eq!(json["scenarios"][0]["boots"][0]["to_active_s"], 40.5);
    }
}
