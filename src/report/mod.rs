//! Reporters: they consume [`model::Event`]s and [`model::JobReport`]s; they never run anything.
//!
//! * [`json`]: the JSON report (README, "Reports"), written at the end of a run, one job at a
//!   time (a run's jobs are read back from its journal: [`Jobs`]).
//! * [`junit`]: JUnit XML for CI consumers (Jenkins, GitLab, GitHub).
//! * [`html`]: one self-contained HTML page.
//! * [`passk`]: pass@k over groups (Chen et al. 2021).
//! * [`terminal`]: the human output of `run` on stderr (progress bar, one line per job,
//!   summary).

pub mod diff;
pub mod github;
pub mod html;
pub mod json;
pub mod junit;
pub mod model;
pub mod passk;
pub mod terminal;

pub use json::{build_report, write_json};
pub use junit::{to_junit, write_junit};
pub use passk::{pass_at_k, Tally};
pub use terminal::{TerminalOptions, TerminalReporter};

use model::JobReport;
use std::borrow::Cow;
use std::io::Write;
use std::path::Path;

/// The jobs of a report, in order, one at a time. A run's are read back from its journal
/// (`run::Results`), so that a report of any size is written in bounded memory (README,
/// "Long runs"); a report read from a file has them in memory.
pub trait Jobs {
    fn count(&self) -> usize;
    fn job(&self, i: usize) -> std::io::Result<Cow<'_, JobReport>>;
}

impl Jobs for Vec<JobReport> {
    fn count(&self) -> usize {
        self.len()
    }
    fn job(&self, i: usize) -> std::io::Result<Cow<'_, JobReport>> {
        Ok(Cow::Borrowed(&self[i]))
    }
}

/// Any [`Jobs`], serialized as the JSON array of a report's `jobs`, one job read at a time.
pub struct Streamed<'a>(pub &'a dyn Jobs);

impl Jobs for Streamed<'_> {
    fn count(&self) -> usize {
        self.0.count()
    }
    fn job(&self, i: usize) -> std::io::Result<Cow<'_, JobReport>> {
        self.0.job(i)
    }
}

impl serde::Serialize for Streamed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.0.count()))?;
        for i in 0..self.0.count() {
            let job = self.0.job(i).map_err(S::Error::custom)?;
            seq.serialize_element(job.as_ref())?;
        }
        seq.end()
    }
}

/// Writes `contents` to `dest`: `-` is standard output; anything else is a file path,
/// written atomically (a temporary file in the same directory, then renamed), parent
/// directories created as needed.
pub fn write_dest(dest: &str, contents: &[u8]) -> std::io::Result<()> {
    write_dest_with(dest, &mut |w| w.write_all(contents))
}

/// [`write_dest`] of what `write` writes, through a buffer (nothing is held whole).
pub fn write_dest_with(
    dest: &str,
    write: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if dest == "-" {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
        write(&mut out)?;
        return out.flush();
    }
    let path = Path::new(dest);
    // Something that exists and is not a regular file (/dev/null, /dev/stdout, a FIFO) is
    // written to in place: replacing it by rename would destroy it.
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            let f = std::fs::OpenOptions::new().write(true).open(path)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 16, f);
            write(&mut out)?;
            return out.flush();
        }
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".llm-sandbox-report-")
        .tempfile_in(&parent)?;
    #[cfg(unix)]
    {
        // tempfile creates 0600; a report is an ordinary file (0644, minus the umask below).
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
        write(&mut out)?;
        out.flush()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::model::{CheckResult, JobReport, Status};
    use crate::spec::types::{BackendKind, Lang};

    /// A minimal job report for tests.
    pub fn job(name: &str, status: Status) -> JobReport {
        JobReport {
            name: name.to_string(),
            file: "jobs/basic.toml".to_string(),
            line: None,
            lang: Lang::Python,
            backend: BackendKind::Native,
            image: Some("host".to_string()),
            status,
            phase: if status == Status::Skipped {
                None
            } else {
                Some(super::model::Phase::Run)
            },
            exit_code: match status {
                Status::Passed => Some(0),
                Status::Failed => Some(1),
                _ => None,
            },
            duration_ms: 123,
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

    pub fn check(kind: &str, passed: bool, message: &str) -> CheckResult {
        CheckResult {
            kind: kind.to_string(),
            passed,
            message: message.to_string(),
            expected: None,
            actual: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn write_dest_never_replaces_a_special_file() {
        // A FIFO stands in for /dev/null: it must still be a FIFO afterwards.
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(&fifo).unwrap())
        };
        super::write_dest(fifo.to_str().unwrap(), b"report").unwrap();
        assert_eq!(reader.join().unwrap(), b"report");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }

    #[test]
    fn write_dest_creates_parents_atomically() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/report.json");
        super::write_dest(p.to_str().unwrap(), b"one").unwrap();
        super::write_dest(p.to_str().unwrap(), b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary files left: {names:?}");
    }
}
