//! GitHub Actions workflow annotations: under `GITHUB_ACTIONS=true` every job that did not
//! pass is also printed as `::error file=<job file>,line=<job's line>,title=<job>::<why>`,
//! so that it shows on the pull request's diff (README, "Reports").

use super::model::{JobReport, Status};

/// Whether this process runs in a GitHub Actions job.
pub fn enabled() -> bool {
    std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true")
}

/// The annotation of a job that did not pass (None for passed and skipped jobs).
pub fn annotation(job: &JobReport) -> Option<String> {
    if matches!(job.status, Status::Passed | Status::Skipped) {
        return None;
    }
    let why = job.why();
    let mut props = format!("file={}", property(&job.file));
    if let Some(l) = job.line {
        props.push_str(&format!(",line={l}"));
    }
    props.push_str(&format!(
        ",title={}",
        property(&format!("{} ({})", job.name, job.status.as_str()))
    ));
    Some(format!("::error {props}::{}", data(&why)))
}

/// A command's message: `%`, CR and LF escaped (the workflow-command encoding).
fn data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A command's property value: as [`data`], and `:` and `,` too.
fn property(s: &str) -> String {
    data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_support::job;

    #[test]
    fn failures_become_escaped_error_annotations() {
        let mut j = job("sum: 100%", Status::Failed);
        j.file = "jobs/a,b.toml".into();
        j.line = Some(7);
        j.message = Some("case 3: stdout differs\nexpected `3`".into());
        assert_eq!(
            annotation(&j).unwrap(),
            "::error file=jobs/a%2Cb.toml,line=7,title=sum%3A 100%25 (failed)::case 3: stdout differs%0Aexpected `3`"
        );
        assert!(annotation(&job("ok", Status::Passed)).is_none());
        assert!(annotation(&job("later", Status::Skipped)).is_none());
    }
}
