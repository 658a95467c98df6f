//! End-to-end tests of `llm-sandbox watch`: they start the real binary on job files in a
//! scratch directory (native backend), edit files, and observe which jobs each round ran
//! (their lines between `[watch] round N at` and `[watch] round N done`) and their results
//! in `--json FILE` (rewritten after every round with the latest result of every job). Waits poll with generous timeouts; the
//! only fixed waits check that something does *not* happen.

use crate::common;

use common::Scratch;
use serde_json::Value;
use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long anything expected may take (2 busy cores running other tests).
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait to be sure that no further round starts (the debounce is 100 ms).
const NO_MORE: Duration = Duration::from_millis(1500);

/// A running `llm-sandbox watch`.
struct Watch {
    child: Child,
    stderr: Arc<Mutex<String>>,
    json: std::path::PathBuf,
}

impl Watch {
    /// `watch --no-clear --no-progress --json report.json ARGS` in the scratch directory.
    fn start(s: &Scratch, args: &[&str]) -> Watch {
        let mut child = s
            .cmd()
            .args([
                "watch",
                "--no-clear",
                "--no-progress",
                "--json",
                "report.json",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the llm-sandbox binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Watch {
            child,
            stderr,
            json: s.path().join("report.json"),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr satisfies `ok`; panics with stderr after [`TIMEOUT`].
    fn wait_for(&mut self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let err = self.stderr();
            if ok(&err) {
                return err;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the reader thread take the rest.
                std::thread::sleep(Duration::from_millis(100));
                panic!("watch exited ({st}) waiting for {what}:\n{}", self.stderr());
            }
            assert!(
                t0.elapsed() < TIMEOUT,
                "timed out waiting for {what}:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for round `n` to finish; returns the jobs it ran: those of the JSON report
    /// (which holds the latest result of every watched job) whose line the round printed,
    /// as `{ jobs, summary: { total } }`.
    fn round(&mut self, n: usize) -> Value {
        let report = self.round_report(n);
        let err = self.stderr();
        let start = err
            .find(&format!("[watch] round {n} at"))
            .unwrap_or_else(|| panic!("no round {n} header:\n{err}"));
        let done = err[start..].find("done").map_or(err.len(), |i| start + i);
        let printed = &err[start..done];
        let ran: Vec<Value> = report["jobs"]
            .as_array()
            .expect("jobs[]")
            .iter()
            .filter(|j| {
                let name = j["name"].as_str().unwrap();
                printed
                    .lines()
                    .any(|l| l.contains(" [") && l.trim_end().ends_with(&format!(" {name}")))
            })
            .cloned()
            .collect();
        serde_json::json!({ "summary": { "total": ran.len() }, "jobs": ran })
    }

    /// Waits for round `n` to finish; returns the JSON report written after it.
    fn round_report(&mut self, n: usize) -> Value {
        let marker = format!("[watch] round {n} done");
        self.wait_for(&marker, |e| e.contains(&marker));
        let text = std::fs::read_to_string(&self.json).expect("report.json");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("report.json: {e}\n{text}"))
    }

    /// The number of rounds finished so far.
    fn rounds(&self) -> usize {
        self.stderr().matches("[watch] round ").count() / 2
    }

    /// Asserts that no round after `n` starts for a while.
    fn assert_no_round_after(&self, n: usize) {
        std::thread::sleep(NO_MORE);
        let err = self.stderr();
        assert!(
            !err.contains(&format!("[watch] round {} ", n + 1)),
            "expected no round after round {n}:\n{err}"
        );
    }

    fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("watch exited ({st}):\n{}", self.stderr());
        }
    }

    /// SIGINT; waits for the exit. Returns the exit code and how long it took.
    fn interrupt(&mut self) -> (i32, Duration) {
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code().unwrap_or(-1), t0.elapsed());
            }
            assert!(
                t0.elapsed() < TIMEOUT,
                "watch did not stop after SIGINT:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The names of a report's jobs, in report order.
fn names(r: &Value) -> Vec<&str> {
    r["jobs"]
        .as_array()
        .expect("jobs[]")
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect()
}

fn job<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {r:#}"))
}

/// Saves `content` to `rel` the way many editors do: a temporary file renamed over it.
fn save_atomically(s: &Scratch, rel: &str, content: &str) {
    let tmp = s.path().join(format!("{rel}.tmp~"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, s.path().join(rel)).unwrap();
}

const TWO_JOBS: &str = r#"
[defaults]
lang = "bash"

[[jobs]]
name = "job-a"
files = ["a.txt"]
code = "cat a.txt"

[[jobs]]
name = "job-b"
files = ["b.txt"]
code = "cat b.txt"
"#;

fn two_jobs() -> Scratch {
    let s = Scratch::new();
    s.write("jobs.toml", TWO_JOBS);
    s.write("a.txt", "a1\n");
    s.write("b.txt", "b1\n");
    s
}

#[test]
fn an_input_change_reruns_only_its_job_with_the_new_content() {
    let s = two_jobs();
    let mut w = Watch::start(&s, &["jobs.toml"]);
    let r = w.round(1);
    assert_eq!(names(&r), ["job-a", "job-b"], "first a full run");
    assert_eq!(job(&r, "job-a")["stdout"], "a1\n");

    s.write("a.txt", "a2\n");
    let r = w.round(2);
    assert_eq!(names(&r), ["job-a"], "only the job of a.txt");
    assert_eq!(job(&r, "job-a")["stdout"], "a2\n");
    assert_eq!(r["summary"]["total"], 1);

    save_atomically(&s, "b.txt", "b2\n");
    let r = w.round(3);
    assert_eq!(names(&r), ["job-b"], "an atomic save (rename) counts too");
    assert_eq!(job(&r, "job-b")["stdout"], "b2\n");
    // The report holds every watched job: job-a's result of round 2, job-b's of round 3.
    let all = w.round_report(3);
    assert_eq!(names(&all), ["job-a", "job-b"]);
    assert_eq!(all["summary"]["total"], 2);
    assert_eq!(job(&all, "job-a")["stdout"], "a2\n");
    assert_eq!(job(&all, "job-b")["stdout"], "b2\n");
    let err = w.stderr();
    assert!(err.contains("changed: b.txt"), "{err}");
    assert!(
        err.contains("(1 ran, 1 kept its last result)"),
        "the summary says the other job kept its result:\n{err}"
    );
    w.assert_running();
}

#[test]
fn polling_reruns_the_same_jobs_and_ignores_its_own_reports() {
    let s = two_jobs();
    let mut w = Watch::start(&s, &["--poll=100ms", "jobs.toml"]);
    w.round(1);
    s.write("b.txt", "b2\n");
    let r = w.round(2);
    assert_eq!(names(&r), ["job-b"]);
    assert_eq!(job(&r, "job-b")["stdout"], "b2\n");
    // Writing report.json changes the folder's mtime: no reason for another round.
    w.assert_no_round_after(2);
}

#[test]
fn a_burst_of_saves_is_one_round_and_unrelated_files_are_ignored() {
    let s = two_jobs();
    let mut w = Watch::start(&s, &["jobs.toml"]);
    w.round(1);
    for i in 1..=5 {
        if i % 2 == 0 {
            save_atomically(&s, "a.txt", &format!("save {i}\n"));
        } else {
            s.write("a.txt", &format!("save {i}\n"));
        }
    }
    let r = w.round(2);
    assert_eq!(names(&r), ["job-a"]);
    assert_eq!(job(&r, "job-a")["stdout"], "save 5\n");
    w.assert_no_round_after(2);
    assert_eq!(w.rounds(), 2, "{}", w.stderr());

    // Files no job reads, and the report the watch writes itself, start nothing.
    s.write("notes.txt", "x");
    s.write("a.txt.swp", "x");
    w.assert_no_round_after(2);
    w.assert_running();
}

#[test]
fn changes_during_a_round_start_exactly_one_more_round() {
    let s = Scratch::new();
    s.write(
        "jobs.toml",
        r#"
[[jobs]]
name = "slow"
lang = "bash"
files = ["in.txt"]
code = "sleep 1.5; cat in.txt"
"#,
    );
    s.write("in.txt", "v0\n");
    let mut w = Watch::start(&s, &["jobs.toml"]);
    w.round(1);
    s.write("in.txt", "v1\n");
    // Round 2 is running (its job sleeps): change the input a few times meanwhile.
    w.wait_for("round 2 to start", |e| e.contains("[watch] round 2 at"));
    std::thread::sleep(Duration::from_millis(300));
    for i in 2..=4 {
        s.write("in.txt", &format!("v{i}\n"));
        std::thread::sleep(Duration::from_millis(30));
    }
    w.round(2);
    let r = w.round(3);
    assert_eq!(job(&r, "slow")["stdout"], "v4\n");
    w.assert_no_round_after(3);
}

#[test]
fn an_invalid_job_file_is_reported_and_waited_on_and_fixing_it_reruns_its_jobs() {
    let s = two_jobs();
    let mut w = Watch::start(&s, &["jobs.toml"]);
    w.round(1);
    s.write(
        "jobs.toml",
        &TWO_JOBS.replace("name = \"job-b\"", "name = \"job-b"),
    );
    let err = w.wait_for("the error", |e| e.contains("[watch] round 2 done"));
    assert!(
        err.contains("jobs.toml:11:14"),
        "the error names file and line:\n{err}"
    );
    assert!(err.contains("has errors"), "{err}");
    w.assert_running();
    // Nothing ran: the report is still the first round's.
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&w.json).unwrap()).unwrap();
    assert_eq!(names(&r), ["job-a", "job-b"]);

    s.write(
        "jobs.toml",
        &TWO_JOBS.replace("cat b.txt", "cat b.txt; echo fixed"),
    );
    let r = w.round(3);
    assert_eq!(names(&r), ["job-a", "job-b"], "the fixed file's jobs rerun");
    assert_eq!(job(&r, "job-b")["stdout"], "b1\nfixed\n");
    w.assert_running();
}

#[test]
fn job_file_edits_rerun_its_jobs_with_added_removed_and_renamed_ones() {
    let s = two_jobs();
    s.write(
        "other.toml",
        "[[jobs]]\nname = \"other\"\nlang = \"bash\"\ncode = \"echo other\"\n",
    );
    let mut w = Watch::start(&s, &["jobs.toml", "other.toml"]);
    assert_eq!(names(&w.round(1)), ["job-a", "job-b", "other"]);
    let edited = TWO_JOBS.replace("\"job-b\"", "\"job-b2\"")
        + "\n[[jobs]]\nname = \"job-c\"\ncode = \"echo c\"\n";
    s.write("jobs.toml", &edited);
    let r = w.round(2);
    assert_eq!(
        names(&r),
        ["job-a", "job-b2", "job-c"],
        "that file's jobs, renamed and added ones included; not the other file's"
    );
    let err = w.stderr();
    assert!(err.contains("job-b: removed"), "{err}");
    assert!(err.contains("job-c: new, passed"), "{err}");

    s.write(
        "jobs.toml",
        "[[jobs]]\nname = \"job-a\"\nlang = \"bash\"\nfiles = [\"a.txt\"]\ncode = \"cat a.txt\"\n",
    );
    let r = w.round(3);
    assert_eq!(names(&r), ["job-a"]);
    let err = w.stderr();
    assert!(err.contains("job-b2: removed; job-c: removed"), "{err}");
}

#[test]
fn templates_datasets_code_files_and_globs_rerun_the_jobs_that_use_them() {
    let s = Scratch::new();
    s.write(
        "jobs/main.toml",
        r#"
[defaults]
lang = "bash"

[[jobs]]
name = "from-template"
template_file = "../src/greet.j2"

[[jobs]]
name = "row-{{ index }}"
dataset = "../data/rows.jsonl"
template = "echo {{ row.x }}"

[[jobs]]
name = "from-code-file"
code_file = "../src/main.sh"

[[jobs]]
name = "globbed"
files = [{ src = "../data/*.txt", dest = "in" }]
code = "ls in | tr '\n' ' '"
"#,
    );
    s.write("src/greet.j2", "echo {{ 'hello' }}\n");
    s.write("src/main.sh", "echo one\n");
    s.write("data/rows.jsonl", "{\"x\": 1}\n{\"x\": 2}\n");
    s.write("data/a.txt", "a");
    let mut w = Watch::start(&s, &["jobs"]);
    assert_eq!(
        names(&w.round(1)),
        [
            "from-template",
            "row-0",
            "row-1",
            "from-code-file",
            "globbed"
        ]
    );

    s.write("src/greet.j2", "echo {{ 'bye' }}\n");
    let r = w.round(2);
    assert_eq!(names(&r), ["from-template"]);
    assert_eq!(job(&r, "from-template")["stdout"], "bye\n");

    s.write("data/rows.jsonl", "{\"x\": 1}\n{\"x\": 5}\n{\"x\": 6}\n");
    let r = w.round(3);
    assert_eq!(names(&r), ["row-0", "row-1", "row-2"]);
    assert_eq!(job(&r, "row-2")["stdout"], "6\n");

    s.write("src/main.sh", "echo two\n");
    let r = w.round(4);
    assert_eq!(names(&r), ["from-code-file"]);
    assert_eq!(job(&r, "from-code-file")["stdout"], "two\n");

    s.write("data/b.md", "not matched");
    s.write("data/b.txt", "b");
    let r = w.round(5);
    assert_eq!(names(&r), ["globbed"], "a new match of the glob");
    assert_eq!(job(&r, "globbed")["stdout"], "a.txt b.txt ");
}

#[test]
fn a_directory_argument_picks_up_new_job_files_and_drops_deleted_ones() {
    let s = Scratch::new();
    s.write(
        "jobs/one.toml",
        "[[jobs]]\nname = \"one\"\nlang = \"bash\"\ncode = \"echo 1\"\n",
    );
    let mut w = Watch::start(&s, &["jobs"]);
    assert_eq!(names(&w.round(1)), ["one"]);
    s.write(
        "jobs/deeper/two.yaml",
        "jobs:\n  - name: two\n    lang: bash\n    code: echo 2\n",
    );
    let r = w.round(2);
    assert_eq!(names(&r), ["two"], "only the new file's jobs");
    assert_eq!(job(&r, "two")["stdout"], "2\n");
    std::fs::remove_file(s.path().join("jobs/deeper/two.yaml")).unwrap();
    w.wait_for("the removal", |e| e.contains("two: removed"));
    w.assert_running();
}

#[test]
fn ctrl_c_stops_at_once_and_exits_0() {
    let s = Scratch::new();
    s.write(
        "jobs.toml",
        "[[jobs]]\nname = \"quick\"\nlang = \"bash\"\nfiles = [\"in.txt\"]\ncode = \"cat in.txt; if grep -q slow in.txt; then sleep 987; fi\"\n",
    );
    s.write("in.txt", "quick\n");
    // Idle: waiting for changes.
    let mut w = Watch::start(&s, &["jobs.toml"]);
    w.round(1);
    let (code, took) = w.interrupt();
    assert_eq!(code, 0, "{}", w.stderr());
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // In the middle of a round: the sandbox is torn down.
    let mut w = Watch::start(&s, &["jobs.toml"]);
    w.round(1);
    s.write("in.txt", "slow\n");
    w.wait_for("round 2 to start", |e| e.contains("[watch] round 2 at"));
    std::thread::sleep(Duration::from_millis(500));
    let (code, took) = w.interrupt();
    assert_eq!(code, 0, "{}", w.stderr());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("sleep 987"))
        .collect();
    assert!(left.is_empty(), "the job's processes survived: {left:?}");
}

#[test]
fn watching_needs_existing_paths() {
    let s = Scratch::new();
    let out = s.cmd().args(["watch", "missing.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.toml: no such file or directory"),
        "{err}"
    );
}
