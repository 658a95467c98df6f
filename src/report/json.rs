//! The JSON report (README, "Reports", `schemas/report.schema.json`).

use super::model::{JobReport, Report};
use super::passk::Tally;
use super::Jobs;
use chrono::{DateTime, SecondsFormat, Utc};

/// Report format version.
pub const REPORT_VERSION: u32 = 1;

/// Builds the whole report. `groups` and the top-level `pass_at` are present only when
/// some job has a group; `pass_at` (the `--pass-at` list) defaults to
/// [`Tally::default_ks`].
pub fn build_report(
    started_at: DateTime<Utc>,
    duration_ms: u64,
    jobs: Vec<JobReport>,
    pass_at: Option<&[usize]>,
) -> Report {
    report_of(&Tally::of(&jobs), started_at, duration_ms, jobs, pass_at)
}

/// The report of jobs counted in `tally`, which `jobs` yields (in memory, or read back
/// from a run's journal one at a time: [`Jobs`]).
pub fn report_of<J>(
    tally: &Tally,
    started_at: DateTime<Utc>,
    duration_ms: u64,
    jobs: J,
    pass_at: Option<&[usize]>,
) -> Report<J> {
    let (groups, top) = tally.report_pass_at(pass_at).unzip();
    Report {
        version: REPORT_VERSION,
        started_at: started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        duration_ms,
        summary: tally.summary.clone(),
        jobs,
        groups,
        job_set: None,
        shard: None,
        pass_at: top,
    }
}

/// `like` with other jobs (the latest result of every job a watch has): its time, job set
/// and shard kept; summary, groups and pass@k made from `jobs`.
pub fn with_jobs(like: &Report, jobs: Vec<JobReport>, pass_at: Option<&[usize]>) -> Report {
    let started = DateTime::parse_from_rfc3339(&like.started_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    let mut r = build_report(started, like.duration_ms, jobs, pass_at);
    r.job_set.clone_from(&like.job_set);
    r.shard.clone_from(&like.shard);
    r
}

/// Serializes the report as pretty JSON (with a final newline).
pub fn to_json<J: Jobs + serde::Serialize>(report: &Report<J>) -> String {
    let mut out = Vec::new();
    json_to(report, &mut out).expect("a report in memory always serializes");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// Writes the report as pretty JSON (with a final newline) to `out`, one job at a time.
pub fn json_to<J: Jobs + serde::Serialize>(
    report: &Report<J>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

/// Writes the report to `dest` (`-` = standard output; a path is written atomically).
pub fn write_json<J: Jobs + serde::Serialize>(
    report: &Report<J>,
    dest: &str,
) -> std::io::Result<()> {
    super::write_dest_with(dest, &mut |w| json_to(report, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::{CheckResult, Phase, Status, Summary};
    use crate::report::test_support::{check, job};
    use chrono::TimeZone;

    fn started() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()
    }

    fn sample_jobs() -> Vec<JobReport> {
        let mut a = job("hello", Status::Passed);
        a.stdout = "Hello, World!\n".into();
        a.checks = vec![check("exit_code", true, "exit code 0")];
        let mut b = job("sum", Status::Failed);
        b.checks = vec![CheckResult {
            kind: "stdout".into(),
            passed: false,
            message: "stdout differs at line 1: expected `5`, got `6`".into(),
            expected: Some("5".into()),
            actual: Some("6".into()),
        }];
        b.stdout = "6\n".into();
        let mut c = job("slow", Status::Timeout);
        c.message = Some("timed out after 1s".into());
        let mut d = job("later", Status::Skipped);
        d.message = Some("not yet".into());
        let mut e = job("broken", Status::Error);
        e.phase = Some(Phase::Prepare);
        e.message = Some("docker is not reachable".into());
        vec![a, b, c, d, e]
    }

    #[test]
    fn summary_and_no_groups() {
        let r = build_report(started(), 1500, sample_jobs(), None);
        assert_eq!(r.version, 1);
        assert_eq!(r.started_at, "2024-05-06T07:08:09.000Z");
        assert_eq!(
            r.summary,
            Summary {
                total: 5,
                passed: 1,
                failed: 1,
                timeout: 1,
                error: 1,
                skipped: 1,
                flaky: 0,
            }
        );
        assert!(r.groups.is_none());
        assert!(r.pass_at.is_none());
        let v: serde_json::Value = serde_json::from_str(&to_json(&r)).unwrap();
        assert!(v.get("groups").is_none());
        assert!(v.get("pass_at").is_none());
        assert_eq!(v["jobs"][0]["status"], "passed");
        assert_eq!(v["jobs"][0]["lang"], "python");
        assert_eq!(v["jobs"][0]["backend"], "native");
        assert_eq!(v["jobs"][2]["message"], "timed out after 1s");
    }

    #[test]
    fn round_trip() {
        let mut jobs = sample_jobs();
        jobs[0].group = Some("g1".into());
        jobs[1].group = Some("g1".into());
        let r = build_report(started(), 1500, jobs, None);
        let text = to_json(&r);
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let groups = r.groups.as_ref().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].n, groups[0].passed), (2, 1));
        assert_eq!(r.pass_at.as_ref().unwrap()["1"], 0.5);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["pass_at"]["1"], 0.5);
        assert_eq!(v["groups"][0]["pass_at"]["1"], 0.5);
    }

    #[test]
    fn explicit_ks() {
        let mut jobs = sample_jobs();
        for j in &mut jobs {
            j.group = Some("g".into());
        }
        let r = build_report(started(), 0, jobs, Some(&[1, 2, 10]));
        let top = r.pass_at.unwrap();
        // 4 samples (the skipped job is not one), 1 passed.
        assert_eq!(top.keys().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(top["1"], 0.25);
        assert_eq!(top["2"], 0.5);
    }

    #[test]
    fn write_to_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out/report.json");
        let r = build_report(started(), 5, sample_jobs(), None);
        write_json(&r, p.to_str().unwrap()).unwrap();
        let back: Report = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
