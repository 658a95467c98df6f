//! JUnit XML (README, "Reports"), via quick-junit (nextest's serializer).
//!
//! `<testsuites>` holds one `<testsuite>` per job file (name = the file path, in
//! first-appearance order) and one `<testcase>` per job (`classname` and `file` = the job
//! file, `name` = the job name, `time` in seconds). A failed job carries `<failure>` whose
//! `message` lists the failed checks and whose body holds every failed check with a diff;
//! error and timeout carry `<error type="error|timeout">` with the runner's message; a
//! skipped job carries `<skipped message="reason"/>`. Standard output and error go to
//! `<system-out>` / `<system-err>`. Counts (`tests`, `failures`, `errors`, `skipped`,
//! `time`) are on both `<testsuites>` and every `<testsuite>`. A job's resource figures
//! (`cpu_ms`, `peak_memory_bytes`) are `<property>` elements of its `<testcase>`.
//!
//! Text is made XML 1.0 safe: ANSI escapes and characters XML 1.0 forbids (C0 controls
//! other than tab/LF/CR, U+FFFE, U+FFFF) are removed.

use super::diff::unified_diff;
use super::model::{CaseReport, JobReport, Report, Status};
use super::Jobs;
use indexmap::IndexMap;
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
use std::io::Write;
use std::time::Duration;

/// Name of the `<testsuites>` element.
const REPORT_NAME: &str = "llm-sandbox";
/// Longest diff kept in a `<failure>` body, in lines (per check).
const MAX_DIFF_LINES: usize = 200;

/// Removes ANSI escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ESC \\`, and
/// two-character `ESC x`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('[') => {
                // Parameters and intermediates, then one final byte in @..~.
                for c in it.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = it.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' && it.peek() == Some(&'\\') {
                        it.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Makes text safe for XML 1.0: ANSI escapes removed, then every character XML 1.0 does
/// not allow (C0 controls other than tab/LF/CR, U+FFFE, U+FFFF).
pub fn xml_safe(s: &str) -> String {
    strip_ansi(s)
        .chars()
        .filter(|&c| {
            matches!(c,
                '\t' | '\n' | '\r'
                | '\u{20}'..='\u{D7FF}'
                | '\u{E000}'..='\u{FFFD}'
                | '\u{10000}'..='\u{10FFFF}')
        })
        .collect()
}

fn secs(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The `<failure>` body of a failed job: each failed check, its diff, and the job message.
fn failure_body(job: &JobReport) -> String {
    let mut body = String::new();
    if let Some(msg) = &job.message {
        body.push_str(msg);
        body.push('\n');
    }
    for c in job.checks.iter().filter(|c| !c.passed) {
        if !job.says(c) {
            if !body.is_empty() {
                body.push('\n');
            }
            body.push_str(&c.message);
            body.push('\n');
        }
        if let (Some(e), Some(a)) = (&c.expected, &c.actual) {
            let diff = unified_diff(e, a);
            let lines: Vec<&str> = diff.lines().collect();
            for l in lines.iter().take(MAX_DIFF_LINES) {
                body.push_str(l);
                body.push('\n');
            }
            if lines.len() > MAX_DIFF_LINES {
                body.push_str(&format!(
                    "... ({} more diff lines)\n",
                    lines.len() - MAX_DIFF_LINES
                ));
            }
        }
    }
    body
}

fn failure_message(job: &JobReport) -> String {
    // The failed checks the job's message does not say already.
    let failed: Vec<&str> = job
        .checks
        .iter()
        .filter(|c| !c.passed && !job.says(c))
        .map(|c| c.message.as_str())
        .collect();
    match (&job.message, failed.is_empty()) {
        (Some(m), true) => m.clone(),
        (Some(m), false) => format!("{m}; {}", failed.join("; ")),
        (None, false) => failed.join("; "),
        (None, true) => "failed".to_string(),
    }
}

fn with_truncation_note(text: &str, truncated: bool) -> String {
    if truncated {
        format!("{text}\n[output truncated]\n")
    } else {
        text.to_string()
    }
}

fn test_case(job: &JobReport) -> TestCase {
    let status = match job.status {
        Status::Passed => TestCaseStatus::success(),
        Status::Failed => {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
            let ty = match job.phase {
                Some(super::model::Phase::Compile) => "compile".to_string(),
                _ => job
                    .checks
                    .iter()
                    .find(|c| !c.passed)
                    .map(|c| c.kind.clone())
                    .unwrap_or_else(|| "failed".to_string()),
            };
            st.set_message(xml_safe(&failure_message(job)))
                .set_type(xml_safe(&ty))
                .set_description(xml_safe(&failure_body(job)));
            st
        }
        Status::Timeout | Status::Error => {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Error);
            let ty = job.status.as_str();
            let msg = job.message.clone().unwrap_or_else(|| ty.to_string());
            st.set_message(xml_safe(&msg))
                .set_type(ty)
                .set_description(xml_safe(&msg));
            st
        }
        Status::Skipped => {
            let mut st = TestCaseStatus::skipped();
            if let Some(m) = &job.message {
                st.set_message(xml_safe(m));
            }
            st
        }
    };
    let mut tc = TestCase::new(xml_safe(&job.name), status);
    tc.set_classname(xml_safe(&job.file))
        .set_time(secs(job.duration_ms));
    tc.extra.insert("file".into(), xml_safe(&job.file).into());
    // The resource figures (README, "Resource figures"), as `<properties>`.
    for (name, v) in [
        ("cpu_ms", job.cpu_ms),
        ("peak_memory_bytes", job.peak_memory_bytes),
    ] {
        if let Some(v) = v {
            tc.add_property(quick_junit::Property::new(name, v.to_string()));
        }
    }
    if !job.stdout.is_empty() || job.stdout_truncated {
        tc.set_system_out(xml_safe(&with_truncation_note(
            &job.stdout,
            job.stdout_truncated,
        )));
    }
    if !job.stderr.is_empty() || job.stderr_truncated {
        tc.set_system_err(xml_safe(&with_truncation_note(
            &job.stderr,
            job.stderr_truncated,
        )));
    }
    tc
}

/// A case of `job` as a report of its own, for its `<testcase>`.
fn case_as_job(job: &JobReport, c: &CaseReport) -> JobReport {
    JobReport {
        name: format!("{}/{}", job.name, c.name),
        status: c.status,
        exit_code: c.exit_code,
        duration_ms: c.duration_ms,
        stdout: c.stdout.clone(),
        stderr: c.stderr.clone(),
        stdout_truncated: false,
        stderr_truncated: false,
        message: c.message.clone(),
        checks: c.checks.clone(),
        cpu_ms: c.cpu_ms,
        peak_memory_bytes: c.peak_memory_bytes,
        cases_total: None,
        cases_passed: None,
        cases: vec![],
        ..job.summary_copy()
    }
}

/// The `<testcase>`s of one job: one per test case of a job with cases (`job/case`,
/// README "Test cases"); a job without (or one that could not be built) is one.
fn test_cases(job: &JobReport) -> Vec<TestCase> {
    if job.cases.is_empty() {
        vec![test_case(job)]
    } else {
        job.cases
            .iter()
            .map(|c| test_case(&case_as_job(job, c)))
            .collect()
    }
}

/// One `<testcase>` element as quick-junit writes it, indented for its place in a
/// `<testsuite>`: the report is written one job at a time, so quick-junit (which holds a
/// whole report) serializes one test case at a time.
fn test_case_xml(tc: TestCase) -> String {
    let mut one = quick_junit::Report::new(REPORT_NAME);
    let mut suite = TestSuite::new("-");
    suite.add_test_case(tc);
    one.add_test_suite(suite);
    let xml = one
        .to_string()
        .expect("serializing JUnit XML to memory cannot fail");
    // (Any `<` in a name or text is escaped: the first `<testcase` is the element.)
    let start = xml
        .find("<testcase")
        .map_or(0, |i| xml[..i].rfind('\n').map_or(0, |n| n + 1));
    let end = xml.rfind("    </testsuite>").unwrap_or(xml.len());
    xml[start..end].to_string()
}

/// Counts of one `<testsuite>` (or of `<testsuites>`).
#[derive(Default)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    ms: u64,
}

impl Counts {
    fn add(&mut self, status: Status) {
        self.tests += 1;
        match status {
            Status::Failed => self.failures += 1,
            Status::Timeout | Status::Error => self.errors += 1,
            Status::Skipped => self.skipped += 1,
            Status::Passed => {}
        }
    }
}

fn secs_text(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// Renders the report as JUnit XML.
pub fn to_junit<J: Jobs>(report: &Report<J>) -> String {
    let mut out = Vec::new();
    junit_to(report, &mut out).expect("a report in memory always serializes");
    String::from_utf8(out).expect("XML is UTF-8")
}

/// Writes the report as JUnit XML to `out`, one job at a time: a first pass counts each
/// suite's test cases, a second writes them (the jobs are read twice, never held).
pub fn junit_to<J: Jobs>(report: &Report<J>, out: &mut dyn Write) -> std::io::Result<()> {
    use quick_xml::escape::escape;
    let jobs = &report.jobs;
    // Suites by job file, in first-appearance order, with their jobs' positions.
    let mut suites: IndexMap<String, (Counts, Vec<usize>)> = IndexMap::new();
    let mut all = Counts::default();
    for i in 0..jobs.count() {
        let job = jobs.job(i)?;
        let (counts, members) = match suites.get_index_of(job.file.as_str()) {
            Some(s) => &mut suites[s],
            None => suites.entry(job.file.clone()).or_default(),
        };
        counts.ms += job.duration_ms;
        members.push(i);
        let statuses: Vec<Status> = if job.cases.is_empty() {
            vec![job.status]
        } else {
            job.cases.iter().map(|c| c.status).collect()
        };
        for st in statuses {
            counts.add(st);
            all.add(st);
        }
    }
    writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    write!(
        out,
        r#"<testsuites name="{REPORT_NAME}" skipped="{}" tests="{}" failures="{}" errors="{}""#,
        all.skipped, all.tests, all.failures, all.errors
    )?;
    if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(&report.started_at) {
        write!(
            out,
            r#" timestamp="{}""#,
            ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
        )?;
    }
    writeln!(out, r#" time="{}">"#, secs_text(report.duration_ms))?;
    for (file, (c, members)) in &suites {
        writeln!(
            out,
            r#"    <testsuite name="{}" tests="{}" disabled="{}" errors="{}" failures="{}" time="{}" skipped="{}">"#,
            escape(xml_safe(file).as_str()),
            c.tests,
            c.skipped,
            c.errors,
            c.failures,
            secs_text(c.ms),
            c.skipped
        )?;
        for &i in members {
            for tc in test_cases(&*jobs.job(i)?) {
                out.write_all(test_case_xml(tc).as_bytes())?;
            }
        }
        writeln!(out, "    </testsuite>")?;
    }
    writeln!(out, "</testsuites>")
}

/// Writes the JUnit XML to `dest` (`-` = standard output; a path is written atomically).
pub fn write_junit<J: Jobs>(report: &Report<J>, dest: &str) -> std::io::Result<()> {
    super::write_dest_with(dest, &mut |w| junit_to(report, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::json::build_report;
    use crate::report::model::{CheckResult, Phase};
    use crate::report::test_support::{check, job};
    use chrono::{TimeZone, Utc};

    fn report() -> Report {
        let mut a = job("hello", Status::Passed);
        a.stdout = "Hello, World!\n".into();
        a.checks = vec![check("exit_code", true, "exit code 0")];
        let mut b = job("sum", Status::Failed);
        b.duration_ms = 2500;
        b.checks = vec![
            check("exit_code", true, "exit code 0"),
            CheckResult {
                kind: "stdout".into(),
                passed: false,
                message: "stdout differs at line 2: expected `5`, got `6`".into(),
                expected: Some("1\n5".into()),
                actual: Some("1\n6".into()),
            },
        ];
        b.stdout = "1\n6\n\u{1b}[31mred\u{1b}[0m \u{0}\u{7}bell \u{FFFF}<&>\n".into();
        b.stderr = "warning".into();
        let mut c = job("slow", Status::Timeout);
        c.file = "jobs/other.yaml".into();
        c.message = Some("timed out after 1s".into());
        let mut d = job("later", Status::Skipped);
        d.message = Some("not yet".into());
        let mut e = job("broken", Status::Error);
        e.file = "jobs/other.yaml".into();
        e.phase = Some(Phase::Prepare);
        e.message = Some("docker is not reachable: start dockerd".into());
        let mut f = job("compile", Status::Failed);
        f.phase = Some(Phase::Compile);
        f.message = Some("compilation failed".into());
        f.stderr = "main.c:1: error: expected ';'".into();
        build_report(
            Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap(),
            4321,
            vec![a, b, c, d, e, f],
            None,
        )
    }

    #[test]
    fn counts_and_structure() {
        let xml = to_junit(&report());
        let parsed = quick_junit::Report::deserialize_from_str(&xml).expect("parses back");
        assert_eq!(parsed.tests, 6);
        assert_eq!(parsed.failures, 2);
        assert_eq!(parsed.errors, 2);
        assert_eq!(parsed.test_suites.len(), 2);
        let s0 = &parsed.test_suites[0];
        assert_eq!(s0.name.as_str(), "jobs/basic.toml");
        assert_eq!(
            (s0.tests, s0.failures, s0.errors, s0.disabled),
            (4, 2, 0, 1)
        );
        let s1 = &parsed.test_suites[1];
        assert_eq!(s1.name.as_str(), "jobs/other.yaml");
        assert_eq!((s1.tests, s1.failures, s1.errors), (2, 0, 2));
        assert!(
            xml.contains(
                r#"<testsuites name="llm-sandbox" skipped="1" tests="6" failures="2" errors="2""#
            ),
            "{xml}"
        );
        assert!(xml.contains(r#"time="4.321""#));
        assert!(xml.contains(r#"<testsuite name="jobs/basic.toml" tests="4" disabled="1" errors="0" failures="2" time="2.869" skipped="1">"#), "{xml}");

        let tc = &s0.test_cases[1];
        assert_eq!(tc.name.as_str(), "sum");
        assert_eq!(tc.classname.as_deref(), Some("jobs/basic.toml"));
        assert_eq!(tc.time, Some(Duration::from_millis(2500)));
        match &tc.status {
            TestCaseStatus::NonSuccess {
                kind,
                message,
                ty,
                description,
                ..
            } => {
                assert_eq!(*kind, NonSuccessKind::Failure);
                assert_eq!(
                    message.as_deref(),
                    Some("stdout differs at line 2: expected `5`, got `6`")
                );
                assert_eq!(ty.as_deref(), Some("stdout"));
                let body = description.as_deref().unwrap();
                assert!(body.contains("-5\n+6"), "{body}");
            }
            other => panic!("unexpected status {other:?}"),
        }
        // Invalid XML characters and ANSI escapes are gone; markup is escaped.
        let out = tc.system_out.as_deref().unwrap();
        assert_eq!(out.trim_end(), "1\n6\nred bell <&>");
        assert_eq!(tc.system_err.as_deref(), Some("warning"));

        match &s0.test_cases[2].status {
            TestCaseStatus::Skipped { message, .. } => {
                assert_eq!(message.as_deref(), Some("not yet"))
            }
            other => panic!("unexpected status {other:?}"),
        }
        match &s1.test_cases[0].status {
            TestCaseStatus::NonSuccess {
                kind, message, ty, ..
            } => {
                assert_eq!(*kind, NonSuccessKind::Error);
                assert_eq!(ty.as_deref(), Some("timeout"));
                assert_eq!(message.as_deref(), Some("timed out after 1s"));
            }
            other => panic!("unexpected status {other:?}"),
        }
        match &s0.test_cases[3].status {
            TestCaseStatus::NonSuccess { ty, message, .. } => {
                assert_eq!(ty.as_deref(), Some("compile"));
                assert_eq!(message.as_deref(), Some("compilation failed"));
            }
            other => panic!("unexpected status {other:?}"),
        }
    }

    #[test]
    fn xml_safe_strips_invalid() {
        assert_eq!(xml_safe("a\u{0}b\u{1f}c\u{FFFE}d\te\n"), "abcd\te\n");
        assert_eq!(xml_safe("é😀"), "é😀");
        assert_eq!(
            xml_safe("\x1b[1;31mred\x1b[0m \x1b]0;title\x07x \x1b(B"),
            "red x B"
        );
    }
}
