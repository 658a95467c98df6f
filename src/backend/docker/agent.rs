//! The agent inside a warm container: one long-lived exec (`llm-sandbox __agent`, root,
//! holding only the capabilities it needs) that runs job after job without a `docker exec`
//! each. Per job: unpack the inputs into `/sandbox`, run each step as the sandbox user
//! (uid 1000, no capabilities, no-new-privileges, its own session, CPU and open-file
//! rlimits) with capped output and a wall-clock timeout, then kill every process of the
//! sandbox user, read the cgroup's counters, pack the workdir when asked, empty every
//! writable place, remove System V IPC objects, and prove all of that before answering.
//!
//! Protocol: one JSON line per job on stdin ([`AgentJob`]), one JSON line per answer on
//! stdout ([`AgentResult`]); `READY` first. Bytes travel base64-encoded.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

pub const SUBCOMMAND: &str = "__agent";
pub const READY: &str = "LLM-SANDBOX-AGENT-READY 1";
const UID: u32 = 1000;
const WRITABLE: &[&str] = &["/sandbox", "/tmp", "/dev/shm", "/dev/mqueue"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentJob {
    /// A tar of the job's files (base64).
    pub inputs: String,
    pub steps: Vec<AgentStep>,
    /// Pack `/sandbox` into the answer (artifacts, file checks), up to `collect_cap` bytes.
    pub collect: bool,
    pub collect_cap: u64,
    /// Run `python3 -B FILE` run steps in an interpreter this agent initialised once (after
    /// the first job that asks; README, "Preloaded Python").
    #[serde(default)]
    pub preload: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStep {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Standard input (base64); none: empty.
    pub stdin: Option<String>,
    pub timeout_ms: u64,
    /// Per stream.
    pub cap: u64,
    pub cpu_seconds: Option<u64>,
    pub open_files: u64,
    /// Stop after this step unless it exits 0 (compile steps).
    pub must_succeed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStepResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub output_limit_hit: bool,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    pub spawn_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentResult {
    pub steps: Vec<AgentStepResult>,
    pub oom_kills: u64,
    pub pids_max_hits: u64,
    pub tar: Option<String>,
    /// Every trace of the job is gone (processes, files, IPC objects).
    pub clean: bool,
    pub error: Option<String>,
}

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
    let mut out = std::mem::ManuallyDrop::new(unsafe_fd_file(1));
    if out.write_all(format!("{READY}\n").as_bytes()).is_err() {
        return 1;
    }
    loop {
        let line = match read_line(0) {
            Ok(Some(l)) => l,
            Ok(None) => return 0,
            Err(_) => return 1,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if crate::sandbox::pyembed::loaded() {
            crate::sandbox::pyembed::scrub_stack();
        }
        let mut preload = None;
        let result = match serde_json::from_slice::<AgentJob>(&line) {
            Ok(job) => {
                if job.preload {
                    preload = job.steps.last().and_then(|s| {
                        let env = step_env(s);
                        crate::sandbox::pyembed::request_for(&env, &path_of(&env))
                    });
                }
                run_job(&job)
            }
            Err(e) => AgentResult {
                error: Some(format!("bad request: {e}")),
                ..Default::default()
            },
        };
        drop(line);
        let mut s = serde_json::to_string(&result).unwrap_or_default();
        drop(result);
        s.push('\n');
        if out.write_all(s.as_bytes()).is_err() {
            return 1;
        }
        drop(s);
        if let Some(req) = preload {
            crate::sandbox::pyembed::scrub_stack();
            crate::sandbox::pyembed::preload(req);
        }
    }
}

/// fd as a File (unbuffered).
fn unsafe_fd_file(fd: i32) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: one of this process's standard fds, wrapped without being closed (ManuallyDrop).
    unsafe { std::fs::File::from_raw_fd(fd) }
}

/// One request line from `fd`, read in chunks into a buffer that only ever holds this line
/// (the runner sends the next request after this one's answer), freed (and so
/// overwritten) after use; the chunk buffer is zeroed as it goes.
fn read_line(fd: i32) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = std::mem::ManuallyDrop::new(unsafe_fd_file(fd));
    let mut line = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match f.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok((!line.is_empty()).then_some(line));
        }
        line.extend_from_slice(&chunk[..n]);
        chunk[..n].fill(0);
        if line.last() == Some(&b'\n') {
            line.pop();
            return Ok(Some(line));
        }
    }
}

/// The environment a step's program gets: the container's (the image's ENV: PATH,
/// toolchain settings), as an exec would see it, then the step's own variables; sorted by
/// name, as `Command` passes them.
fn step_env(step: &AgentStep) -> Vec<(String, String)> {
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("LLM_SANDBOX_"))
        .collect();
    for (k, v) in &step.env {
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

fn run_job(job: &AgentJob) -> AgentResult {
    let mut r = AgentResult::default();
    if let Err(e) = unpack(&job.inputs) {
        r.error = Some(format!("cannot unpack the job's files: {e}"));
    } else {
        let last = job.steps.len().saturating_sub(1);
        for (i, step) in job.steps.iter().enumerate() {
            let s = run_step(step, job.preload && i == last);
            let stop = step.must_succeed && (s.exit_code != Some(0) || s.timed_out);
            let end = s.timed_out || s.output_limit_hit;
            r.steps.push(s);
            if stop || end {
                break;
            }
        }
    }
    let killed = kill_user();
    let (oom, pids) = counters();
    r.oom_kills = oom;
    r.pids_max_hits = pids;
    if job.collect && r.error.is_none() {
        match pack(job.collect_cap) {
            Ok(t) => r.tar = Some(super::base64(&t)),
            Err(e) => r.error = Some(format!("cannot pack the workdir: {e}")),
        }
    }
    r.clean = killed && clean();
    r
}

fn decode(s: &str) -> Result<Vec<u8>, String> {
    super::base64_decode(s).ok_or_else(|| "invalid base64".to_string())
}

/// Unpacks the inputs (from the host, trusted) into the empty workdir, owned by the user.
fn unpack(b64: &str) -> Result<(), String> {
    let data = decode(b64)?;
    let mut ar = tar::Archive::new(data.as_slice());
    ar.set_preserve_ownerships(true);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    ar.unpack("/sandbox").map_err(|e| e.to_string())
}

fn set_rlimit(res: libc::__rlimit_resource_t, v: u64) {
    let r = libc::rlimit {
        rlim_cur: v,
        rlim_max: v,
    };
    // SAFETY: setrlimit with a valid struct.
    unsafe {
        libc::setrlimit(res, &r);
    }
}

fn run_step(step: &AgentStep, preload: bool) -> AgentStepResult {
    let started = Instant::now();
    let mut res = AgentStepResult::default();
    let stdin_data = match step.stdin.as_deref().map(decode).transpose() {
        Ok(d) => d.unwrap_or_default(),
        Err(e) => {
            res.spawn_error = Some(e);
            return res;
        }
    };
    let mut cmd = std::process::Command::new(&step.argv[0]);
    let env = step_env(step);
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
    let preloaded = (preload && crate::sandbox::pyembed::loaded()).then(|| {
        let program = crate::sandbox::pyembed::resolve_program(&step.argv[0], &path_of(&env));
        (step.argv.clone(), env, program)
    });
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(UID) != 0
                || libc::setuid(UID) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(c) = cpu {
                set_rlimit(libc::RLIMIT_CPU, c);
            }
            set_rlimit(libc::RLIMIT_NOFILE, nofile);
            if let Some((argv, env, program)) = &preloaded {
                crate::sandbox::pyembed::run_preloaded(
                    argv,
                    env,
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
    let mut written = 0usize;
    if stdin_data.is_empty() {
        stdin = None;
    }
    let deadline = started + Duration::from_millis(step.timeout_ms);
    let mut chunk = vec![0u8; 64 << 10];
    // Set once the program has exited: what it (or a process it left holding its output)
    // wrote until then is drained, then the step ends; leftovers are killed after it.
    let mut exited_at: Option<Instant> = None;
    while out.is_some() || err.is_some() {
        let now = Instant::now();
        if now >= deadline {
            res.timed_out = true;
            break;
        }
        if exited_at.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
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
        if let Some(f) = &stdin {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLOUT,
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
        if let Some(f) = &mut stdin {
            match f.write(&stdin_data[written..]) {
                Ok(k) => written += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => written = stdin_data.len(),
            }
            if written >= stdin_data.len() {
                stdin = None;
            }
        }
        for (pipe, buf, truncated) in [
            (&mut out, &mut obuf, &mut res.stdout_truncated),
            (&mut err, &mut ebuf, &mut res.stderr_truncated),
        ] {
            if let Some(f) = pipe {
                match f.read(&mut chunk) {
                    Ok(0) => *pipe = None,
                    Ok(k) => {
                        let room = (step.cap as usize).saturating_sub(buf.len());
                        buf.extend_from_slice(&chunk[..k.min(room)]);
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
    if res.timed_out || res.output_limit_hit || exited_at.is_some() {
        kill_user();
    } else {
        // Output closed: the program ended (or closed both streams): wait for it up to
        // the deadline.
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        if matches!(child.try_wait(), Ok(None)) {
            res.timed_out = true;
            kill_user();
        }
    }
    if let Ok(st) = child.wait() {
        use std::os::unix::process::ExitStatusExt;
        if !res.timed_out {
            res.exit_code = st.code();
            res.signal = st.signal();
        }
    }
    res.stdout = super::base64(&obuf);
    res.stderr = super::base64(&ebuf);
    res.duration_ms = started.elapsed().as_millis() as u64;
    res
}

/// Kills every process of the sandbox user until none is left; false if some survive.
fn kill_user() -> bool {
    for round in 0..200 {
        let mut found = 0;
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    continue;
                };
                let user = status
                    .lines()
                    .find(|l| l.starts_with("Uid:"))
                    .is_some_and(|l| l.split_whitespace().skip(1).any(|u| u == "1000"));
                if user {
                    found += 1;
                    // SAFETY: a plain signal.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        if found == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(if round < 10 { 2 } else { 10 }));
    }
    false
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

/// The workdir as a tar (links stored as links, never followed).
fn pack(cap: u64) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut total = 0u64;
    let mut stack = vec![std::path::PathBuf::from("/sandbox")];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix("/sandbox").unwrap_or(&p).to_path_buf();
            let meta = std::fs::symlink_metadata(&p)?;
            if meta.is_dir() {
                b.append_dir(&rel, &p)?;
                stack.push(p);
            } else if meta.is_file() {
                total += meta.len();
                if total > cap {
                    break;
                }
                b.append_path_with_name(&p, &rel)?;
            } else if meta.file_type().is_symlink() {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                let target = std::fs::read_link(&p)?;
                b.append_link(&mut h, &rel, target)?;
            }
        }
    }
    b.into_inner()
}

/// Empties the writable places and removes System V objects; true when proven empty.
fn clean() -> bool {
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
    // SAFETY: chown/chmod of a path we own the mount of.
    unsafe {
        let p = c"/sandbox";
        libc::chown(p.as_ptr(), UID, UID);
        libc::chmod(p.as_ptr(), 0o755);
    }
    remove_ipc();
    let empty = WRITABLE
        .iter()
        .all(|d| std::fs::read_dir(d).map_or(true, |mut rd| rd.next().is_none()));
    empty && ipc_ids().iter().all(|v| v.is_empty())
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
