//! The agent inside a warm container: the container's own process (`llm-sandbox __agent`
//! the container's init (pid 1), root, holding only the capabilities it needs; its stdin and
//! stdout are the container's attach stream) that runs job after job without a
//! `docker exec` each. Per job: unpack the inputs into `/sandbox`, run each step as the
//! sandbox user (uid 1000, no capabilities, no-new-privileges, its own session, CPU and
//! open-file rlimits) with capped output and a wall-clock timeout, then kill every process of the
//! sandbox user, read the cgroup's counters, pack the workdir when asked, empty every
//! writable place, remove System V IPC objects, and prove all of that before answering.
//!
//! Protocol: `READY` and a newline first, then one message per job on stdin
//! ([`AgentJob`]) and one per answer on stdout ([`AgentResult`]), framed by
//! [`super::frame`]: a JSON header and the bytes as raw, length-prefixed blobs.

use super::frame::{self, Framed};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

pub const SUBCOMMAND: &str = "__agent";
/// Set in the agent's environment (a JSON list of name/value pairs: a Python job's
/// variables) when its container's jobs ask for preloaded Python: the agent initialises the
/// interpreter with them when it starts, before any job has run in the container.
pub const PRELOAD_ENV: &str = "LLM_SANDBOX_AGENT_PRELOAD";
pub const READY: &str = "LLM-SANDBOX-AGENT-READY 1";
const UID: u32 = crate::backend::tarball::SANDBOX_UID as u32;
use crate::backend::clean::{self, Evidence, Root, WRITABLE};
use crate::sandbox::netview::NetView;

/// What a warm container's agent preloads ([`PRELOAD_ENV`]): the start-up variables of a
/// Python job and the modules to import ahead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPreload {
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentJob {
    /// A tar of the job's files (a blob).
    #[serde(skip)]
    pub inputs: Vec<u8>,
    pub steps: Vec<AgentStep>,
    /// The files of `/sandbox` to pack into the answer (artifacts, file checks; the
    /// selection of [`crate::sandbox::collect::select`]), up to `collect_cap` bytes.
    pub collect_globs: Vec<String>,
    pub collect_paths: Vec<String>,
    pub collect_cap: u64,
    /// Run `python3 -B FILE` run steps in the interpreter this agent initialised when it
    /// started ([`PRELOAD_ENV`]; README, "Preloaded Python").
    #[serde(default)]
    pub preload: bool,
    /// The modules the job's preload imports ahead (a job runs preloaded only in an
    /// interpreter that imported exactly those).
    #[serde(default)]
    pub preload_modules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStep {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Standard input (a blob).
    #[serde(skip)]
    pub stdin: Vec<u8>,
    pub timeout_ms: u64,
    /// Per stream.
    pub cap: u64,
    pub cpu_seconds: Option<u64>,
    pub open_files: u64,
    /// Stop after this step unless it exits 0 (compile steps).
    pub must_succeed: bool,
    /// Its stdin comes, and its output goes, as [`LivePiece`]s while it runs (a wired run
    /// step: an interactive case's program or interactor); `stdin` is then unused.
    #[serde(default)]
    pub live: bool,
}

/// A piece of a live step's traffic ([`AgentStep::live`]), framed between a job's request
/// and its answer. The runner sends `Stdin` pieces and then exactly one `StdinEnd` (when its
/// side closes, or once it got `End`); the agent sends the step's output as `Stdout` and
/// `Stderr` pieces (within the step's cap; an empty one when that stream ended: every
/// process holding it closed it) and exactly one `End` when the step is over (or
/// did not run: an earlier step failed), then reads up to `StdinEnd` before it answers, so
/// that nothing of a job is left in its input for the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LivePiece {
    pub kind: LiveKind,
    #[serde(skip)]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveKind {
    Stdin,
    StdinEnd,
    Stdout,
    Stderr,
    End,
}

impl Framed for LivePiece {
    fn take_blobs(&mut self) -> Vec<Vec<u8>> {
        vec![std::mem::take(&mut self.data)]
    }

    fn put_blobs(&mut self, blobs: Vec<Vec<u8>>) -> Result<(), crate::backend::Error> {
        let [data]: [Vec<u8>; 1] = blobs
            .try_into()
            .map_err(|_| crate::backend::Error::Protocol("a live piece has one blob".into()))?;
        self.data = data;
        Ok(())
    }
}

/// How much of a live step's stdin the agent holds for the program at most.
const LIVE_PENDING_MAX: usize = 1 << 20;

/// The largest live piece either side sends: a read of the program's output (64 KiB) or a
/// chunk of the runner's, and its header.
pub const LIVE_PIECE_MAX: u64 = 1 << 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStepResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub output_limit_hit: bool,
    /// Blobs.
    #[serde(skip)]
    pub stdout: Vec<u8>,
    #[serde(skip)]
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    pub spawn_error: Option<String>,
    /// What the step's processes used ([`crate::sandbox::usage`]).
    #[serde(default)]
    pub usage: Option<crate::sandbox::usage::Usage>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentResult {
    pub steps: Vec<AgentStepResult>,
    pub oom_kills: u64,
    pub pids_max_hits: u64,
    /// The packed files (a blob, the last one when present).
    #[serde(skip)]
    pub tar: Option<Vec<u8>>,
    /// Wanted files that were not packed, and why.
    #[serde(default)]
    pub refused: Vec<(String, String)>,
    /// Every trace of the job is gone (processes, files and their roots, IPC objects,
    /// sockets): [`clean::verdict`] said so.
    pub clean: bool,
    /// Why it is not clean.
    #[serde(default)]
    pub unclean: Option<String>,
    pub error: Option<String>,
}

impl Framed for AgentJob {
    /// The inputs, then each step's stdin.
    fn take_blobs(&mut self) -> Vec<Vec<u8>> {
        let mut blobs = vec![std::mem::take(&mut self.inputs)];
        blobs.extend(self.steps.iter_mut().map(|s| std::mem::take(&mut s.stdin)));
        blobs
    }

    fn put_blobs(&mut self, blobs: Vec<Vec<u8>>) -> Result<(), crate::backend::Error> {
        if blobs.len() != 1 + self.steps.len() {
            return Err(crate::backend::Error::Protocol(format!(
                "{} blobs for {} steps",
                blobs.len(),
                self.steps.len()
            )));
        }
        let mut it = blobs.into_iter();
        self.inputs = it.next().unwrap_or_default();
        for (s, b) in self.steps.iter_mut().zip(it) {
            s.stdin = b;
        }
        Ok(())
    }
}

impl Framed for AgentResult {
    /// Each step's stdout and stderr, then the packed files when there are any.
    fn take_blobs(&mut self) -> Vec<Vec<u8>> {
        let mut blobs = Vec::with_capacity(2 * self.steps.len() + 1);
        for s in &mut self.steps {
            blobs.push(std::mem::take(&mut s.stdout));
            blobs.push(std::mem::take(&mut s.stderr));
        }
        blobs.extend(self.tar.take());
        blobs
    }

    fn put_blobs(&mut self, blobs: Vec<Vec<u8>>) -> Result<(), crate::backend::Error> {
        let outputs = 2 * self.steps.len();
        if blobs.len() != outputs && blobs.len() != outputs + 1 {
            return Err(crate::backend::Error::Protocol(format!(
                "{} blobs for {} steps",
                blobs.len(),
                self.steps.len()
            )));
        }
        let mut it = blobs.into_iter();
        for s in &mut self.steps {
            s.stdout = it.next().unwrap_or_default();
            s.stderr = it.next().unwrap_or_default();
        }
        self.tar = it.next();
        Ok(())
    }
}

/// The largest request the agent reads: the job's files and stdin (the runner's own).
const REQUEST_MAX: u64 = 4 << 30;

/// Runs the agent when the binary was started as `llm-sandbox __agent`.
pub fn maybe_run_agent() {
    let mut args = std::env::args_os();
    let _ = args.next();
    if args.next().as_deref() == Some(std::ffi::OsStr::new(SUBCOMMAND)) {
        std::process::exit(main());
    }
}

fn main() -> i32 {
    // Freed memory is overwritten, requests and answers are not kept in buffers: a preloaded
    // Python step (which does not execve) must find no earlier job's data in the memory it
    // inherits from this process.
    crate::sandbox::pyembed::scrub_freed_memory(true);
    // The step's orphans become this agent's children, reaped (and measured) by it.
    // SAFETY: a plain prctl on this process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    // The writable places' roots as the container was made: what every job must find.
    let fresh = snapshot_roots();
    let _ = DEV_TIMES.set(times_of("/dev"));
    // Preloaded Python: initialised now, while the container is as its image made it. Its
    // start-up reads only the image's files (the root file system is read-only, the job's
    // variables never reach it, HOME is one nobody can create: pyembed), never a path a job
    // could have written, and it is never initialised again in this root process.
    if let Some(p) = std::env::var(PRELOAD_ENV)
        .ok()
        .and_then(|v| serde_json::from_str::<AgentPreload>(&v).ok())
    {
        let env = step_env(&p.env);
        if let Some(req) = crate::sandbox::pyembed::request_for(&env, &path_of(&env), &p.modules) {
            crate::sandbox::pyembed::preload(req);
        }
    }
    // What the container's network namespace shows when nothing ran in it yet: every job
    // must leave it so (a container with a network interface gets packets from outside,
    // so only its sockets are counted).
    let mut net = NetView::of(NetView::open()).filter(NetView::loopback_only);
    let mut out = std::mem::ManuallyDrop::new(unsafe_fd_file(1));
    if out.write_all(format!("{READY}\n").as_bytes()).is_err() {
        return 1;
    }
    let stdin = std::mem::ManuallyDrop::new(unsafe_fd_file(0));
    let mut input = frame::Blocking(&*stdin);
    loop {
        if crate::sandbox::pyembed::loaded() {
            crate::sandbox::pyembed::scrub_stack();
        }
        // Each part is read into a buffer of its own size, freed (and so overwritten)
        // after use.
        let result = match frame::block_on(frame::read::<AgentJob, _>(&mut input, REQUEST_MAX)) {
            Ok(Some(job)) => run_job(&job, &fresh, net.as_mut()),
            Ok(None) => return 0,
            Err(e) => AgentResult {
                error: Some(format!("bad request: {e}")),
                ..Default::default()
            },
        };
        let answer = match frame::encode(result) {
            Ok(a) => a,
            Err(_) => return 1,
        };
        if out.write_all(&answer).is_err() {
            return 1;
        }
        drop(answer);
    }
}

/// fd as a File (unbuffered).
fn unsafe_fd_file(fd: i32) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: one of this process's standard fds, wrapped without being closed (ManuallyDrop).
    unsafe { std::fs::File::from_raw_fd(fd) }
}

/// The environment a step's program gets: the container's (the image's ENV: PATH,
/// toolchain settings), as an exec would see it, then the step's own variables; sorted by
/// name, as `Command` passes them.
fn step_env(vars: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("LLM_SANDBOX_"))
        .collect();
    for (k, v) in vars {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

fn path_of(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.split(':').map(str::to_string).collect())
        .unwrap_or_default()
}

fn run_job(job: &AgentJob, fresh: &[Root], net: Option<&mut NetView>) -> AgentResult {
    let mut r = AgentResult::default();
    let mut live = job.steps.iter().any(|s| s.live).then(LiveIo::default);
    if let Err(e) = unpack(&job.inputs) {
        r.error = Some(format!("cannot unpack the job's files: {e}"));
    } else {
        let last = job.steps.len().saturating_sub(1);
        for (i, step) in job.steps.iter().enumerate() {
            let preload = (job.preload && i == last).then_some(&job.preload_modules[..]);
            let s = run_step(step, preload, live.as_mut().filter(|_| step.live));
            let stop = step.must_succeed && (s.exit_code != Some(0) || s.timed_out);
            let end = s.timed_out || s.output_limit_hit;
            r.steps.push(s);
            if stop || end {
                break;
            }
        }
    }
    if let Some(l) = &mut live {
        l.finish();
    }
    let killed = kill_all();
    let (oom, pids) = counters();
    r.oom_kills = oom;
    r.pids_max_hits = pids;
    let wanted = crate::sandbox::collect::select(
        Path::new("/sandbox"),
        &job.collect_globs,
        &job.collect_paths,
    );
    if (!job.collect_globs.is_empty() || !job.collect_paths.is_empty()) && r.error.is_none() {
        match pack(&wanted.files, job.collect_cap, &mut r.refused) {
            Ok(t) => r.tar = Some(t),
            Err(e) => r.error = Some(format!("cannot pack the job's files: {e}")),
        }
        r.refused.extend(wanted.refused);
    }
    let verdict = clean(killed, fresh, net);
    r.clean = verdict.is_ok();
    r.unclean = verdict.err();
    r
}

/// The agent's side of a live step ([`LivePiece`]): its stdin (the runner's pieces) read
/// raw from fd 0 between the job's request and its answer, its output written to fd 1.
#[derive(Default)]
struct LiveIo {
    /// Bytes read that do not make a whole piece yet.
    buf: Vec<u8>,
    /// The runner's `StdinEnd` came (or its stream ended).
    stdin_ended: bool,
    /// What one read of fd 0 fills (allocated at the first read, kept for the step).
    chunk: Vec<u8>,
}

impl LiveIo {
    /// Sends a piece to the runner; false when it cannot be written (the runner is gone).
    fn send(kind: LiveKind, data: &[u8]) -> bool {
        let Ok(frame) = frame::encode(LivePiece {
            kind,
            data: data.to_vec(),
        }) else {
            return false;
        };
        let mut out = std::mem::ManuallyDrop::new(unsafe_fd_file(1));
        out.write_all(&frame).is_ok()
    }

    /// One read of fd 0 (blocking: call it when there is something to read, or to wait);
    /// the bytes of `Stdin` pieces go to `feed`.
    fn read(&mut self, feed: &mut Vec<u8>) {
        if self.chunk.is_empty() {
            self.chunk = vec![0u8; 64 << 10];
        }
        let mut input = std::mem::ManuallyDrop::new(unsafe_fd_file(0));
        match input.read(&mut self.chunk) {
            Ok(0) | Err(_) => self.stdin_ended = true,
            Ok(k) => self.buf.extend_from_slice(&self.chunk[..k]),
        }
        loop {
            match frame::take::<LivePiece>(&mut self.buf, LIVE_PIECE_MAX) {
                Ok(Some(p)) if p.kind == LiveKind::Stdin => feed.extend_from_slice(&p.data),
                Ok(Some(p)) if p.kind == LiveKind::StdinEnd => self.stdin_ended = true,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    self.stdin_ended = true;
                    break;
                }
            }
        }
    }

    /// The step is over (or never ran): `End`, then the runner's pieces up to its
    /// `StdinEnd` (thrown away), so that the next request starts clean.
    fn finish(&mut self) {
        if !Self::send(LiveKind::End, &[]) {
            return;
        }
        let mut rest = Vec::new();
        while !self.stdin_ended {
            self.read(&mut rest);
            rest.clear();
        }
    }
}

/// Unpacks the inputs (from the host, trusted) into the empty workdir, owned by the user.
fn unpack(data: &[u8]) -> Result<(), String> {
    let mut ar = tar::Archive::new(data);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    ar.unpack("/sandbox").map_err(|e| e.to_string())
}

/// Runs one step; `preload`: the run step of a job asking for preloaded Python, with the
/// modules its preload imports ahead; `live`: its stdin and output go through the runner as
/// they come ([`AgentStep::live`]).
fn run_step(
    step: &AgentStep,
    preload: Option<&[String]>,
    mut live: Option<&mut LiveIo>,
) -> AgentStepResult {
    let started = Instant::now();
    let mut res = AgentStepResult::default();
    let mut cmd = std::process::Command::new(&step.argv[0]);
    let env = step_env(&step.env);
    cmd.args(&step.argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/sandbox")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let cpu = step.cpu_seconds;
    let nofile = step.open_files;
    // A preloaded interpreter serves the run step when it can (checked in the child).
    let preloaded = preload
        .filter(|_| crate::sandbox::pyembed::loaded())
        .map(|modules| {
            let program = crate::sandbox::pyembed::resolve_program(&step.argv[0], &path_of(&env));
            (step.argv.clone(), env, modules.to_vec(), program)
        });
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The OOM killer's first choice in the container, before this agent.
            crate::sandbox::oom_first();
            if libc::setsid() < 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(UID) != 0
                || libc::setuid(UID) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(c) = cpu {
                crate::sandbox::set_cpu_rlimit(c);
            }
            crate::sandbox::set_rlimit(libc::RLIMIT_NOFILE, nofile, nofile);
            if let Some((argv, env, modules, program)) = &preloaded {
                crate::sandbox::pyembed::run_preloaded(
                    argv,
                    env,
                    modules,
                    program,
                    Path::new("/sandbox"),
                    || {
                        // What execve would close: every fd but the standard ones (Command's
                        // close-on-exec error pipe among them: its end tells spawn() we started).
                        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                    },
                );
            }
            Ok(())
        });
    }
    let usage_before = crate::sandbox::usage::children();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            res.exit_code = Some(127);
            res.spawn_error = Some(format!("cannot start `{}`: {e}", step.argv[0]));
            return res;
        }
    };
    let mut stdin = child.stdin.take();
    let mut out = child
        .stdout
        .take()
        .map(|s| std::fs::File::from(std::os::fd::OwnedFd::from(s)));
    let mut err = child
        .stderr
        .take()
        .map(|s| std::fs::File::from(std::os::fd::OwnedFd::from(s)));
    for f in [
        out.as_ref().map(|f| f.as_raw_fd()),
        err.as_ref().map(|f| f.as_raw_fd()),
        stdin.as_ref().map(|f| f.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        // SAFETY: fcntl on fds we own.
        unsafe {
            let fl = libc::fcntl(f, libc::F_GETFL);
            libc::fcntl(f, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    let (mut obuf, mut ebuf) = (Vec::new(), Vec::new());
    // What is to be written to the program's stdin (`written` of it is): the step's bytes,
    // or a live step's pieces as they come.
    let mut feed: Vec<u8> = if live.is_some() {
        Vec::new()
    } else {
        step.stdin.clone()
    };
    let mut written = 0usize;
    if feed.is_empty() && live.is_none() {
        stdin = None;
    }
    let deadline = started + Duration::from_millis(step.timeout_ms);
    let mut chunk = vec![0u8; 64 << 10];
    // Set once the program has exited: what it (or a process it left holding its output)
    // wrote until then is drained, then the step ends; leftovers are killed after it.
    let mut exited_at: Option<Instant> = None;
    // The program's wait status and rusage, once reaped (wait4: std's wait gives no rusage).
    let pid = child.id() as libc::pid_t;
    let mut reaped: Option<(i32, crate::sandbox::usage::Usage)> = None;
    let try_reap = |reaped: &mut Option<(i32, crate::sandbox::usage::Usage)>| {
        if reaped.is_none() {
            if let Ok(Some((_, st, u))) = crate::sandbox::usage::wait4_nohang(pid) {
                *reaped = Some((st, u));
            }
        }
        reaped.is_some()
    };
    // (A live step that closed its output may still read: it is fed until it ends.)
    while out.is_some() || err.is_some() || (live.is_some() && exited_at.is_none()) {
        let now = Instant::now();
        if now >= deadline {
            res.timed_out = true;
            break;
        }
        if exited_at.is_none() && try_reap(&mut reaped) {
            exited_at = Some(now);
        }
        if exited_at.is_some_and(|t| now.duration_since(t) > Duration::from_millis(20)) {
            break;
        }
        let mut fds = Vec::new();
        if let Some(f) = &out {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(f) = &err {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(f) = stdin.as_ref().filter(|_| written < feed.len()) {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            });
        }
        // The runner's pieces are read while the program takes what came (no more than
        // LIVE_PENDING_MAX waits for it): a program that reads nothing holds the sender
        // back, as a full pipe would, instead of filling this agent's memory.
        let runner = live
            .as_ref()
            .filter(|l| !l.stdin_ended && feed.len() - written < LIVE_PENDING_MAX)
            .map(|_| fds.len());
        if runner.is_some() {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let wait = (deadline - now).as_millis().min(10) as i32;
        // SAFETY: poll over a valid array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait.max(1)) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if let (Some(i), Some(l)) = (runner, live.as_mut()) {
            if fds[i].revents != 0 {
                let before = feed.len();
                l.read(&mut feed);
                if stdin.is_none() {
                    // The program closed its stdin: what comes is thrown away.
                    feed.truncate(before);
                }
            }
        }
        if let Some(f) = &mut stdin {
            if written < feed.len() {
                match f.write(&feed[written..]) {
                    Ok(k) => written += k,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        written = feed.len();
                        stdin = None;
                    }
                }
            }
            if written >= feed.len() {
                feed.clear();
                written = 0;
                if live.as_ref().is_none_or(|l| l.stdin_ended) {
                    stdin = None;
                }
            }
        }
        for (pipe, buf, truncated, kind) in [
            (
                &mut out,
                &mut obuf,
                &mut res.stdout_truncated,
                LiveKind::Stdout,
            ),
            (
                &mut err,
                &mut ebuf,
                &mut res.stderr_truncated,
                LiveKind::Stderr,
            ),
        ] {
            if let Some(f) = pipe {
                match f.read(&mut chunk) {
                    Ok(0) => {
                        *pipe = None;
                        // Its end, for the other program of the wire (`backend::Wire`).
                        if live.is_some() {
                            LiveIo::send(kind, &[]);
                        }
                    }
                    Ok(k) => {
                        let room = (step.cap as usize).saturating_sub(buf.len());
                        let kept = &chunk[..k.min(room)];
                        if live.is_some() && !kept.is_empty() {
                            LiveIo::send(kind, kept);
                        }
                        buf.extend_from_slice(kept);
                        if k > room {
                            *truncated = true;
                            res.output_limit_hit = true;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => *pipe = None,
                }
            }
        }
        if res.output_limit_hit {
            break;
        }
    }
    drop(stdin);
    if !(res.timed_out || res.output_limit_hit || exited_at.is_some()) {
        // Output closed: the program ended (or closed both streams): wait for it up to
        // the deadline.
        while Instant::now() < deadline && !try_reap(&mut reaped) {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !try_reap(&mut reaped) {
            res.timed_out = true;
        }
    }
    // Everything the step left is killed (the program too, when it still runs), then
    // reaped: its orphans are this subreaper's children.
    kill_all();
    if reaped.is_none() {
        if let Ok(Some((_, st, u))) = crate::sandbox::usage::wait4_blocking(pid) {
            reaped = Some((st, u));
        }
    }
    while let Ok(Some(_)) = crate::sandbox::usage::wait4_nohang(-1) {}
    if let Some((code, signal)) = reaped
        .filter(|_| !res.timed_out)
        .and_then(|(st, _)| crate::sandbox::usage::ended(st))
    {
        res.exit_code = code;
        res.signal = signal;
    }
    res.usage = Some(crate::sandbox::usage::step(
        usage_before,
        reaped.map(|(_, u)| u),
    ));
    drop(child);
    res.stdout = obuf;
    res.stderr = ebuf;
    res.duration_ms = started.elapsed().as_millis() as u64;
    res
}

/// Kills every process of the container but pid 1 (its init), this agent and root's (a
/// job never runs as root; a job's processes cannot hide from `/proc`: the rule of
/// [`clean`]), until none is left. Returns the evidence of the last round: processes left
/// and `/proc` entries of live processes that could not be read.
fn kill_all() -> Evidence {
    let me = std::process::id();
    let mut e = Evidence::default();
    for round in 0..200 {
        let (mut found, mut unreadable) = (0, 0);
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for entry in rd.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid == 1 || pid == me {
                    continue;
                }
                match process_of(pid) {
                    Some(p) if p.root || p.zombie => {}
                    Some(_) => {
                        found += 1;
                        // SAFETY: a plain signal.
                        unsafe {
                            libc::kill(pid as i32, libc::SIGKILL);
                        }
                    }
                    // Gone meanwhile, or there but unreadable.
                    None => unreadable += u32::from(Path::new(&format!("/proc/{pid}")).exists()),
                }
            }
        }
        e.processes_left = found;
        e.unreadable = unreadable;
        if found == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(if round < 10 { 2 } else { 10 }));
    }
    e
}

/// What the cleaning needs to know of a process, from `/proc/PID/status` read as bytes (a
/// process chooses its own name: not necessarily UTF-8, never trusted to be).
struct Process {
    /// Every one of its uids (real, effective, saved, filesystem) is 0.
    root: bool,
    zombie: bool,
}

fn process_of(pid: u32) -> Option<Process> {
    let status = std::fs::read(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &[u8]| -> Option<Vec<&[u8]>> {
        status
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(key))
            .map(|l| {
                l[key.len()..]
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|w| !w.is_empty())
                    .collect()
            })
    };
    let uids = field(b"Uid:")?;
    let state = field(b"State:")?;
    Some(Process {
        root: uids.len() == 4 && uids.iter().all(|u| *u == b"0"),
        zombie: state.first() == Some(&&b"Z"[..]),
    })
}

fn counters() -> (u64, u64) {
    let read = |paths: &[&str], key: &str| -> u64 {
        paths
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| {
                        let mut it = l.split_whitespace();
                        (it.next() == Some(key)).then(|| it.next()?.parse::<u64>().ok())?
                    })
                    .collect::<Vec<_>>()
            })
            .next()
            .unwrap_or(0)
    };
    (
        read(
            &[
                "/sys/fs/cgroup/memory/memory.oom_control",
                "/sys/fs/cgroup/memory.events",
            ],
            "oom_kill",
        ),
        read(
            &[
                "/sys/fs/cgroup/pids/pids.events",
                "/sys/fs/cgroup/pids.events",
            ],
            "max",
        ),
    )
}

/// The selected files of the workdir (relative paths) as a tar, each opened without
/// following a link; a file that cannot be packed (or past `cap` bytes in all) is refused
/// with why.
fn pack(
    files: &[String],
    cap: u64,
    refused: &mut Vec<(String, String)>,
) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut b = tar::Builder::new(Vec::new());
    let mut total = 0u64;
    for rel in files {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(Path::new("/sandbox").join(rel));
        let mut f = match opened {
            Ok(f) => f,
            Err(e) => {
                refused.push((rel.clone(), e.to_string()));
                continue;
            }
        };
        let meta = f.metadata()?;
        if !meta.is_file() {
            refused.push((rel.clone(), "not a regular file".into()));
            continue;
        }
        total += meta.len();
        if total > cap {
            refused.push((
                rel.clone(),
                "the files copied out exceed the size limit".into(),
            ));
            continue;
        }
        b.append_file(rel, &mut f)?;
    }
    b.into_inner()
}

/// `/dev`'s access and modification times as the container was made (set in `main`).
static DEV_TIMES: std::sync::OnceLock<Option<[i64; 4]>> = std::sync::OnceLock::new();

/// Empties the writable places, removes System V objects, puts the roots back as the
/// container was made (`fresh`: owner, mode, extended attributes, ACLs, times included)
/// and `/dev`'s times, then collects the evidence (with `net`, what the network namespace
/// shows against what it showed when new) and asks [`clean::verdict`].
fn clean(killed: Evidence, fresh: &[Root], net: Option<&mut NetView>) -> Result<(), String> {
    for d in WRITABLE {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                    _ => std::fs::remove_file(&p),
                };
            }
        }
    }
    remove_ipc();
    let mut e = killed;
    for d in WRITABLE {
        if let Some(first) = std::fs::read_dir(d).ok().and_then(|mut rd| rd.next()) {
            e.left.push(
                first
                    .map(|x| x.path().display().to_string())
                    .unwrap_or_else(|err| format!("{d}: {err}")),
            );
        }
    }
    // After the last listing of the roots (a listing moves an access time): their times as
    // made, and `/dev`'s (the engine's tmpfs, whose access time every read of it moves).
    for f in fresh {
        repair(f);
    }
    if let Some(t) = DEV_TIMES.get().copied().flatten() {
        set_times("/dev", t);
    }
    e.roots = snapshot_roots();
    e.ipc_objects = ipc_ids().iter().map(|v| v.len() as u32).sum();
    // Sockets of the job's processes close with them; a connection still closing on the
    // loopback takes a few milliseconds (TIME_WAIT is off in these containers).
    for _ in 0..50 {
        e.sockets = sockets();
        if e.sockets == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(4));
    }
    e.network_changed = net.and_then(|v| v.changed().map(|f| f.display().to_string()));
    clean::verdict(&e, fresh)
}

/// The TCP, UDP and raw sockets of this network namespace, and TCP's in TIME_WAIT, as
/// `/proc/net/sockstat{,6}` count them: per namespace and at a constant cost (listing
/// `/proc/net/tcp` walks the host's whole connection table: 2.2 ms a job on a 24 GiB
/// machine). The shell clean proof (`backend::clean`) counts the same. An unreadable
/// `sockstat` is not a clean namespace.
fn sockets() -> u32 {
    let Ok(v4) = std::fs::read_to_string("/proc/net/sockstat") else {
        return 1;
    };
    let v6 = std::fs::read_to_string("/proc/net/sockstat6").unwrap_or_default();
    crate::backend::clean::sockstat_sockets(&format!("{v4}{v6}"))
}

/// The writable places' roots as they are now: owner, group, mode, extended attributes
/// (ACLs are the `system.posix_acl_*` ones), never following a link.
fn snapshot_roots() -> Vec<Root> {
    use std::os::unix::fs::MetadataExt;
    WRITABLE
        .iter()
        .filter_map(|d| {
            let m = std::fs::symlink_metadata(d).ok()?;
            let xattrs = xattrs_of(d);
            Some(Root {
                path: d.to_string(),
                uid: m.uid(),
                gid: m.gid(),
                mode: m.mode() & 0o7777,
                acl: xattrs
                    .as_ref()
                    .map(|x| x.iter().any(|(n, _)| n.starts_with("system.posix_acl_"))),
                xattrs,
                times: times_of(d),
            })
        })
        .collect()
}

/// The extended attributes of `path` (name, hex value), sorted; None when they cannot be
/// listed.
fn xattrs_of(path: &str) -> Option<Vec<(String, String)>> {
    let p = std::ffi::CString::new(path).ok()?;
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: a buffer of the size we pass.
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr() as *mut _, names.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        // A file system without extended attributes has none.
        return (e == Some(libc::ENOTSUP)).then(Vec::new);
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = std::ffi::CString::new(name).ok()?;
        let mut value = vec![0u8; 64 << 10];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr() as *mut _,
                value.len(),
            )
        };
        let hex: String = if len < 0 {
            "?".into()
        } else {
            let digits: String = value[..len as usize]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("0x{digits}")
        };
        out.push((String::from_utf8_lossy(name).into_owned(), hex));
    }
    out.sort();
    Some(out)
}

/// Puts a root back as it was (`fresh`): owner, mode, and extended attributes (ACLs
/// included: a default ACL would make every later job's files read-only).
fn repair(fresh: &Root) {
    let Ok(p) = std::ffi::CString::new(fresh.path.as_str()) else {
        return;
    };
    if let (Some(now), Some(want)) = (xattrs_of(&fresh.path), &fresh.xattrs) {
        for (name, value) in &now {
            if want.iter().any(|(n, v)| n == name && v == value) {
                continue;
            }
            if let Ok(n) = std::ffi::CString::new(name.as_str()) {
                // SAFETY: path and name are NUL-terminated.
                unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
            }
        }
        for (name, value) in want {
            if now.iter().any(|(n, v)| n == name && v == value) {
                continue;
            }
            let hex = value.trim_start_matches("0x");
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect();
            if let Ok(n) = std::ffi::CString::new(name.as_str()) {
                // SAFETY: as above, with a value buffer of the size we pass.
                unsafe {
                    libc::lsetxattr(
                        p.as_ptr(),
                        n.as_ptr(),
                        bytes.as_ptr() as *const _,
                        bytes.len(),
                        0,
                    )
                };
            }
        }
    }
    // SAFETY: chown/chmod of a root this agent may change (CHOWN, FOWNER).
    unsafe {
        libc::lchown(p.as_ptr(), fresh.uid, fresh.gid);
        libc::chmod(p.as_ptr(), fresh.mode);
    }
    if let Some(t) = fresh.times {
        set_times(&fresh.path, t);
    }
}

/// Access and modification times of `path` as [`times_of`] gave them (FOWNER: any owner's).
fn set_times(path: &str, t: [i64; 4]) {
    let Ok(p) = std::ffi::CString::new(path) else {
        return;
    };
    let ts = [
        libc::timespec {
            tv_sec: t[0],
            tv_nsec: t[1],
        },
        libc::timespec {
            tv_sec: t[2],
            tv_nsec: t[3],
        },
    ];
    // SAFETY: a NUL-terminated path and two timespecs.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}

/// Access and modification times of `path` (seconds and nanoseconds of each), not
/// following a link.
fn times_of(path: &str) -> Option<[i64; 4]> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    Some([m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()])
}

/// System V ids in /proc/sysvipc (shm, msg, sem).
fn ipc_ids() -> [Vec<i32>; 3] {
    let ids = |f: &str| -> Vec<i32> {
        std::fs::read_to_string(Path::new("/proc/sysvipc").join(f))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    };
    [ids("shm"), ids("msg"), ids("sem")]
}

/// IPC_RMID needs the owner: a child that became the sandbox user removes them.
fn remove_ipc() {
    let [shm, msg, sem] = ipc_ids();
    if shm.is_empty() && msg.is_empty() && sem.is_empty() {
        return;
    }
    // SAFETY: the agent is single-threaded; the child only makes syscalls, then _exit.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::setgid(UID) == 0 && libc::setuid(UID) == 0 {
                for id in shm {
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                }
                for id in msg {
                    libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut());
                }
                for id in sem {
                    libc::semctl(id, 0, libc::IPC_RMID);
                }
            }
            libc::_exit(0);
        } else if pid > 0 {
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
        }
    }
}
