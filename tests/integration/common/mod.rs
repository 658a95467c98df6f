//! Helpers shared by the integration tests: the built binary, scratch directories holding
//! job files, `run --json -` reports parsed into jobs by name, and the rule deciding which
//! backends the backend-generic suites (tests/integration/conformance.rs, tests/integration/adversarial.rs) run on.
//!
//! Each test binary includes this module with `mod common;` (`#[allow(dead_code)]` where it
//! uses only part of it).
//!
//! # Which backends are tested
//!
//! [`backends()`]: `native`, plus each container engine that answers and has the default
//! image `llm-sandbox/bash:latest` ([`engine_available`]): docker and podman. A missing
//! engine is skipped with a loud `SKIPPED:` line on
//! stderr, or fails the test under `CI=true` / `LLM_SANDBOX_REQUIRE_ENGINES=1`.
//! `LLM_SANDBOX_TEST_BACKENDS=native,docker` (comma- or space-separated) names the backends
//! explicitly instead; a named engine that is unavailable then fails the test.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Says that a test (or a part of it) was skipped, and why: a `SKIPPED: ...` line on
/// stderr, and a line in the file `LLM_SANDBOX_SKIP_LOG` names (scripts/test prints them
/// all at the end: nextest shows no output of a passing test).
pub fn skipped(why: impl std::fmt::Display) {
    eprintln!("SKIPPED: {why}");
    if let Some(log) = std::env::var_os("LLM_SANDBOX_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{why}");
        }
    }
}

/// Whether `program` is on this host's PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_llm-sandbox");

/// The image every container engine must have for its tests to run.
pub const DEFAULT_IMAGE: &str = "llm-sandbox/bash:latest";

/// The container engines [`engine_available`] knows.
pub const ENGINES: &[&str] = &["docker", "podman"];

/// Every backend name of the job format.
pub const ALL_BACKENDS: &[&str] = &["native", "docker", "podman", "kubernetes"];

/// The binary, with a clean-ish environment (no colours, no log noise). Use
/// `assert_cmd::prelude::*` for `.assert()` on it.
pub fn bin() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("RUST_LOG").env("NO_COLOR", "1");
    c
}

/// Library tests (tests/integration/session.rs) are not the llm-sandbox binary: point the library's
/// sandbox helper at it.
pub fn use_binary_as_helper() {
    std::env::set_var("LLM_SANDBOX_HELPER", BIN);
}

/// Why a missing requirement fails instead of being skipped: `Some("CI=true")` or
/// `Some("LLM_SANDBOX_REQUIRE_ENGINES=1")`, else `None`.
pub fn strict() -> Option<&'static str> {
    if std::env::var("CI").as_deref() == Ok("true") {
        Some("CI=true")
    } else if std::env::var("LLM_SANDBOX_REQUIRE_ENGINES").as_deref() == Ok("1") {
        Some("LLM_SANDBOX_REQUIRE_ENGINES=1")
    } else {
        None
    }
}

// ---- scratch directories and runs -------------------------------------------------------

/// A temporary directory holding job files; runs use it as their working directory so
/// that nothing (artifacts, ...) lands in the repository.
pub struct Scratch {
    dir: TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the jobs of `toml` (written as `jobs.toml`) in this process, through the
    /// library's runner (one job at a time), and returns their reports.
    pub async fn run_in_process(&self, toml: &str) -> Vec<llm_sandbox::JobReport> {
        self.write("jobs.toml", toml);
        let plan = llm_sandbox::plan::plan_paths(
            &[self.path().join("jobs.toml")],
            &llm_sandbox::plan::PlanOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let opts = llm_sandbox::run::RunOptions {
            jobs: 1,
            fail_fast: false,
            artifacts_dir: self.path().join("artifacts"),
            fresh_containers: false,
            backend_jobs: vec![],
            retries: 0,
        };
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        llm_sandbox::run::run_plan(&plan, &opts, tx, Default::default())
            .await
            .expect("the run")
    }

    /// Writes `content` to `rel` (parent directories created); returns the full path.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    /// The binary, working in this directory.
    pub fn cmd(&self) -> Command {
        let mut c = bin();
        c.current_dir(self.path());
        c
    }

    /// Runs `run --json - --no-progress <args>` here.
    pub fn run_json(&self, args: &[&str]) -> Run {
        run_report(
            self.cmd()
                .arg("run")
                .args(["--json", "-", "--no-progress"])
                .args(args),
        )
    }
}

/// Writes `yaml` as `jobs.yaml` in a fresh scratch directory and runs
/// `run --json - --no-progress <args> jobs.yaml` there. The directory (artifacts...) lives
/// as long as the returned [`Scratch`].
pub fn run_yaml(yaml: &str, args: &[&str]) -> (Scratch, Run) {
    let s = Scratch::new();
    s.write("jobs.yaml", yaml);
    let mut all: Vec<&str> = args.to_vec();
    all.push("jobs.yaml");
    let r = s.run_json(&all);
    (s, r)
}

/// What one `run --json -` returned.
pub struct Run {
    pub code: i32,
    pub report: Value,
    pub stderr: String,
    pub wall: Duration,
}

/// Runs `yaml` (written as `jobs.yaml` in `dir`) on `backend` one job after another in one
/// concurrency slot (`-j 1`, so each job follows the one before in the same sandbox server
/// or warm container), with `extra` arguments; the JSON report.
pub fn run_one_slot(backend: &str, yaml: &str, dir: &Scratch, extra: &[&str]) -> Run {
    dir.write("jobs.yaml", yaml);
    run_report(
        dir.cmd()
            .args(["run", "--no-progress", "-j", "1", "--backend", backend])
            .args(extra)
            .args(["--json", "-", "jobs.yaml"]),
    )
}

/// Runs `cmd` (a `run ... --json -` command line) and parses the report on its stdout.
/// Panics, with stdout and stderr, when stdout is not one JSON report.
pub fn run_report(cmd: &mut Command) -> Run {
    let t0 = Instant::now();
    let out = cmd.output().expect("the llm-sandbox binary runs");
    let wall = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not one JSON report ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    Run {
        code: out.status.code().unwrap_or(-1),
        report,
        stderr,
        wall,
    }
}

impl Run {
    /// The report's `jobs[]`.
    pub fn job_list(&self) -> &[Value] {
        self.report["jobs"].as_array().expect("jobs[]")
    }

    /// The job called `name`; panics with the whole report when there is none.
    pub fn job(&self, name: &str) -> &Value {
        self.job_list()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap_or_else(|| panic!("no job {name:?} in the report:\n{}", self.pretty()))
    }

    /// The jobs by name.
    pub fn jobs(&self) -> HashMap<String, Value> {
        self.job_list()
            .iter()
            .map(|j| (j["name"].as_str().unwrap().to_string(), j.clone()))
            .collect()
    }

    /// The job names, in report order.
    pub fn names(&self) -> Vec<String> {
        self.job_list()
            .iter()
            .map(|j| j["name"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn summary(&self, key: &str) -> u64 {
        self.report["summary"][key].as_u64().expect("summary count")
    }

    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(&self.report).unwrap()
    }

    /// Asserts the status of job `name`; returns the job.
    pub fn assert_status(&self, name: &str, status: &str) -> &Value {
        let j = self.job(name);
        assert_eq!(
            j["status"],
            status,
            "job {name}: wrong status\n{}\nstderr of the run:\n{}",
            serde_json::to_string_pretty(j).unwrap(),
            self.stderr
        );
        j
    }
}

// ---- accessors of one job of a report ----------------------------------------------------

/// A string field of a job (`""` when absent or null).
pub fn field<'a>(j: &'a Value, key: &str) -> &'a str {
    j[key].as_str().unwrap_or("")
}

pub fn status(j: &Value) -> &str {
    field(j, "status")
}

/// stdout, stderr and message of a job, one after the other (for "contains" checks).
pub fn text(j: &Value) -> String {
    format!(
        "{}\n{}\n{}",
        field(j, "stdout"),
        field(j, "stderr"),
        field(j, "message")
    )
}

/// The check of kind `kind` of a job; panics when it has none.
pub fn check<'a>(j: &'a Value, kind: &str) -> &'a Value {
    j["checks"]
        .as_array()
        .expect("checks[]")
        .iter()
        .find(|c| c["kind"] == kind)
        .unwrap_or_else(|| panic!("no check {kind:?} in {j:#}"))
}

/// The kinds of the failed checks of a job.
pub fn failed_checks(j: &Value) -> Vec<String> {
    j["checks"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["passed"] == false)
                .map(|c| c["kind"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

// ---- container engines and the backends under test ---------------------------------------

/// The backends the backend-generic suites run on: `LLM_SANDBOX_TEST_BACKENDS` when set,
/// else `native`, then docker and podman when [`engine_available`].
pub fn backends() -> Vec<&'static str> {
    if let Some(explicit) = explicit_backends() {
        return explicit;
    }
    let mut v = vec!["native"];
    if engine_available("docker") {
        v.push("docker");
    }
    if engine_available("podman") {
        v.push("podman");
    }
    v
}

/// Whether `backend` is one of [`backends()`], probing no other engine than its own (so
/// that, under `CI=true`, a missing docker fails the docker tests and not the native ones).
pub fn backend_selected(backend: &str) -> bool {
    if let Some(explicit) = explicit_backends() {
        return explicit.contains(&backend);
    }
    match backend {
        "native" => true,
        "docker" => engine_available("docker"),
        "podman" => engine_available("podman"),
        // Against examples/fake-apiserver (see [`FakeCluster`]), which needs nothing else.
        "kubernetes" => true,
        _ => false,
    }
}

// ---- the Kubernetes backend's fake cluster -----------------------------------------------

/// A running `examples/fake-apiserver` (killed when dropped) and the kubeconfig it wrote.
pub struct FakeCluster {
    child: std::process::Child,
    _dir: TempDir,
    pub kubeconfig: PathBuf,
    pub url: String,
}

/// The fake API server's binary, next to the binary under test (`cargo nextest run` and
/// `cargo test` build the examples with the tests; when it is missing it is built here).
pub fn fake_apiserver_bin() -> PathBuf {
    let p = Path::new(BIN)
        .parent()
        .expect("the binary's directory")
        .join("examples/fake-apiserver");
    if !p.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "--example", "fake-apiserver"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "cannot build examples/fake-apiserver (cargo build --example fake-apiserver)"
        );
    }
    p
}

impl FakeCluster {
    /// Starts the fake API server on a free port, as a user would:
    /// `fake-apiserver --port 0 --kubeconfig FILE`.
    pub fn start() -> FakeCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let mut child = Command::new(fake_apiserver_bin())
            .args(["--port", "0", "--kubeconfig"])
            .arg(&kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("examples/fake-apiserver starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let url = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => {
                    if let Some(u) = l.strip_prefix("fake-apiserver listening on ") {
                        break u.trim().to_string();
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!("examples/fake-apiserver did not say it listens: {e}");
                }
            }
        };
        assert!(
            kubeconfig.is_file(),
            "the kubeconfig is written before the URL is printed"
        );
        FakeCluster {
            child,
            _dir: dir,
            kubeconfig,
            url,
        }
    }

    /// GET `path` on the server (plain HTTP/1.0): (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let addr = self.url.trim_start_matches("http://").to_string();
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the fake API server");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (code, body)
    }

    /// The names of the pods in every namespace.
    pub fn pod_names(&self) -> Vec<String> {
        let (code, body) = self.get("/api/v1/pods");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("a PodList");
        v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        // SIGTERM: it deletes its pods and unmounts what it mounted.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `LLM_SANDBOX_TEST_BACKENDS`, parsed and checked: every named engine must be usable.
fn explicit_backends() -> Option<Vec<&'static str>> {
    let raw = std::env::var("LLM_SANDBOX_TEST_BACKENDS").ok()?;
    let mut v: Vec<&'static str> = Vec::new();
    for name in raw
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let Some(known) = ALL_BACKENDS.iter().find(|b| **b == name) else {
            panic!(
                "LLM_SANDBOX_TEST_BACKENDS={raw:?}: unknown backend {name:?} (known: {})",
                ALL_BACKENDS.join(", ")
            );
        };
        if ENGINES.contains(known) {
            if let Err(why) = probe(known) {
                panic!(
                    "LLM_SANDBOX_TEST_BACKENDS names {known} but {why}: run scripts/engines {known} && scripts/build-images {known}"
                );
            }
        }
        if !v.contains(known) {
            v.push(known);
        }
    }
    if v.is_empty() {
        return None;
    }
    Some(v)
}

/// Whether `engine` (`docker` or `podman`) answers and has [`DEFAULT_IMAGE`]. When it does
/// not: panics under `CI=true` or `LLM_SANDBOX_REQUIRE_ENGINES=1`, else prints
/// `SKIPPED: <engine> tests: <why>` to stderr and returns false. Decided once per process.
pub fn engine_available(engine: &str) -> bool {
    static ANSWERS: [OnceLock<bool>; 2] = [OnceLock::new(), OnceLock::new()];
    let i = engine_index(engine);
    *ANSWERS[i].get_or_init(|| match probe(ENGINES[i]) {
        Ok(()) => true,
        Err(why) => {
            if let Some(flag) = strict() {
                panic!(
                    "{engine} is required ({flag}) but {why}: run scripts/engines {engine} && scripts/build-images {engine}"
                );
            }
            skipped(format!("{engine} tests: {why} (run scripts/engines {engine} && scripts/build-images {engine}; CI=true makes this a failure)"
            ));
            false
        }
    })
}

fn engine_index(engine: &str) -> usize {
    ENGINES
        .iter()
        .position(|e| *e == engine)
        .unwrap_or_else(|| panic!("unknown container engine {engine:?} (known: {ENGINES:?})"))
}

/// Whether the engine answers and has the default image; `Err` says why not. Once per
/// engine per process.
fn probe(engine: &str) -> Result<(), String> {
    static PROBES: [OnceLock<Result<(), String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let i = engine_index(engine);
    PROBES[i]
        .get_or_init(|| match ENGINES[i] {
            "docker" => probe_docker(),
            _ => probe_podman(),
        })
        .clone()
}

/// How long an engine may take to answer one question.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(20);

fn probe_docker() -> Result<(), String> {
    let out = output_within(
        Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]),
        ENGINE_TIMEOUT,
    )
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "the docker CLI is not installed".to_string(),
        _ => format!("`docker version` did not run: {e}"),
    })?;
    if !out.status.success() || out.stdout.trim_ascii().is_empty() {
        return Err(format!(
            "the docker daemon does not answer (`docker version`: {})",
            last_line(&out.stderr)
        ));
    }
    let out = output_within(
        Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", DEFAULT_IMAGE]),
        ENGINE_TIMEOUT,
    )
    .map_err(|e| format!("`docker image inspect` did not run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the image {DEFAULT_IMAGE} is missing ({})",
            last_line(&out.stderr)
        ));
    }
    Ok(())
}

/// Podman's Docker-compatible API service (`podman system service`, as scripts/engines
/// starts it): `$CONTAINER_HOST` (unix://), else `/run/podman/podman.sock` for root, else
/// `$XDG_RUNTIME_DIR/podman/podman.sock`.
pub fn podman_socket() -> PathBuf {
    if let Ok(h) = std::env::var("CONTAINER_HOST") {
        if let Some(p) = h.strip_prefix("unix://") {
            return PathBuf::from(p);
        }
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/podman/podman.sock");
    }
    let runtime = std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| format!("/run/user/{uid}"));
    Path::new(&runtime).join("podman/podman.sock")
}

fn probe_podman() -> Result<(), String> {
    let sock = podman_socket();
    let where_ = format!("unix://{}", sock.display());
    match http_get(&sock, "/_ping") {
        Ok((200, _)) => {}
        Ok((code, body)) => {
            return Err(format!(
                "the podman API service on {where_} answers /_ping with HTTP {code}: {}",
                body.trim()
            ))
        }
        Err(e) => {
            return Err(format!(
                "the podman API service does not answer on {where_} ({e})"
            ))
        }
    }
    match http_get(&sock, &format!("/images/{DEFAULT_IMAGE}/json")) {
        Ok((200, _)) => Ok(()),
        Ok((404, _)) => Err(format!("the image {DEFAULT_IMAGE} is missing in podman")),
        Ok((code, body)) => Err(format!(
            "podman answers HTTP {code} for the image {DEFAULT_IMAGE}: {}",
            body.trim()
        )),
        Err(e) => Err(format!("podman on {where_}: {e}")),
    }
}

/// One HTTP/1.0 GET over a unix socket: (status code, body).
fn http_get(sock: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(ENGINE_TIMEOUT))?;
    s.set_write_timeout(Some(ENGINE_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: d\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {resp:.200}")))?;
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

/// Runs `cmd` with stdout and stderr captured, killing it after `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            // The child is ours and has not been reaped (its waiter is still waiting).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(std::io::Error::other(format!(
                "no answer within {}s",
                limit.as_secs()
            )))
        }
    }
}

fn last_line(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}

/// `<engine> <args>` → stdout (panics when the CLI fails).
pub fn engine_cli(engine: &str, args: &[&str]) -> String {
    let out = Command::new(engine)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{engine} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{engine} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The containers a runner process (by pid) left on an engine, any state (they are named
/// after it: `ls-<pid>-...`), one name per line.
pub fn containers_on(engine: &str, pid: u32) -> String {
    let out = Command::new(engine)
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("name=ls-{pid}-"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Containers, images or volumes of llm-sandbox on `engine`:
/// `(name or id, owner label, kind label, keep label)` of every labelled object of a kind
/// (`container`, `image`, `volume`), read with `<engine> <kind> inspect`.
pub fn engine_objects(engine: &str, what: &str) -> Vec<(String, String, String, String)> {
    let list: &[&str] = match what {
        "container" => &["ps", "-a", "-q", "--filter", "label=llm-sandbox"],
        "image" => &["images", "-q", "--filter", "label=llm-sandbox"],
        _ => &["volume", "ls", "-q", "--filter", "label=llm-sandbox"],
    };
    // Podman's filtered listing fails when an object it is filtering is removed meanwhile
    // (by a concurrent test): "no such volume". Listed again then.
    let mut tries = 0;
    let ids = loop {
        let out = Command::new(engine)
            .args(list)
            .output()
            .unwrap_or_else(|e| panic!("{engine} {list:?}: {e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        tries += 1;
        assert!(
            tries < 5 && err.contains("no such"),
            "{engine} {list:?}: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return vec![];
    }
    let (name, labels) = match what {
        "volume" => ("{{.Name}}", ".Labels"),
        _ => ("{{.Id}}", ".Config.Labels"),
    };
    let fmt = format!(
        "{name}|{{{{index {labels} \"llm-sandbox.owner\"}}}}|{{{{index {labels} \"llm-sandbox.kind\"}}}}|{{{{index {labels} \"llm-sandbox.keep\"}}}}"
    );
    // One inspect per object: others (concurrent tests) may remove theirs meanwhile, and
    // an object gone by now is not left over.
    ids.iter()
        .filter_map(|id| {
            let out = Command::new(engine)
                .args([what, "inspect", "--format", &fmt, id])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.split('|').map(|x| x.replace("<no value>", ""));
            let mut next = || f.next().unwrap_or_default();
            (next(), next(), next(), next())
        })
        .collect()
}

// ---- Python venvs of tests (made by scripts/test) ------------------------------------------

/// The python of the venv `target/<venv>` (or `$<env>`) when `import <module>` works in
/// it; else None after a SKIPPED notice, or a failure under CI=true /
/// LLM_SANDBOX_REQUIRE_ENGINES=1. `what` names the package, `requirements` the file
/// scripts/test installs from.
pub fn venv_python(
    env: &str,
    venv: &str,
    module: &str,
    what: &str,
    requirements: &str,
) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let py = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join(venv).join("bin/python"));
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let why = format!(
        "{what} is not installed at {} (scripts/test creates it: python3 -m venv target/{venv} && target/{venv}/bin/pip install -r {requirements})",
        py.display()
    );
    if let Some(strict) = strict() {
        panic!("{why} ({strict} requires it)");
    }
    skipped(why);
    None
}
