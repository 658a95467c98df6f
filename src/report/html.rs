//! The HTML report (README, "Reports"): one self-contained page (no external resource:
//! its style and script are inline, its chart is inline SVG), written one job at a time
//! like the JSON and JUnit reports.
//!
//! It holds the summary, pass@k overall and per group, a chart of the jobs' durations, and
//! a table of the jobs (status, file and line, duration, CPU time, peak memory, cases,
//! attempts) that the status buttons and the search box filter. Each job that did not pass
//! has its why, each failed check's diff, its failing cases, and its output below its row.
//! Every text of the report is escaped: a job's output can hold anything.

use super::diff::unified_diff;
use super::model::{CheckResult, JobReport, Report, Status};
use super::Jobs;
use std::io::Write;

/// What the page shows of one output stream or diff of a job that did not pass (the JSON
/// report has what the run kept).
const TEXT_CAP: usize = 16 << 10;
/// Bars of the duration chart.
const BINS: usize = 30;

const STATUSES: [Status; 5] = [
    Status::Passed,
    Status::Failed,
    Status::Timeout,
    Status::Error,
    Status::Skipped,
];

/// `s` with the five characters HTML gives meaning to escaped (the JUnit writer's escaper).
pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// At most [`TEXT_CAP`] of `s`, escaped, with a note when cut.
fn capped(s: &str) -> String {
    let cut = super::model::char_floor(s, TEXT_CAP);
    let mut out = escape(&s[..cut]);
    if cut < s.len() {
        out.push_str(&format!(
            "\n[... {} more bytes: see the JSON report]",
            s.len() - cut
        ));
    }
    out
}

fn secs(ms: u64) -> String {
    format!("{:.3} s", ms as f64 / 1000.0)
}

fn bytes(b: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    format!("{:.1} MiB", b as f64 / MIB)
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; }
h1 { font-size: 1.5em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin: 1.3em 0 .4em; }
.meta { color: #666; }
.counts span, button.st { display: inline-block; padding: .2em .7em; margin: 0 .3em .3em 0;
  border-radius: 1em; border: 1px solid #ccc; background: #f6f6f6; font: inherit; }
button.st { cursor: pointer; } button.st.off { opacity: .35; text-decoration: line-through; }
.passed { color: #17803d; } .failed, .timeout { color: #c4001a; } .error { color: #8a2be2; }
.skipped { color: #a06a00; }
table { border-collapse: collapse; margin: .3em 0; }
th, td { text-align: left; padding: .25em .7em; border-bottom: 1px solid #e5e5e5; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.detail td { background: #fbfbfb; }
pre { margin: .3em 0; padding: .5em; background: #f4f4f4; max-height: 24em; overflow: auto;
  white-space: pre-wrap; word-break: break-all; font-size: 12px; }
pre .add { color: #17803d; } pre .del { color: #c4001a; }
svg .bar { fill: #4a7bd0; } svg text { font-size: 11px; fill: #555; }
#search { padding: .3em .5em; width: 20em; margin-left: .5em; }
"#;

// Status buttons toggle rows by status; the search box keeps rows whose name or file
// contains it. A job's detail row follows its row. `#status=failed,error` in the
// address starts with only those shown. The page says how many rows are shown.
const SCRIPT: &str = r#"
(function () {
  var hidden = {};
  var hash = /status=([a-z,]+)/.exec(location.hash);
  if (hash) {
    var keep = hash[1].split(',');
    document.querySelectorAll('button.st').forEach(function (b) {
      if (keep.indexOf(b.dataset.status) < 0) { hidden[b.dataset.status] = true; }
    });
  }
  function apply() {
    var q = document.getElementById('search').value.toLowerCase();
    var shown = 0;
    document.querySelectorAll('tr.job').forEach(function (tr) {
      var ok = !hidden[tr.dataset.status] && (q === '' || tr.dataset.name.toLowerCase().indexOf(q) >= 0);
      tr.style.display = ok ? '' : 'none';
      var d = tr.nextElementSibling;
      if (d && d.classList.contains('detail')) { d.style.display = ok ? '' : 'none'; }
      if (ok) { shown++; }
    });
    document.querySelectorAll('button.st').forEach(function (b) {
      b.classList.toggle('off', !!hidden[b.dataset.status]);
    });
    document.getElementById('shown').textContent = shown;
  }
  document.querySelectorAll('button.st').forEach(function (b) {
    b.addEventListener('click', function () {
      hidden[b.dataset.status] = !hidden[b.dataset.status];
      apply();
    });
  });
  document.getElementById('search').addEventListener('input', apply);
  apply();
  document.body.dataset.ready = 'yes';
})();
"#;

/// The duration chart: an inline SVG histogram of the jobs' durations.
fn chart(durations: &[u64]) -> String {
    let (w, h, pad) = (720.0, 160.0, 30.0);
    let max = durations.iter().copied().max().unwrap_or(0).max(1);
    let mut bins = [0usize; BINS];
    for &d in durations {
        let b = ((d as f64 / max as f64) * BINS as f64) as usize;
        bins[b.min(BINS - 1)] += 1;
    }
    let top = bins.iter().copied().max().unwrap_or(0).max(1);
    let bw = (w - pad) / BINS as f64;
    let mut svg = format!(
        r#"<svg id="durations" width="{w}" height="{}" viewBox="0 0 {w} {}" role="img" aria-label="durations">"#,
        h + 20.0,
        h + 20.0
    );
    for (i, &n) in bins.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let bh = (n as f64 / top as f64) * (h - 10.0);
        let lo = max as f64 * i as f64 / BINS as f64;
        let hi = max as f64 * (i + 1) as f64 / BINS as f64;
        svg.push_str(&format!(
            r#"<rect class="bar" data-count="{n}" x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}"><title>{n} job(s), {} to {}</title></rect>"#,
            pad + i as f64 * bw,
            h - bh,
            (bw - 2.0).max(1.0),
            secs(lo as u64),
            secs(hi as u64)
        ));
    }
    svg.push_str(&format!(
        r#"<text x="{pad}" y="{}">0 s</text><text x="{}" y="{}" text-anchor="end">{}</text><text x="0" y="12">{top}</text></svg>"#,
        h + 15.0,
        w,
        h + 15.0,
        secs(max)
    ));
    svg
}

/// The lines of a diff, coloured.
fn diff_html(c: &CheckResult) -> Option<String> {
    let (e, a) = (c.expected.as_ref()?, c.actual.as_ref()?);
    let diff = unified_diff(e, a);
    let diff = &diff[..super::model::char_floor(&diff, TEXT_CAP)];
    let mut out = String::from("<pre class=\"diff\">");
    for line in diff.lines() {
        match line.as_bytes().first() {
            Some(b'+') if !line.starts_with("+++") => {
                out.push_str(&format!("<span class=\"add\">{}</span>\n", escape(line)))
            }
            Some(b'-') if !line.starts_with("---") => {
                out.push_str(&format!("<span class=\"del\">{}</span>\n", escape(line)))
            }
            _ => out.push_str(&format!("{}\n", escape(line))),
        }
    }
    out.push_str("</pre>");
    Some(out)
}

/// Why a job did not pass: its message, its failed checks with their diffs, its failing
/// cases, its output.
fn detail(job: &JobReport) -> String {
    let mut out = String::new();
    out.push_str(&format!("<p>{}</p>", escape(&job.why())));
    for c in job.checks.iter().filter(|c| !c.passed) {
        if !job.says(c) {
            out.push_str(&format!("<p>{}</p>", escape(&c.message)));
        }
        out.push_str(&diff_html(c).unwrap_or_default());
    }
    for case in job.cases.iter().filter(|c| !c.status.is_ok()) {
        out.push_str(&format!(
            "<p>case <b>{}</b>: <span class=\"{}\">{}</span>{}</p>",
            escape(&case.name),
            case.status.as_str(),
            case.status.as_str(),
            case.message
                .as_deref()
                .map(|m| format!(": {}", escape(m)))
                .unwrap_or_default()
        ));
        for c in case.checks.iter().filter(|c| !c.passed) {
            out.push_str(&diff_html(c).unwrap_or_default());
        }
        for (what, text) in [("stdout", &case.stdout), ("stderr", &case.stderr)] {
            if !text.is_empty() {
                out.push_str(&format!("<div>{what}</div><pre>{}</pre>", capped(text)));
            }
        }
    }
    for (what, text, cut) in [
        ("stdout", &job.stdout, job.stdout_truncated),
        ("stderr", &job.stderr, job.stderr_truncated),
    ] {
        if !text.is_empty() {
            out.push_str(&format!(
                "<div>{what}{}</div><pre>{}</pre>",
                if cut { " (truncated by the run)" } else { "" },
                capped(text)
            ));
        }
    }
    out
}

fn row(job: &JobReport) -> String {
    let st = job.status.as_str();
    let opt = |v: Option<String>| v.unwrap_or_default();
    let file = match job.line {
        Some(l) => format!("{}:{l}", job.file),
        None => job.file.clone(),
    };
    format!(
        "<tr class=\"job\" data-status=\"{st}\" data-name=\"{}\"><td class=\"{st}\">{st}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>\n",
        escape(&format!("{} {file}", job.name)),
        escape(&job.name),
        escape(&file),
        secs(job.duration_ms),
        opt(job.cpu_ms.map(|c| format!("{c} ms"))),
        opt(job.peak_memory_bytes.map(bytes)),
        opt(job.cases_total.map(|t| format!("{}/{t}", job.cases_passed.unwrap_or(0)))),
        match (job.attempts, job.flaky) {
            (Some(n), true) => format!("flaky ({n} attempts)"),
            (Some(n), false) => format!("{n} attempts"),
            _ => String::new(),
        }
    )
}

/// Writes the report as one HTML page to `out`, one job at a time (a first pass reads the
/// durations for the chart).
pub fn html_to<J: Jobs>(report: &Report<J>, out: &mut dyn Write) -> std::io::Result<()> {
    let jobs = &report.jobs;
    let mut durations = Vec::with_capacity(jobs.count());
    for i in 0..jobs.count() {
        durations.push(jobs.job(i)?.duration_ms);
    }
    let s = &report.summary;
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>llm-sandbox report</title><style>{STYLE}</style></head><body>\n\
         <h1>llm-sandbox report</h1>\n<p class=\"meta\">started {} &middot; {} &middot; {} jobs{}{}</p>\n",
        escape(&report.started_at),
        secs(report.duration_ms),
        s.total,
        report
            .job_set
            .as_deref()
            .map(|j| format!(" &middot; job set {}", escape(j)))
            .unwrap_or_default(),
        report
            .shard
            .as_deref()
            .map(|j| format!(" &middot; shard {}", escape(j)))
            .unwrap_or_default(),
    )?;
    let count = |st: Status| match st {
        Status::Passed => s.passed,
        Status::Failed => s.failed,
        Status::Timeout => s.timeout,
        Status::Error => s.error,
        Status::Skipped => s.skipped,
    };
    write!(out, "<p class=\"counts\" id=\"summary\">")?;
    for st in STATUSES {
        write!(
            out,
            "<span class=\"{0}\" data-status=\"{0}\">{1} {0}</span>",
            st.as_str(),
            count(st)
        )?;
    }
    if s.flaky > 0 {
        write!(out, "<span class=\"skipped\">{} flaky</span>", s.flaky)?;
    }
    writeln!(out, "</p>")?;
    if let Some(top) = &report.pass_at {
        write!(out, "<h2>pass@k</h2>\n<table id=\"pass-at\"><tr><th>group</th><th class=\"num\">samples</th><th class=\"num\">passed</th>")?;
        for k in top.keys() {
            write!(out, "<th class=\"num\">pass@{}</th>", escape(k))?;
        }
        write!(out, "</tr>\n<tr><td><b>mean</b></td><td></td><td></td>")?;
        for v in top.values() {
            write!(out, "<td class=\"num\"><b>{v:.3}</b></td>")?;
        }
        writeln!(out, "</tr>")?;
        for g in report.groups.iter().flatten() {
            write!(
                out,
                "<tr class=\"group\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                escape(&g.key),
                g.n,
                g.passed
            )?;
            for k in top.keys() {
                match g.pass_at.get(k) {
                    Some(v) => write!(out, "<td class=\"num\">{v:.3}</td>")?,
                    None => write!(out, "<td></td>")?,
                }
            }
            writeln!(out, "</tr>")?;
        }
        writeln!(out, "</table>")?;
    }
    writeln!(out, "<h2>Durations</h2>\n{}", chart(&durations))?;
    drop(durations);
    write!(out, "<h2>Jobs</h2>\n<p>")?;
    for st in STATUSES {
        write!(
            out,
            "<button class=\"st {0}\" data-status=\"{0}\">{0} {1}</button>",
            st.as_str(),
            count(st)
        )?;
    }
    writeln!(
        out,
        "<input id=\"search\" type=\"search\" placeholder=\"filter by name or file\"> \
         <span id=\"shown\">{}</span> shown</p>",
        jobs.count()
    )?;
    writeln!(
        out,
        "<table id=\"jobs\"><tr><th>status</th><th>job</th><th>file</th><th class=\"num\">duration</th>\
         <th class=\"num\">CPU</th><th class=\"num\">peak memory</th><th class=\"num\">cases</th><th>attempts</th></tr>"
    )?;
    for i in 0..jobs.count() {
        let job = jobs.job(i)?;
        out.write_all(row(&job).as_bytes())?;
        if !job.status.is_ok() {
            writeln!(
                out,
                "<tr class=\"detail\"><td></td><td colspan=\"7\">{}</td></tr>",
                detail(&job)
            )?;
        }
    }
    writeln!(out, "</table>\n<script>{SCRIPT}</script>\n</body></html>")
}

/// Writes the HTML report to `dest` (`-` = standard output; a path is written atomically).
pub fn write_html<J: Jobs>(report: &Report<J>, dest: &str) -> std::io::Result<()> {
    super::write_dest_with(dest, &mut |w| html_to(report, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::json::build_report;
    use crate::report::test_support::{check, job};

    fn page(jobs: Vec<JobReport>) -> String {
        let r = build_report(chrono::Utc::now(), 1000, jobs, None);
        let mut out = Vec::new();
        html_to(&r, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_text_is_escaped_and_nothing_is_fetched() {
        let mut bad = job("<script>alert(1)</script>", Status::Failed);
        bad.stdout = "</pre><img src=x onerror=alert(2)>".into();
        bad.checks = vec![check("stdout", false, "differs & <b>")];
        bad.group = Some("g\"'".into());
        let html = page(vec![bad, job("ok", Status::Passed)]);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("differs &amp; &lt;b&gt;"));
        // Self-contained: no address to fetch anything from.
        for external in ["src=\"http", "href=\"http", "src=\"//", "@import", "url("] {
            assert!(!html.contains(external), "{external}");
        }
        assert_eq!(html.matches("<tr class=\"job\"").count(), 2);
        assert_eq!(html.matches("<tr class=\"detail\"").count(), 1);
    }

    #[test]
    fn the_chart_counts_every_job() {
        let mut jobs = vec![];
        for ms in [1, 5, 500, 1000, 1000] {
            let mut j = job("j", Status::Passed);
            j.duration_ms = ms;
            jobs.push(j);
        }
        let html = page(jobs);
        let counted: usize = html
            .split("data-count=\"")
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].parse::<usize>().unwrap())
            .sum();
        assert_eq!(counted, 5);
    }
}
