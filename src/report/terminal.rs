//! The human output of `run`, on stderr (stdout is reserved for `--json -` / `--junit -`).
//!
//! One line per finished job, in the style of nextest:
//!
//! ```text
//!    PASS [  0.123s] jobs/basic.toml hello
//!    FAIL [  0.456s] jobs/basic.toml sum
//!     stdout differs at line 1: expected `5`, got `6`
//!       --- expected
//!       +++ actual
//!       ...
//! Summary [  1.234s] 10 jobs run: 8 passed, 1 failed, 1 timeout, 0 error, 0 skipped
//! ```
//!
//! With `progress`, an indicatif bar is drawn on stderr while jobs run (lines are printed
//! above it). With `quiet`, only non-passing jobs and the summary are printed. Colours only
//! when asked for ([`TerminalOptions::detect`]: stderr is a terminal, `NO_COLOR` unset).

use super::diff::unified_diff;
use super::model::{Event, JobReport, Phase, Status};
use super::passk::Tally;
use indexmap::IndexMap;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Diff lines shown under a failed check.
const DIFF_LINES: usize = 20;
/// Lines of stderr shown under a compile failure.
const STDERR_TAIL: usize = 15;
/// Bytes of one line of a job's text shown (a diff line, a line of stderr, a message).
const LINE_BYTES: usize = 400;

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const BOLD_RED: &str = "\x1b[1;31m";
const BOLD_MAGENTA: &str = "\x1b[1;35m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";

/// How the terminal reporter behaves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TerminalOptions {
    /// ANSI colours.
    pub color: bool,
    /// An indicatif progress bar on stderr (only meaningful when stderr is a terminal).
    pub progress: bool,
    /// Only non-passing jobs and the summary.
    pub quiet: bool,
    /// `--pass-at`; None: the default (1, plus 10 when every group has ≥ 10 samples).
    pub pass_at: Option<Vec<usize>>,
}

impl TerminalOptions {
    /// Options for stderr: colour when stderr is a terminal, `NO_COLOR` is unset or empty
    /// and `TERM` is not `dumb`; progress when stderr is a terminal and neither `--quiet`
    /// nor `--no-progress` was given.
    pub fn detect(quiet: bool, no_progress: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        TerminalOptions {
            color: tty && !no_color && !dumb,
            progress: tty && !quiet && !no_progress,
            quiet,
            pass_at: None,
        }
    }
}

/// Consumes [`Event`]s and writes the human output.
pub struct TerminalReporter {
    out: Box<dyn Write + Send>,
    opts: TerminalOptions,
    bar: Option<ProgressBar>,
    running: IndexMap<usize, String>,
    /// Every finished job counted (also those never started, and those `--resume` kept).
    tally: Tally,
    /// Jobs of this run finished so far (of `total`).
    finished: usize,
    /// Of the finished jobs, those the run never started, and why the first was not.
    not_run: usize,
    why_not: Option<String>,
    /// The lines of the jobs that did not pass, for the summary (at most [`NOT_PASSED_KEPT`]).
    not_passed: Vec<String>,
    not_passed_more: usize,
    total: usize,
}

/// Lines of jobs that did not pass the summary repeats (the reports have them all).
const NOT_PASSED_KEPT: usize = 1000;

impl TerminalReporter {
    /// A reporter writing to `out`. The progress bar (when `opts.progress`) always draws on
    /// stderr, so `out` should be stderr then.
    pub fn new(out: Box<dyn Write + Send>, opts: TerminalOptions) -> Self {
        TerminalReporter {
            out,
            opts,
            bar: None,
            running: IndexMap::new(),
            tally: Tally::default(),
            finished: 0,
            not_run: 0,
            why_not: None,
            not_passed: Vec::new(),
            not_passed_more: 0,
            total: 0,
        }
    }

    /// A reporter on stderr with [`TerminalOptions::detect`].
    pub fn stderr(quiet: bool, no_progress: bool, pass_at: Option<Vec<usize>>) -> Self {
        let mut opts = TerminalOptions::detect(quiet, no_progress);
        opts.pass_at = pass_at;
        TerminalReporter::new(Box::new(std::io::stderr()), opts)
    }

    /// What the jobs finished so far count.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Notes a finished job (or one `--resume` kept) for the summary: its line if it did
    /// not pass (the tally counts it).
    fn note(&mut self, report: &JobReport) {
        if report.not_run() {
            self.not_run += 1;
            if self.why_not.is_none() {
                self.why_not = report
                    .message
                    .as_deref()
                    .and_then(|m| m.strip_prefix(crate::report::model::NOT_RUN))
                    .map(str::to_string);
            }
        } else if !report.status.is_ok() {
            if self.not_passed.len() < NOT_PASSED_KEPT {
                let line = self.job_line(report);
                self.not_passed.push(line);
            } else {
                self.not_passed_more += 1;
            }
        }
    }

    /// Handles one event. Write errors (a closed stderr) are ignored.
    pub fn handle(&mut self, event: &Event) {
        match event {
            Event::RunStarted { total } => {
                self.total = *total;
                if self.opts.progress && !self.opts.quiet {
                    let bar = ProgressBar::with_draw_target(
                        Some(*total as u64),
                        ProgressDrawTarget::stderr(),
                    );
                    let template = if self.opts.color {
                        "{spinner:.green} [{elapsed_precise}] [{bar:30.cyan/blue}] {pos}/{len} ETA {eta} {wide_msg}"
                    } else {
                        "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} ETA {eta} {wide_msg}"
                    };
                    if let Ok(style) = ProgressStyle::with_template(template) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.enable_steady_tick(Duration::from_millis(100));
                    self.bar = Some(bar);
                }
            }
            Event::Resumed { tally, not_passed } => {
                self.tally.merge(tally);
                for r in not_passed {
                    self.note(r);
                }
            }
            Event::JobStarted { id, name } => {
                self.running.insert(*id, name.clone());
                self.update_message();
            }
            Event::JobFinished { id, report } => {
                self.running.shift_remove(id);
                // Jobs never started get no line each: the summary counts them.
                let text = if (self.opts.quiet && report.status.is_ok()) || report.not_run() {
                    String::new()
                } else {
                    self.job_text(report)
                };
                self.emit(&text);
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
                self.update_message();
                self.finished += 1;
                self.tally.add(report);
                self.note(report);
            }
            Event::RunFinished {
                duration_ms,
                interrupted,
            } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                let text = self.summary_text(*duration_ms, *interrupted);
                self.emit(&text);
            }
        }
    }

    fn update_message(&self) {
        let Some(bar) = &self.bar else { return };
        let mut names = self.running.values();
        let msg = match (names.next(), self.running.len()) {
            (None, _) => String::new(),
            (Some(n), 1) => visible(n).into_owned(),
            (Some(n), k) => format!("{} (+{} running)", visible(n), k - 1),
        };
        bar.set_message(msg);
    }

    fn emit(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let out = &mut self.out;
        let mut write = || {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    fn paint(&self, color: &str, text: &str) -> String {
        if self.opts.color {
            format!("{color}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    fn status_label(&self, status: Status) -> String {
        let (label, color) = match status {
            Status::Passed => ("PASS", GREEN),
            Status::Failed => ("FAIL", BOLD_RED),
            Status::Timeout => ("TIMEOUT", BOLD_RED),
            Status::Error => ("ERROR", BOLD_MAGENTA),
            Status::Skipped => ("SKIP", YELLOW),
        };
        self.paint(color, &format!("{label:>7}"))
    }

    /// `   PASS [  0.123s] file name`, without details.
    fn job_line(&self, job: &JobReport) -> String {
        let mut line = format!(
            "{} [{:>8.3}s] {} {}",
            self.status_label(job.status),
            job.duration_ms as f64 / 1000.0,
            self.paint(DIM, &visible(&job.file)),
            self.paint(BOLD, &visible(&job.name))
        );
        if let (Some(total), Some(passed)) = (job.cases_total, job.cases_passed) {
            line.push_str(&format!(" ({passed}/{total} cases)"));
        }
        if let Some(n) = job.attempts {
            let what = if job.flaky {
                "flaky, passed on attempt"
            } else {
                "attempts:"
            };
            line.push_str(&self.paint(YELLOW, &format!(" ({what} {n})")));
        }
        if job.status == Status::Skipped {
            if let Some(reason) = &job.message {
                line.push_str(&format!(": {}", visible(reason)));
            }
        }
        line.push('\n');
        line
    }

    /// The job line plus, for jobs that did not pass, why.
    fn job_text(&self, job: &JobReport) -> String {
        let mut text = self.job_line(job);
        let indent = "        ";
        match job.status {
            Status::Passed | Status::Skipped => {}
            Status::Timeout | Status::Error => {
                let msg = job.message.as_deref().unwrap_or(job.status.as_str());
                for l in msg.lines() {
                    text.push_str(&format!("{indent}{}\n", shown(l)));
                }
            }
            Status::Failed => {
                if let Some(msg) = &job.message {
                    for l in msg.lines() {
                        text.push_str(&format!("{indent}{}\n", shown(l)));
                    }
                }
                for c in job.checks.iter().filter(|c| !c.passed) {
                    // Not again when the job's message says it already.
                    if !job.says(c) {
                        for l in c.message.lines() {
                            text.push_str(&format!("{indent}{}\n", shown(l)));
                        }
                    }
                    if let (Some(e), Some(a)) = (&c.expected, &c.actual) {
                        let diff = unified_diff(e, a);
                        let lines: Vec<&str> = diff.lines().collect();
                        for l in lines.iter().take(DIFF_LINES) {
                            let l = &*shown(l);
                            let painted = if l.starts_with("---") || l.starts_with("+++") {
                                self.paint(BOLD, l)
                            } else if l.starts_with('-') {
                                self.paint(RED, l)
                            } else if l.starts_with('+') {
                                self.paint(GREEN, l)
                            } else {
                                l.to_string()
                            };
                            text.push_str(&format!("{indent}  {painted}\n"));
                        }
                        if lines.len() > DIFF_LINES {
                            text.push_str(&format!(
                                "{indent}  ... ({} more diff lines)\n",
                                lines.len() - DIFF_LINES
                            ));
                        }
                    }
                }
                // The compiler's complaint, or why the program exited as it did (a traceback).
                let exit_failed = job
                    .checks
                    .iter()
                    .any(|c| !c.passed && c.kind == "exit_code");
                if (job.phase == Some(Phase::Compile) || exit_failed)
                    && !job.stderr.trim().is_empty()
                {
                    let lines: Vec<&str> = job.stderr.trim_end().lines().collect();
                    let skip = lines.len().saturating_sub(STDERR_TAIL);
                    if skip > 0 {
                        text.push_str(&format!("{indent}| ... ({skip} earlier lines)\n"));
                    }
                    for l in &lines[skip..] {
                        text.push_str(&format!("{indent}| {}\n", shown(l)));
                    }
                }
            }
        }
        text
    }

    fn summary_text(&self, duration_ms: u64, interrupted: bool) -> String {
        let s = &self.tally.summary;
        // Never started: reported as such, or not reported at all (an interrupted run).
        let not_run = self.not_run + self.total.saturating_sub(self.finished);
        let why_not = self.why_not.as_deref().unwrap_or("the run was interrupted");
        let counts = [
            s.passed,
            s.failed,
            s.timeout,
            s.error,
            s.skipped - self.not_run,
        ];
        let n = s.total - self.not_run;
        let count = |k: usize, label: &str, color: &str| {
            let s = format!("{} {label}", counts[k]);
            if counts[k] > 0 {
                self.paint(color, &s)
            } else {
                s
            }
        };
        let mut text = String::new();
        // The failures again, so they are visible after a long scroll (quiet output is
        // already just the failures).
        if !self.not_passed.is_empty() && n > 1 && !self.opts.quiet {
            text.push_str(&format!("{}\n", self.paint(BOLD, "Not passed:")));
            for line in &self.not_passed {
                text.push_str(line);
            }
            if self.not_passed_more > 0 {
                text.push_str(&format!(
                    "... and {} more (the reports have them all)\n",
                    self.not_passed_more
                ));
            }
        }
        text.push_str(&format!(
            "{} [{:>8.3}s] {n} {} run: {}, {}, {}, {}, {}",
            self.paint(BOLD, "Summary"),
            duration_ms as f64 / 1000.0,
            if n == 1 { "job" } else { "jobs" },
            count(0, "passed", GREEN),
            count(1, "failed", BOLD_RED),
            count(2, "timeout", BOLD_RED),
            count(3, "error", BOLD_MAGENTA),
            count(4, "skipped", YELLOW),
        ));
        let flaky = s.flaky;
        if flaky > 0 {
            text.push_str(&self.paint(YELLOW, &format!(" ({flaky} flaky)")));
        }
        if not_run > 0 || interrupted {
            text.push_str(&self.paint(
                BOLD_RED,
                &format!(
                    "; {not_run} not run: {}",
                    if interrupted {
                        "interrupted; `run --resume` runs only what did not finish"
                    } else {
                        why_not
                    }
                ),
            ));
        }
        text.push('\n');

        if let Some((groups, mean)) = self.tally.report_pass_at(self.opts.pass_at.as_deref()) {
            if not_run > 0 {
                text.push_str(&format!(
                    "note: {not_run} jobs did not run, so pass@k is over the samples that did (some groups were cut short)\n"
                ));
            }
            for (k, v) in &mean {
                let supporting = groups.iter().filter(|g| g.pass_at.contains_key(k)).count();
                text.push_str(&format!(
                    "{} {v:.3} (mean over {supporting} {})\n",
                    self.paint(BOLD, &format!("{:>7}", format!("pass@{k}"))),
                    if supporting == 1 { "group" } else { "groups" }
                ));
            }
        }
        text
    }
}

/// One line of a job's text as shown: at most [`LINE_BYTES`] of it, [`visible`].
fn shown(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= LINE_BYTES {
        return visible(line);
    }
    let at = crate::report::model::char_floor(line, LINE_BYTES);
    std::borrow::Cow::Owned(format!(
        "{} ... ({} more bytes)",
        visible(&line[..at]),
        line.len() - at
    ))
}

/// `text` as it may reach a terminal: what a job printed is data, never commands for the
/// terminal. Control characters other than newline and tab (escape sequences, carriage
/// returns, C1 controls) and the Unicode direction overrides are shown escaped (`\x1b`,
/// `\r`, `\u{202e}`); everything else is unchanged. The reports keep the bytes.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            c if hidden(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(visible("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            visible("\x1b[2J\x1b]52;c;aGk=\x07\rPASS\u{9b}\u{202e}x"),
            "\\x1b[2J\\x1b]52;c;aGk=\\x07\\rPASS\\x9b\\u{202e}x"
        );
        let long = "é".repeat(300);
        let got = shown(&long);
        assert!(got.ends_with(" ... (200 more bytes)"), "{got}");
        assert_eq!(got.len(), 400 + " ... (200 more bytes)".len());
    }
    use super::*;
    use crate::report::model::CheckResult;
    use crate::report::test_support::job;
    use std::sync::{Arc, Mutex};

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
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn run(opts: TerminalOptions, jobs: Vec<JobReport>) -> String {
        let buf = Buf::default();
        let mut r = TerminalReporter::new(Box::new(buf.clone()), opts);
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
            duration_ms: 1234,
            interrupted: false,
        });
        buf.text()
    }

    fn jobs() -> Vec<JobReport> {
        let a = job("hello", Status::Passed);
        let mut b = job("sum", Status::Failed);
        b.checks = vec![CheckResult {
            kind: "stdout".into(),
            passed: false,
            message: "stdout differs at line 1: expected `5`, got `6`".into(),
            expected: Some("5".into()),
            actual: Some("6".into()),
        }];
        let mut c = job("slow", Status::Timeout);
        c.message = Some("timed out after 1s".into());
        vec![a, b, c]
    }

    #[test]
    fn plain_output() {
        let out = run(TerminalOptions::default(), jobs());
        let expected = "   PASS [   0.123s] jobs/basic.toml hello\n\
                        \x20  FAIL [   0.123s] jobs/basic.toml sum\n\
                        \x20       stdout differs at line 1: expected `5`, got `6`\n\
                        \x20         --- expected\n\
                        \x20         +++ actual\n\
                        \x20         @@ -1 +1 @@\n\
                        \x20         -5\n\
                        \x20         +6\n\
                        TIMEOUT [   0.123s] jobs/basic.toml slow\n\
                        \x20       timed out after 1s\n\
                        Not passed:\n\
                        \x20  FAIL [   0.123s] jobs/basic.toml sum\n\
                        TIMEOUT [   0.123s] jobs/basic.toml slow\n\
                        Summary [   1.234s] 3 jobs run: 1 passed, 1 failed, 1 timeout, 0 error, 0 skipped\n";
        assert_eq!(out, expected);
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn quiet_prints_only_failures_and_summary() {
        let mut js = jobs();
        js.remove(2);
        let out = run(
            TerminalOptions {
                quiet: true,
                ..Default::default()
            },
            js,
        );
        assert!(!out.contains("PASS"));
        assert!(out.contains("FAIL [   0.123s] jobs/basic.toml sum\n"));
        assert!(out.contains("Summary [   1.234s] 2 jobs run: 1 passed, 1 failed"));
    }

    #[test]
    fn a_failed_exit_code_says_so_once_and_shows_the_traceback() {
        let mut j = job("crash", Status::Failed);
        j.message = Some("exit code 1, expected 0".into());
        j.phase = Some(Phase::Run);
        j.stderr = "Traceback (most recent call last):\nAssertionError: boom\n".into();
        j.checks = vec![CheckResult {
            kind: "exit_code".into(),
            passed: false,
            message: "exit code 1, expected 0".into(),
            expected: None,
            actual: None,
        }];
        let out = run(TerminalOptions::default(), vec![j]);
        assert_eq!(out.matches("exit code 1, expected 0").count(), 1, "{out}");
        assert!(out.contains("| AssertionError: boom"), "{out}");
    }

    #[test]
    fn colors_only_when_asked() {
        let out = run(
            TerminalOptions {
                color: true,
                ..Default::default()
            },
            jobs(),
        );
        assert!(out.contains("\x1b[32m   PASS\x1b[0m"));
        assert!(out.contains("\x1b[1;31m   FAIL\x1b[0m"));
    }

    #[test]
    fn pass_at_lines() {
        let mut js = vec![];
        for (g, st) in [
            ("a", Status::Passed),
            ("a", Status::Failed),
            ("b", Status::Failed),
        ] {
            let mut j = job(g, st);
            j.group = Some(g.into());
            js.push(j);
        }
        let out = run(TerminalOptions::default(), js);
        assert!(
            out.ends_with(" pass@1 0.250 (mean over 2 groups)\n"),
            "{out}"
        );
        let opts = TerminalOptions {
            pass_at: Some(vec![1, 2]),
            ..Default::default()
        };
        let mut js = vec![];
        for st in [Status::Passed, Status::Failed] {
            let mut j = job("x", st);
            j.group = Some("g".into());
            js.push(j);
        }
        let out = run(opts, js);
        assert!(out.contains(" pass@1 0.500 (mean over 1 group)\n"), "{out}");
        assert!(out.contains(" pass@2 1.000 (mean over 1 group)\n"), "{out}");
    }

    #[test]
    fn interrupted_and_compile_stderr() {
        let buf = Buf::default();
        let mut r = TerminalReporter::new(Box::new(buf.clone()), TerminalOptions::default());
        r.handle(&Event::RunStarted { total: 5 });
        let mut j = job("c", Status::Failed);
        j.phase = Some(Phase::Compile);
        j.message = Some("compilation failed".into());
        j.stderr = "main.c:1:1: error: expected ';'\n".into();
        r.handle(&Event::JobFinished {
            id: 0,
            report: Box::new(j),
        });
        r.handle(&Event::RunFinished {
            duration_ms: 10,
            interrupted: true,
        });
        let out = buf.text();
        assert!(
            out.contains("        compilation failed\n        | main.c:1:1: error: expected ';'\n"),
            "{out}"
        );
        assert!(out.contains("1 job run: 0 passed, 1 failed, 0 timeout, 0 error, 0 skipped; 4 not run: interrupted"), "{out}");
        assert_eq!(r.tally().summary.total, 1);
    }

    #[test]
    fn jobs_never_started_get_one_summary_line() {
        let buf = Buf::default();
        let mut r = TerminalReporter::new(Box::new(buf.clone()), TerminalOptions::default());
        r.handle(&Event::RunStarted { total: 40 });
        for i in 0..40 {
            let mut j = job(
                &format!("j{i}"),
                if i == 0 {
                    Status::Failed
                } else {
                    Status::Skipped
                },
            );
            j.group = Some("g".into());
            if i > 0 {
                j.message = Some(format!(
                    "{}--fail-fast stopped the run",
                    crate::report::model::NOT_RUN
                ));
            }
            r.handle(&Event::JobFinished {
                id: i,
                report: Box::new(j),
            });
        }
        r.handle(&Event::RunFinished {
            duration_ms: 10,
            interrupted: false,
        });
        let out = buf.text();
        assert!(!out.contains("SKIP"), "a line per job not run:\n{out}");
        assert!(
            out.contains("1 job run: 0 passed, 1 failed, 0 timeout, 0 error, 0 skipped; 39 not run: --fail-fast stopped the run"),
            "{out}"
        );
        assert!(out.contains("note: 39 jobs did not run"), "{out}");
    }
}
