//! The run's journal (README, "Long runs"): every finished job's result is appended, as
//! it finishes, to `.llm-sandbox/journal/<job set>.jsonl` — one JSON line `{ key, report }`,
//! written at once (a killed runner loses nothing the kernel has) and fsync'd once a
//! [`SYNC_EVERY`] at most, and at the end. `--resume` reads it back: a job whose key (a hash of
//! everything that decides its outcome) has a result is not run again. A torn or corrupt
//! line is skipped with a warning.

use crate::plan::PlannedJob;
use crate::report::model::JobReport;
use crate::report::{Jobs, Tally};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Time between two fsyncs (a line is written to the kernel at once: only a crash of the
/// machine can lose what was not synced yet, and `--resume` runs those jobs again). An
/// fsync per few lines would stall the runner on the disk job after job.
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct Line<K, R> {
    /// The job's key ([`Keys`]); empty for a job the run did not finish (interrupted, never
    /// started): in the run's reports, but run again on `--resume`.
    key: K,
    report: R,
}

/// Where a result is in a journal: its line's offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    offset: u64,
    len: u32,
}

/// The journal of one job set, open for appending and reading back.
pub struct Journal {
    file: std::fs::File,
    end: u64,
    synced: std::time::Instant,
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

/// Journals of other job sets kept beside a run's own: the most recently written.
pub const KEEP_OTHERS: usize = 16;

/// Removes the journals in `current`'s folder but `current` and the [`KEEP_OTHERS`] most
/// recently written others (each job set, and each shard, has its own: without this they
/// would pile up). Returns how many it removed.
pub fn prune(current: &Path) -> usize {
    let Some(dir) = current.parent() else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && p != current)
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    // A journal a running run holds (locked) stays: its run reads its results back.
    let free = |p: &Path| {
        std::fs::File::open(p)
            .and_then(|f| lock(&f))
            .unwrap_or(false)
    };
    others
        .iter()
        .skip(KEEP_OTHERS)
        .filter(|(_, p)| free(p) && std::fs::remove_file(p).is_ok())
        .count()
}

/// Takes `file`'s exclusive lock (held while the file is open; a process that ends frees
/// it). False when another open file holds it; a file system without locks lets it pass.
fn lock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file this function borrows.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS) => Ok(true),
        _ => Err(e),
    }
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
            .read(true)
            .append(true)
            .truncate(false)
            .open(path)?;
        // One run at a time per journal: another run of the same job set in the same
        // folder would empty it under this one (which reads its results back from it).
        if !lock(&file)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                "another run of this job set in this folder is writing it",
            ));
        }
        if !resume {
            file.set_len(0)?;
        } else if ends_torn(path)? {
            // A line cut short by a crash stays one bad line: the next starts on its own.
            (&file).write_all(b"\n")?;
        }
        let end = file.metadata()?.len();
        Ok(Journal {
            file,
            end,
            synced: std::time::Instant::now(),
            path: path.to_path_buf(),
        })
    }

    /// A journal nobody resumes from (an unnamed temporary file): where a run that cannot
    /// write its journal (a read-only directory), or a library caller's, keeps its results.
    pub fn temporary() -> std::io::Result<Journal> {
        Ok(Journal {
            file: tempfile::tempfile()?,
            end: 0,
            synced: std::time::Instant::now(),
            path: PathBuf::from("(a temporary file)"),
        })
    }

    /// Appends one job's result (`key` empty: the run did not finish it); where it is.
    pub fn append(&mut self, key: &str, report: &JobReport) -> std::io::Result<At> {
        let mut line = serde_json::to_vec(&Line { key, report }).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let len = u32::try_from(line.len())
            .map_err(|_| std::io::Error::other("a job's result over 4 GiB"))?;
        (&self.file).write_all(&line)?;
        let at = At {
            offset: self.end,
            len,
        };
        self.end += u64::from(len);
        if self.synced.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(at)
    }

    /// The result at `at`.
    pub fn read(&self, at: At) -> std::io::Result<JobReport> {
        let mut buf = vec![0; at.len as usize];
        self.file.read_exact_at(&mut buf, at.offset)?;
        let line: Line<String, JobReport> = serde_json::from_slice(&buf).map_err(|e| {
            std::io::Error::other(format!(
                "{} changed under the run: {e}",
                self.path.display()
            ))
        })?;
        Ok(line.report)
    }

    /// The finished results already in the journal (when resuming): where each key's last
    /// one is, the names of the jobs they are of, and how many lines could not be read (a
    /// torn last line after a crash, corruption). Read line by line: nothing is held but
    /// the index.
    pub fn index(&self) -> std::io::Result<Index> {
        let mut idx = Index::default();
        let mut reader = std::io::BufReader::with_capacity(1 << 16, From(&self.file, 0));
        let mut offset = 0u64;
        let mut buf = Vec::new();
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            let at = At {
                offset,
                len: n as u32,
            };
            offset += n as u64;
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Line<String, Named>>(&buf) {
                Ok(l) if l.key.is_empty() => {}
                Ok(l) => {
                    idx.names.insert(l.report.name);
                    idx.at.insert(l.key, at);
                }
                Err(_) => idx.bad += 1,
            }
        }
        Ok(idx)
    }

    pub fn sync(&mut self) -> std::io::Result<()> {
        self.synced = std::time::Instant::now();
        self.file.sync_data()
    }
}

/// Reads a file from a position of its own (the file's cursor is not moved).
struct From<'a>(&'a std::fs::File, u64);

impl std::io::Read for From<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read_at(buf, self.1)?;
        self.1 += n as u64;
        Ok(n)
    }
}

/// What a journal holds ([`Journal::index`]).
#[derive(Debug, Default)]
pub struct Index {
    pub at: HashMap<String, At>,
    pub names: HashSet<String>,
    pub bad: usize,
}

/// A run's results: each job's in the journal, and in memory only where it is and the
/// [`Tally`] (README, "Long runs"). The reports are written from it, one job at a time.
pub struct Results {
    pub journal: Journal,
    at: Vec<Option<At>>,
    pub tally: Tally,
    /// The jobs' keys (each input file hashed once, for `--resume` and the run alike).
    keys: Keys,
}

/// What `--resume` found ([`Results::resume`]).
#[derive(Debug, Default)]
pub struct Resumed {
    /// Jobs with a result under another key: changed since.
    pub changed: Vec<String>,
    /// Jobs not in the journal at all.
    pub new: usize,
    /// Lines that could not be read.
    pub bad: usize,
    /// What the kept results count (`summary.total`: how many), and those of them that did
    /// not pass (without output).
    pub tally: Tally,
    pub not_passed: Vec<JobReport>,
}

impl Results {
    /// The results of the jobs of a plan, kept in `journal`. Groups are counted in the
    /// plan's order, whichever job finishes first.
    pub fn new(journal: Journal, jobs: &[PlannedJob]) -> Results {
        Results {
            journal,
            at: vec![None; jobs.len()],
            tally: Tally::with_groups(jobs.iter().filter_map(|j| j.group.as_deref())),
            keys: Keys::default(),
        }
    }

    /// `--resume`: takes the results the journal already has for `jobs` (matched by key:
    /// [`Keys`]) as theirs; a kept result whose job moved in its file is appended again
    /// with its new line.
    pub fn resume(&mut self, jobs: &[PlannedJob]) -> std::io::Result<Resumed> {
        let idx = self.journal.index()?;
        let mut out = Resumed {
            bad: idx.bad,
            ..Resumed::default()
        };
        for j in jobs {
            let key = self.keys.of(j);
            let Some(&at) = idx.at.get(&key) else {
                if idx.names.contains(&j.name) {
                    out.changed.push(j.name.clone());
                } else {
                    out.new += 1;
                }
                continue;
            };
            let mut r = self.journal.read(at)?;
            let at = if r.line != j.line || r.name != j.name {
                r.line = j.line;
                r.name.clone_from(&j.name);
                self.journal.append(&key, &r)?
            } else {
                at
            };
            self.at[j.id] = Some(at);
            self.tally.add(&r);
            if !r.status.is_ok() {
                out.not_passed.push(r.summary_copy());
            }
        }
        out.tally = self.tally.clone();
        Ok(out)
    }

    /// Whether job `id` has its result.
    pub fn has(&self, id: usize) -> bool {
        self.at.get(id).is_some_and(Option::is_some)
    }

    /// Records `job`'s result; one the run did not `finish` (interrupted, never started) is
    /// journaled without a key (see [`Line`]): `--resume` runs it again.
    pub fn add(
        &mut self,
        job: &PlannedJob,
        finished: bool,
        report: &JobReport,
    ) -> std::io::Result<()> {
        let key = if finished {
            self.keys.of(job)
        } else {
            String::new()
        };
        let at = self.journal.append(&key, report)?;
        self.at[job.id] = Some(at);
        self.tally.add(report);
        Ok(())
    }

    /// The results, in plan order, for the reports.
    pub fn jobs(&self) -> Written<'_> {
        Written {
            journal: &self.journal,
            at: self.at.iter().flatten().copied().collect(),
        }
    }

    /// Every result, in plan order, in memory (for a library caller, or `watch`).
    pub fn into_reports(self) -> std::io::Result<Vec<JobReport>> {
        self.at
            .iter()
            .flatten()
            .map(|&at| self.journal.read(at))
            .collect()
    }
}

/// The results of a run, read back from its journal one at a time ([`Jobs`]).
pub struct Written<'a> {
    journal: &'a Journal,
    at: Vec<At>,
}

impl Jobs for Written<'_> {
    fn count(&self) -> usize {
        self.at.len()
    }
    fn job(&self, i: usize) -> std::io::Result<Cow<'_, JobReport>> {
        self.journal.read(self.at[i]).map(Cow::Owned)
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
        j.append("a", &job("one", Status::Passed)).unwrap();
        let two = j.append("b", &job("two", Status::Failed)).unwrap();
        j.append("", &job("never started", Status::Skipped))
            .unwrap();
        assert_eq!(j.read(two).unwrap().name, "two");
        drop(j);
        // A crash in the middle of a line.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"key\": \"c\", \"report\": {\"na").unwrap();
        // Resuming reads what finished, and appends.
        let mut j = Journal::open(&p, true).unwrap();
        let idx = j.index().unwrap();
        assert_eq!(idx.bad, 1);
        assert_eq!(
            idx.at.len(),
            2,
            "the job never started is no result: {idx:?}"
        );
        assert_eq!(j.read(idx.at["a"]).unwrap().name, "one");
        assert_eq!(j.read(idx.at["b"]).unwrap().status, Status::Failed);
        assert!(idx.names.contains("two") && !idx.names.contains("never started"));
        let three = j.append("c", &job("three", Status::Passed)).unwrap();
        assert_eq!(j.read(three).unwrap().name, "three");
        assert_eq!(j.index().unwrap().at.len(), 3);
        drop(j);
        // A new run starts empty.
        let j = Journal::open(&p, false).unwrap();
        assert!(j.index().unwrap().at.is_empty());
    }

    /// Two runs of one job set in one folder: the second cannot take (and empty) the
    /// journal the first writes and reads back; once the first is over, it can.
    #[test]
    fn a_journal_in_use_is_neither_taken_nor_pruned() {
        let d = tempfile::tempdir().unwrap();
        let p = path_of(d.path(), "set");
        let mut first = Journal::open(&p, false).unwrap();
        let one = first.append("a", &job("one", Status::Passed)).unwrap();
        let e = Journal::open(&p, false)
            .err()
            .expect("the journal is in use");
        assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy, "{e}");
        assert!(Journal::open(&p, true).is_err());
        // Nor does another job set's run prune it, however many journals are newer.
        for i in 0..KEEP_OTHERS + 2 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            drop(Journal::open(&path_of(d.path(), &format!("other-{i}")), false).unwrap());
        }
        let newest = path_of(d.path(), "newest");
        assert_eq!(prune(&newest), 2, "the two oldest free journals go");
        assert!(p.exists());
        assert_eq!(first.read(one).unwrap().name, "one");
        drop(first);
        let j = Journal::open(&p, true).unwrap();
        assert_eq!(j.index().unwrap().at.len(), 1);
    }

    #[test]
    fn reports_written_from_the_journal_are_those_of_the_jobs_in_memory() {
        use crate::report::{json, junit, Streamed};
        let d = tempfile::tempdir().unwrap();
        let mut plan = vec![];
        let mut reports = vec![];
        for (i, st) in [
            Status::Passed,
            Status::Failed,
            Status::Skipped,
            Status::Passed,
        ]
        .into_iter()
        .enumerate()
        {
            let mut j = PlannedJob::adhoc(
                crate::spec::types::Lang::Bash,
                format!("echo {i}"),
                vec![],
                std::time::Duration::from_secs(1),
                false,
            );
            j.id = i;
            j.name = format!("j{i}");
            j.group = Some(format!("g{}", i % 2));
            let mut r = job(&j.name, st);
            r.group.clone_from(&j.group);
            r.stdout = format!("out {i}\n").repeat(100);
            plan.push(j);
            reports.push(r);
        }
        let mut results = Results::new(Journal::open(&d.path().join("j"), false).unwrap(), &plan);
        // Finishing in another order than the plan's.
        for i in [3, 1, 0, 2] {
            results.add(&plan[i], true, &reports[i]).unwrap();
        }
        let t = chrono::Utc::now();
        let written = results.jobs();
        let streamed = json::report_of(&results.tally, t, 5, Streamed(&written), Some(&[1]));
        let in_memory = json::build_report(t, 5, reports.clone(), Some(&[1]));
        assert_eq!(json::to_json(&streamed), json::to_json(&in_memory));
        assert_eq!(junit::to_junit(&streamed), junit::to_junit(&in_memory));
        assert_eq!(results.into_reports().unwrap(), reports);
    }

    #[test]
    fn old_journals_of_other_job_sets_are_pruned() {
        let d = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        for i in 0..KEEP_OTHERS + 3 {
            let p = path_of(d.path(), &format!("set{i}"));
            drop(Journal::open(&p, false).unwrap());
            // set0 is the oldest.
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(now - std::time::Duration::from_secs(1000 - i as u64))
                .unwrap();
        }
        std::fs::write(d.path().join("journal/notes.txt"), "mine").unwrap();
        let current = path_of(d.path(), "set0");
        // 18 others: the 2 oldest go.
        assert_eq!(prune(&current), 2);
        assert!(current.exists(), "the run's own journal stays, however old");
        for gone in 1..=2 {
            assert!(!path_of(d.path(), &format!("set{gone}")).exists());
        }
        assert!(path_of(d.path(), "set3").exists());
        assert!(d.path().join("journal/notes.txt").exists());
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
