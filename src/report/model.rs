//! The report data model (README, "Reports"): what the runner produces for each job and run.
//! `schemas/report.schema.json` is generated from these types.

use crate::spec::types::{BackendKind, Lang};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// README, "Statuses and exit codes".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    Failed,
    Timeout,
    Error,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Error => "error",
            Status::Skipped => "skipped",
        }
    }
    /// Counts as success for the exit code.
    pub fn is_ok(self) -> bool {
        matches!(self, Status::Passed | Status::Skipped)
    }
}

/// Where a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Prepare,
    Compile,
    Run,
}

/// One `expect` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckResult {
    /// e.g. `exit_code`, `stdout`, `stdout_contains`, `file:out.json:json`, `checker`,
    /// `interactor`.
    pub kind: String,
    pub passed: bool,
    pub message: String,
    /// Expected value, when the check compares text (used for diffs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Actual value, when the check compares text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
}

/// The result of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobReport {
    pub name: String,
    pub file: String,
    /// The line of the job's entry in its file (1-based), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub lang: Lang,
    pub backend: BackendKind,
    /// Image or environment the job ran in (`host` for native).
    #[serde(default)]
    pub image: Option<String>,
    pub status: Status,
    /// The phase the job reached (None when skipped).
    #[serde(default)]
    pub phase: Option<Phase>,
    /// Exit code of the last step that ran (None when killed or never started).
    #[serde(default)]
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    /// Why, for error and timeout (and failed when a limit was hit or compilation failed).
    #[serde(default)]
    pub message: Option<String>,
    pub checks: Vec<CheckResult>,
    /// Host paths of the collected artifacts.
    pub artifacts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Signal that ended the program, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// CPU time (user + system) of the run step's processes, in milliseconds (README,
    /// "Resource figures"); absent when the job did not reach its run step or the backend
    /// could not measure it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Peak resident memory of the run step's processes, in bytes (README, "Resource
    /// figures"); absent when it could not be measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// A job with test cases (README, "Test cases"): how many it has, how many passed, and
    /// each case that ran, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases_total: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases_passed: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<CaseReport>,
    /// `--retries`: it passed only on a retry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flaky: bool,
    /// `--retries`: how many times it ran (absent: once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// The result of one test case of a job: its own run step, checks and figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CaseReport {
    pub name: String,
    pub status: Status,
    #[serde(default)]
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
    pub checks: Vec<CheckResult>,
    /// Its output, kept for a case that did not pass (the checks saw all of it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

/// How the message of a job the run never started begins ([`JobReport::not_run`]).
pub const NOT_RUN: &str = "not run: ";

/// Whether a job of this status and message is one the run never started
/// ([`JobReport::not_run`]).
pub fn never_started(status: Status, message: Option<&str>) -> bool {
    status == Status::Skipped && message.is_some_and(|m| m.starts_with(NOT_RUN))
}

/// What a report keeps of each of a job's output streams (the checks saw all of it): a
/// run's memory must not grow with what its jobs print. Past it, `*_truncated` is set.
pub const REPORT_STREAM_CAP: usize = 256 << 10;
/// What a check keeps of its expected and actual text (for its diff).
pub const CHECK_TEXT_CAP: usize = 64 << 10;

/// The largest character boundary of `s` at or below `at` (`s.len()` when `at` is past it).
pub fn char_floor(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    let mut at = at;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Cuts `s` to at most `cap` bytes at a character boundary; whether it cut.
pub fn cut(s: &mut String, cap: usize) -> bool {
    if s.len() <= cap {
        return false;
    }
    s.truncate(char_floor(s, cap));
    s.shrink_to_fit();
    true
}

impl JobReport {
    /// Bounds what this report keeps ([`REPORT_STREAM_CAP`], [`CHECK_TEXT_CAP`]): the
    /// runner does this to every report as its job finishes.
    pub fn bound(&mut self) {
        if cut(&mut self.stdout, REPORT_STREAM_CAP) {
            self.stdout_truncated = true;
        }
        if cut(&mut self.stderr, REPORT_STREAM_CAP) {
            self.stderr_truncated = true;
        }
        for c in &mut self.checks {
            for text in [&mut c.expected, &mut c.actual].into_iter().flatten() {
                if cut(text, CHECK_TEXT_CAP) {
                    text.push_str("\n[... cut: the report keeps 64 KiB of it]");
                }
            }
        }
    }

    /// A job the run never started (Ctrl-C, `--fail-fast`): skipped, its message
    /// [`NOT_RUN`]` why`.
    pub fn not_run(&self) -> bool {
        never_started(self.status, self.message.as_deref())
    }

    /// Whether the job's message already says what check `c` says (a failed job's message
    /// is made of its failed checks' messages): reporters then show only the check's diff.
    pub fn says(&self, c: &CheckResult) -> bool {
        self.message
            .as_deref()
            .is_some_and(|m| m.contains(c.message.as_str()))
    }

    /// Why it did not pass, in one line: its message, else its first failed check's,
    /// else its status.
    pub fn why(&self) -> String {
        self.message
            .clone()
            .or_else(|| {
                self.checks
                    .iter()
                    .find(|c| !c.passed)
                    .map(|c| c.message.clone())
            })
            .unwrap_or_else(|| self.status.as_str().to_string())
    }

    /// A copy without the job's output and the checks' texts (for reporters that keep
    /// every job: counts, pass@k, the list of what did not pass).
    pub fn summary_copy(&self) -> JobReport {
        JobReport {
            name: self.name.clone(),
            file: self.file.clone(),
            line: self.line,
            lang: self.lang,
            backend: self.backend,
            image: self.image.clone(),
            status: self.status,
            phase: self.phase,
            exit_code: self.exit_code,
            duration_ms: self.duration_ms,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: self.stdout_truncated,
            stderr_truncated: self.stderr_truncated,
            message: self.message.clone(),
            checks: Vec::new(),
            artifacts: Vec::new(),
            group: self.group.clone(),
            tags: self.tags.clone(),
            signal: self.signal,
            cpu_ms: self.cpu_ms,
            peak_memory_bytes: self.peak_memory_bytes,
            cases_total: self.cases_total,
            cases_passed: self.cases_passed,
            cases: Vec::new(),
            flaky: self.flaky,
            attempts: self.attempts,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub timeout: usize,
    pub error: usize,
    pub skipped: usize,
    /// Passed only on a retry (`--retries`; counted in `passed` too).
    #[serde(default)]
    pub flaky: usize,
}

/// pass@k of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupReport {
    pub key: String,
    /// Samples in the group.
    pub n: usize,
    /// Samples that passed.
    pub passed: usize,
    /// k → pass@k (only for k ≤ n).
    pub pass_at: IndexMap<String, f64>,
}

// Its jobs are in memory (a report read from a file), or read one at a time as it is
// written (a run's, from its journal: `crate::report::Jobs`).
/// The whole JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "llm-sandbox report")]
pub struct Report<J = Vec<JobReport>> {
    /// Report format version (1).
    pub version: u32,
    /// RFC 3339 timestamp.
    pub started_at: String,
    pub duration_ms: u64,
    pub summary: Summary,
    pub jobs: J,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupReport>>,
    /// What identifies the job set (a hash of the selected jobs' names before `--shard`),
    /// and which shard of it this report is: `llm-sandbox merge` joins the shards of one
    /// job set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_set: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// k → mean pass@k over groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_at: Option<IndexMap<String, f64>>,
}

/// The one contract between the runner and the reporters (nextest's model).
#[derive(Debug, Clone)]
pub enum Event {
    RunStarted {
        total: usize,
    },
    JobStarted {
        id: usize,
        name: String,
    },
    JobFinished {
        id: usize,
        report: Box<JobReport>,
    },
    RunFinished {
        duration_ms: u64,
        interrupted: bool,
    },
    /// `--resume`: what the results kept from the journal (not run again) count, and
    /// those of them that did not pass (without their output), for the summary.
    Resumed {
        tally: crate::report::Tally,
        not_passed: Vec<JobReport>,
    },
}
