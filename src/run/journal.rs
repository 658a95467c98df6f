//! The run's journal (README, "Long runs"): every finished job's result is appended, as
//! it finishes, to `.llm-sandbox/journal/<job set>.jsonl` — one JSON line `{ key, report }`,
//! written at once (a killed runner loses nothing the kernel has) and fsync'd every
//! [`SYNC_EVERY`] lines and at the end. `--resume` reads it back: a job whose key (a hash of
//! everything that decides its outcome) has a result is not run again. A torn or corrupt
//! line is skipped with a warning.

use crate::plan::PlannedJob;
use crate::report::model::JobReport;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Lines between two fsyncs.
const SYNC_EVERY: usize = 32;

#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    report: JobReport,
}

/// The journal of one job set, open for appending.
pub struct Journal {
    file: std::fs::File,
    unsynced: usize,
    pub path: PathBuf,
}

/// Jobs' keys: what identifies a job's outcome, its whole planned form (program, inputs'
/// names and contents, stdin, args, environment, limits, checks, cases, backend, image...)
/// but its position in the plan. Each input file is read and hashed once, however many
/// jobs share it (a dataset's rows often do).
#[derive(Default)]
pub struct Keys {
    files: HashMap<PathBuf, Vec<u8>>,
}

impl Keys {
    pub fn of(&mut self, job: &PlannedJob) -> String {
        use sha2::Digest;
        let mut v = serde_json::to_value(job).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("id");
            o.remove("line");
        }
        let mut h = sha2::Sha256::new();
        h.update(v.to_string().as_bytes());
        for f in &job.files {
            h.update([0]);
            let digest =
                self.files
                    .entry(f.src.clone())
                    .or_insert_with(|| match std::fs::read(&f.src) {
                        Ok(b) => sha2::Sha256::digest(&b).to_vec(),
                        Err(e) => e.to_string().into_bytes(),
                    });
            h.update(&digest[..]);
        }
        h.finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Where the journal of the job set `job_set` lives, below `dir` (`.llm-sandbox`).
pub fn path_of(dir: &Path, job_set: &str) -> PathBuf {
    dir.join("journal").join(format!("{job_set}.jsonl"))
}

/// The results in the journal at `path`, by job key (the last one of a key wins), and the
/// number of lines that could not be read (a torn last line after a crash, corruption).
pub fn read(path: &Path) -> std::io::Result<(HashMap<String, JobReport>, usize)> {
    let text = std::fs::read(path)?;
    let mut out = HashMap::new();
    let mut bad = 0;
    for line in text.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Line>(line) {
            Ok(l) => {
                out.insert(l.key, l.report);
            }
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}

/// Whether the file at `path` ends in the middle of a line.
fn ends_torn(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

impl Journal {
    /// Opens the journal at `path`: emptied for a new run, kept (and appended to) to resume.
    pub fn open(path: &Path, resume: bool) -> std::io::Result<Journal> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .truncate(false)
            .open(path)?;
        if !resume {
            file.set_len(0)?;
        } else if ends_torn(path)? {
            // A line cut short by a crash stays one bad line: the next starts on its own.
            (&file).write_all(b"\n")?;
        }
        Ok(Journal {
            file,
            unsynced: 0,
            path: path.to_path_buf(),
        })
    }

    /// Appends one finished job's result.
    pub fn append(&mut self, key: String, report: &JobReport) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&Line {
            key,
            report: report.clone(),
        })
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.unsynced += 1;
        if self.unsynced >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> std::io::Result<()> {
        self.unsynced = 0;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::Status;
    use crate::report::test_support::job;

    #[test]
    fn results_survive_and_a_torn_line_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = path_of(d.path(), "set");
        let mut j = Journal::open(&p, false).unwrap();
        j.append("a".into(), &job("one", Status::Passed)).unwrap();
        j.append("b".into(), &job("two", Status::Failed)).unwrap();
        drop(j);
        // A crash in the middle of a line.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"key\": \"c\", \"report\": {\"na").unwrap();
        let (got, bad) = read(&p).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(got["a"].name, "one");
        assert_eq!(got["b"].status, Status::Failed);
        // Resuming appends; a new run starts empty.
        let mut j = Journal::open(&p, true).unwrap();
        j.append("c".into(), &job("three", Status::Passed)).unwrap();
        assert_eq!(read(&p).unwrap().0.len(), 3);
        drop(Journal::open(&p, false).unwrap());
        assert_eq!(read(&p).unwrap(), (HashMap::new(), 0));
    }

    #[test]
    fn the_key_follows_the_outcome_not_the_position() {
        let mut a = PlannedJob::adhoc(
            crate::spec::types::Lang::Bash,
            "echo 1".into(),
            vec![],
            std::time::Duration::from_secs(1),
            false,
        );
        let k = Keys::default().of(&a);
        a.id = 7;
        assert_eq!(Keys::default().of(&a), k);
        a.code = "echo 2".into();
        assert_ne!(Keys::default().of(&a), k);
    }
}
