//! Memory, pids and CPU limits through cgroups: v1 when its controllers are writable
//! (this machine), v2 when a delegated subtree is writable (systemd machines), else none
//! (the helper falls back to rlimits).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const V1_ROOT: &str = "/sys/fs/cgroup";
/// Directory (under each controller, or under the v2 parent) that holds our cgroups.
pub const PARENT: &str = "llm-sandbox";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// cgroup v1: one directory per controller.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
    /// cgroup v2: one directory, the parent of our cgroups.
    V2 { parent: PathBuf },
}

impl Mode {
    pub fn describe(&self) -> String {
        match self {
            Mode::V1 { .. } => "cgroup v1 (memory, pids, cpu controllers)".into(),
            Mode::V2 { parent } => format!("cgroup v2 (delegated at {})", parent.display()),
        }
    }
    pub fn short(&self) -> &'static str {
        match self {
            Mode::V1 { .. } => "cgroup v1",
            Mode::V2 { .. } => "cgroup v2",
        }
    }
}

fn writable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Finds how limits can be enforced here. `Err` says why cgroups cannot be used.
pub fn detect() -> Result<Mode, String> {
    let v1_mem = Path::new(V1_ROOT).join("memory");
    let v1_pids = Path::new(V1_ROOT).join("pids");
    if v1_mem.join("memory.limit_in_bytes").exists() && v1_pids.join("pids.max").exists()
        || v1_pids.join("cgroup.procs").exists() && v1_mem.join("memory.limit_in_bytes").exists()
    {
        let mem = v1_mem.join(PARENT);
        let pids = v1_pids.join(PARENT);
        let cpu_root = Path::new(V1_ROOT).join("cpu");
        let _ = fs::create_dir_all(&mem);
        let _ = fs::create_dir_all(&pids);
        if writable(&mem) && writable(&pids) {
            let cpu = cpu_root
                .join("cpu.cfs_quota_us")
                .exists()
                .then(|| cpu_root.join(PARENT))
                .filter(|c| fs::create_dir_all(c).is_ok() && writable(c));
            return Ok(Mode::V1 {
                memory: mem,
                pids,
                cpu,
            });
        }
        return Err("cgroup v1 controllers are not writable by this user (run as root to enforce memory and process limits with cgroups)".into());
    }
    if Path::new(V1_ROOT).join("cgroup.controllers").exists() {
        return detect_v2();
    }
    Err("no cgroup filesystem with memory and pids controllers is mounted".into())
}

fn detect_v2() -> Result<Mode, String> {
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
    let own_dir = Path::new(V1_ROOT).join(rel.trim_start_matches('/'));
    // Our own cgroup holds processes, so controllers can only be enabled below a sibling
    // or the parent we are allowed to write: try our cgroup's parent first (systemd user
    // delegation makes user@UID.service writable), then our own.
    let candidates = [
        own_dir.parent().map(Path::to_path_buf),
        Some(own_dir.clone()),
    ];
    for base in candidates.into_iter().flatten() {
        let parent = base.join(PARENT);
        if fs::create_dir_all(&parent).is_err() || !writable(&parent) {
            continue;
        }
        let _ = fs::write(base.join("cgroup.subtree_control"), "+memory +pids +cpu");
        let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
        let ctl = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        if ctl.contains("memory") && ctl.contains("pids") {
            return Ok(Mode::V2 { parent });
        }
    }
    Err("cgroup v2 is mounted but no delegated subtree with the memory and pids controllers is writable (on systemd: run under `systemd-run --user --scope -p Delegate=yes`)".into())
}

/// The cgroup of one sandbox slot: a sandbox server lives in it and forks each of its
/// sandboxes inside it, so no process is ever moved per job (moving one costs a
/// `synchronize_rcu`, up to tens of milliseconds on cgroup v1).
#[derive(Debug)]
pub struct Cgroup {
    pub mode: Mode,
    dirs: Vec<PathBuf>,
    mem_dir: PathBuf,
    pids_dir: PathBuf,
    cpu_dir: Option<PathBuf>,
    /// The limits last written (memory, pids, cpus): jobs of a slot mostly share them.
    written: std::cell::Cell<Option<(u64, u64, u64)>>,
}

/// Counters of a cgroup, compared before and after a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub oom_kills: u64,
    pub pids_max: u64,
}

impl Cgroup {
    /// Creates the cgroup (no limits yet).
    pub fn create(mode: &Mode, name: &str) -> io::Result<Cgroup> {
        let cg = match mode {
            Mode::V1 {
                memory: m,
                pids: p,
                cpu,
            } => {
                let mut dirs = vec![m.join(name), p.join(name)];
                if let Some(c) = cpu {
                    dirs.push(c.join(name));
                }
                Cgroup {
                    mode: mode.clone(),
                    dirs,
                    mem_dir: m.join(name),
                    pids_dir: p.join(name),
                    cpu_dir: cpu.as_ref().map(|c| c.join(name)),
                    written: Default::default(),
                }
            }
            Mode::V2 { parent } => {
                let d = parent.join(name);
                Cgroup {
                    mode: mode.clone(),
                    dirs: vec![d.clone()],
                    mem_dir: d.clone(),
                    pids_dir: d.clone(),
                    cpu_dir: Some(d),
                    written: Default::default(),
                }
            }
        };
        for d in &cg.dirs {
            fs::create_dir_all(d)?;
        }
        Ok(cg)
    }

    /// Writes the limits of the next job; `extra_pids` are the slot's own processes.
    pub fn set_limits(&self, memory: u64, pids: u64, cpus: f64) -> io::Result<()> {
        let period = 100_000u64;
        let quota = (cpus.max(0.01) * period as f64) as u64;
        // The peak is per job; the limits only change when the job's do.
        let peak = match self.mode {
            Mode::V1 { .. } => "memory.max_usage_in_bytes",
            Mode::V2 { .. } => "memory.peak",
        };
        let _ = fs::write(self.mem_dir.join(peak), "0");
        // Only what changed is written: the pids limit follows the inits still exiting
        // (see the server's `own_pids`) and changes often; memory and CPU mostly do not.
        let last = self.written.take();
        let changed = |f: fn(&(u64, u64, u64)) -> u64, v: u64| last.as_ref().map(f) != Some(v);
        if changed(|w| w.1, pids) {
            fs::write(self.pids_dir.join("pids.max"), pids.to_string())?;
        }
        match self.mode {
            Mode::V1 { .. } => {
                if changed(|w| w.0, memory) {
                    let _ = fs::write(self.mem_dir.join("memory.memsw.limit_in_bytes"), "-1");
                    fs::write(
                        self.mem_dir.join("memory.limit_in_bytes"),
                        memory.to_string(),
                    )?;
                    let _ = fs::write(
                        self.mem_dir.join("memory.memsw.limit_in_bytes"),
                        memory.to_string(),
                    );
                    let _ = fs::write(self.mem_dir.join("memory.swappiness"), "0");
                }
                if changed(|w| w.2, quota) {
                    if let Some(d) = &self.cpu_dir {
                        let _ = fs::write(d.join("cpu.cfs_period_us"), period.to_string());
                        let _ = fs::write(d.join("cpu.cfs_quota_us"), quota.to_string());
                    }
                }
            }
            Mode::V2 { .. } => {
                if changed(|w| w.0, memory) {
                    fs::write(self.mem_dir.join("memory.max"), memory.to_string())?;
                    let _ = fs::write(self.mem_dir.join("memory.swap.max"), "0");
                }
                if changed(|w| w.2, quota) {
                    let _ = fs::write(self.mem_dir.join("cpu.max"), format!("{quota} {period}"));
                }
            }
        }
        self.written.set(Some((memory, pids, quota)));
        Ok(())
    }

    /// Moves a process into the cgroup.
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for d in &self.dirs {
            fs::write(d.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    pub fn counters(&self) -> Counters {
        let oom_kills = match self.mode {
            Mode::V1 { .. } => field(
                &fs::read_to_string(self.mem_dir.join("memory.oom_control")).unwrap_or_default(),
                "oom_kill",
            ),
            Mode::V2 { .. } => field(
                &fs::read_to_string(self.mem_dir.join("memory.events")).unwrap_or_default(),
                "oom_kill",
            ),
        }
        .unwrap_or(0);
        let pids_max = field(
            &fs::read_to_string(self.pids_dir.join("pids.events")).unwrap_or_default(),
            "max",
        )
        .unwrap_or(0);
        Counters {
            oom_kills,
            pids_max,
        }
    }

    pub fn memory_peak(&self) -> Option<u64> {
        let f = match self.mode {
            Mode::V1 { .. } => "memory.max_usage_in_bytes",
            Mode::V2 { .. } => "memory.peak",
        };
        fs::read_to_string(self.mem_dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Moves the calling process out (to the parent) and removes the cgroup, killing
    /// whatever else is still in it.
    pub fn leave_and_destroy(&self) {
        let me = std::process::id().to_string();
        for d in &self.dirs {
            if let Some(parent) = d.parent() {
                let _ = fs::write(parent.join("cgroup.procs"), &me);
            }
        }
        self.destroy();
    }

    /// Kills whatever is still in the cgroup and removes it.
    pub fn destroy(&self) {
        for _ in 0..200 {
            for d in &self.dirs {
                if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let mut all_gone = true;
            for d in &self.dirs {
                if d.exists() && fs::remove_dir(d).is_err() {
                    all_gone = false;
                }
            }
            if all_gone {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

fn field(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

/// Removes cgroups left by runs whose owner process is gone (names start with
/// `<hostname>-<pid>-`). Never touches a live run's cgroups.
impl Mode {
    /// The directories the sandboxes' cgroups are made in (one per v1 controller).
    fn parents(&self) -> Vec<PathBuf> {
        match self {
            Mode::V1 { memory, pids, cpu } => {
                let mut v = vec![memory.clone(), pids.clone()];
                v.extend(cpu.clone());
                v
            }
            Mode::V2 { parent } => vec![parent.clone()],
        }
    }

    /// The cgroups whose names start with `prefix` (an owner label, `ls-<pid>-`).
    pub fn owned_dirs(&self, prefix: &str) -> Vec<PathBuf> {
        self.parents()
            .iter()
            .filter_map(|p| fs::read_dir(p).ok())
            .flat_map(|rd| rd.flatten())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect()
    }
}

pub fn sweep_stale(mode: &Mode, host: &str) {
    for p in mode.parents() {
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = crate::owner::stale_owner_pid(&name, host) {
                let _ = pid;
                let cg = Cgroup {
                    mode: mode.clone(),
                    dirs: vec![e.path()],
                    mem_dir: e.path(),
                    pids_dir: e.path(),
                    cpu_dir: None,
                    written: Default::default(),
                };
                cg.destroy();
            }
        }
    }
}
