//! Reporter output: snapshots of the JUnit XML, the JSON report and the terminal output of
//! a small fixed run, plus a check that the JUnit XML loads back with the right counts.

use chrono::{TimeZone, Utc};
use llm_sandbox::report::model::{CheckResult, Event, JobReport, Phase, Status};
use llm_sandbox::report::{build_report, to_junit, TerminalOptions, TerminalReporter};
use llm_sandbox::{BackendKind, Lang, Report};
use std::io::Write;
use std::sync::{Arc, Mutex};

fn job(name: &str, file: &str, status: Status, ms: u64) -> JobReport {
    JobReport {
        name: name.into(),
        file: file.into(),
        line: None,
        lang: Lang::Python,
        backend: BackendKind::Native,
        image: Some("host".into()),
        status,
        phase: (status != Status::Skipped).then_some(Phase::Run),
        exit_code: match status {
            Status::Passed | Status::Failed => Some(0),
            _ => None,
        },
        duration_ms: ms,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        message: None,
        checks: vec![],
        artifacts: vec![],
        group: None,
        tags: vec![],
        signal: None,
        cpu_ms: None,
        peak_memory_bytes: None,
        cases_total: None,
        cases_passed: None,
        cases: vec![],
        flaky: false,
        attempts: None,
    }
}

fn jobs() -> Vec<JobReport> {
    let mut hello = job("hello", "jobs/basic.toml", Status::Passed, 42);
    hello.stdout = "Hello, World!\n".into();
    hello.checks = vec![CheckResult {
        kind: "exit_code".into(),
        passed: true,
        message: "exit code 0".into(),
        expected: None,
        actual: None,
    }];
    hello.group = Some("hello".into());

    let mut sum = job("sum", "jobs/basic.toml", Status::Failed, 1500);
    sum.stdout = "1\n2\n6\n\u{1b}[31m<&>\u{0}\n".into();
    sum.stderr = "warning: x".into();
    sum.checks = llm_sandbox::checks::evaluate(
        &llm_sandbox::plan::job::ResolvedExpect {
            stdout: Some("1\n2\n5\n<&>".into()),
            ..Default::default()
        },
        Some(0),
        &sum.stdout.replace("\u{1b}[31m", "").replace('\u{0}', ""),
        "",
        None,
    );
    sum.group = Some("hello".into());

    let mut slow = job("slow", "jobs/more.yaml", Status::Timeout, 1000);
    slow.message = Some("timed out after 1s (wall clock)".into());
    let mut later = job("later", "jobs/more.yaml", Status::Skipped, 0);
    later.message = Some("flaky upstream".into());
    let mut broken = job("broken", "jobs/more.yaml", Status::Error, 3);
    broken.backend = BackendKind::Docker;
    broken.phase = Some(Phase::Prepare);
    broken.message = Some("docker is not reachable at unix:///var/run/docker.sock: start dockerd or pass --backend native".into());
    vec![hello, sum, slow, later, broken]
}

fn report() -> Report {
    build_report(
        Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap(),
        2600,
        jobs(),
        None,
    )
}

#[test]
fn junit_snapshot() {
    insta::assert_snapshot!("junit", to_junit(&report()));
}

#[test]
fn junit_counts() {
    let xml = to_junit(&report());
    let parsed = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    assert_eq!((parsed.tests, parsed.failures, parsed.errors), (5, 1, 2));
    assert!(xml.contains("skipped=\"1\" tests=\"5\""));
}

#[test]
fn json_snapshot() {
    let r = report();
    let text = serde_json::to_string_pretty(&r).unwrap();
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
    insta::assert_snapshot!("json", text);
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn terminal(opts: TerminalOptions) -> String {
    let buf = Buf::default();
    let mut r = TerminalReporter::new(Box::new(buf.clone()), opts);
    let jobs = jobs();
    r.handle(&Event::RunStarted { total: jobs.len() });
    for (id, j) in jobs.into_iter().enumerate() {
        r.handle(&Event::JobStarted {
            id,
            name: j.name.clone(),
        });
        r.handle(&Event::JobFinished {
            id,
            report: Box::new(j),
        });
    }
    r.handle(&Event::RunFinished {
        duration_ms: 2600,
        interrupted: false,
    });
    let out = buf.0.lock().unwrap().clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn terminal_snapshot() {
    insta::assert_snapshot!("terminal", terminal(TerminalOptions::default()));
}

#[test]
fn terminal_quiet_snapshot() {
    insta::assert_snapshot!(
        "terminal_quiet",
        terminal(TerminalOptions {
            quiet: true,
            ..Default::default()
        })
    );
}
