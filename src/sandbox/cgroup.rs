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

/// One sandbox's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    pub mode: Mode,
    dirs: Vec<PathBuf>,
    mem_dir: PathBuf,
    pids_dir: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup and writes its limits.
    pub fn create(
        mode: &Mode,
        name: &str,
        memory: u64,
        pids: u64,
        cpus: f64,
    ) -> io::Result<Cgroup> {
        let (dirs, mem_dir, pids_dir) = match mode {
            Mode::V1 {
                memory: m,
                pids: p,
                cpu,
            } => {
                let mut dirs = vec![m.join(name), p.join(name)];
                if let Some(c) = cpu {
                    dirs.push(c.join(name));
                }
                (dirs, m.join(name), p.join(name))
            }
            Mode::V2 { parent } => {
                let d = parent.join(name);
                (vec![d.clone()], d.clone(), d)
            }
        };
        for d in &dirs {
            fs::create_dir_all(d)?;
        }
        let cg = Cgroup {
            mode: mode.clone(),
            dirs,
            mem_dir,
            pids_dir,
        };
        match mode {
            Mode::V1 { cpu, .. } => {
                fs::write(cg.mem_dir.join("memory.limit_in_bytes"), memory.to_string())?;
                let _ = fs::write(
                    cg.mem_dir.join("memory.memsw.limit_in_bytes"),
                    memory.to_string(),
                );
                let _ = fs::write(cg.mem_dir.join("memory.swappiness"), "0");
                fs::write(cg.pids_dir.join("pids.max"), pids.to_string())?;
                if let Some(c) = cpu {
                    let d = c.join(name);
                    let period = 100_000u64;
                    let quota = ((cpus.max(0.01)) * period as f64) as u64;
                    let _ = fs::write(d.join("cpu.cfs_period_us"), period.to_string());
                    let _ = fs::write(d.join("cpu.cfs_quota_us"), quota.to_string());
                }
            }
            Mode::V2 { .. } => {
                fs::write(cg.mem_dir.join("memory.max"), memory.to_string())?;
                let _ = fs::write(cg.mem_dir.join("memory.swap.max"), "0");
                fs::write(cg.pids_dir.join("pids.max"), pids.to_string())?;
                let period = 100_000u64;
                let quota = ((cpus.max(0.01)) * period as f64) as u64;
                let _ = fs::write(cg.mem_dir.join("cpu.max"), format!("{quota} {period}"));
            }
        }
        Ok(cg)
    }

    /// Moves a process into the cgroup.
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for d in &self.dirs {
            fs::write(d.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    pub fn oom_killed(&self) -> bool {
        match self.mode {
            Mode::V1 { .. } => {
                let s =
                    fs::read_to_string(self.mem_dir.join("memory.oom_control")).unwrap_or_default();
                let kills = field(&s, "oom_kill").unwrap_or(0);
                let fail = fs::read_to_string(self.mem_dir.join("memory.failcnt"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                kills > 0 || (fail > 0 && field(&s, "under_oom").unwrap_or(0) > 0)
            }
            Mode::V2 { .. } => {
                let s = fs::read_to_string(self.mem_dir.join("memory.events")).unwrap_or_default();
                field(&s, "oom_kill").unwrap_or(0) > 0
            }
        }
    }

    pub fn pids_limit_hit(&self) -> bool {
        let s = fs::read_to_string(self.pids_dir.join("pids.events")).unwrap_or_default();
        field(&s, "max").unwrap_or(0) > 0
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

    /// Kills whatever is still in the cgroup and removes it.
    pub fn destroy(&self) {
        for _ in 0..200 {
            let mut busy = false;
            for d in &self.dirs {
                if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        busy = true;
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
            let _ = busy;
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
pub fn sweep_stale(mode: &Mode, host: &str) {
    let parents: Vec<PathBuf> = match mode {
        Mode::V1 { memory, pids, cpu } => {
            let mut v = vec![memory.clone(), pids.clone()];
            v.extend(cpu.clone());
            v
        }
        Mode::V2 { parent } => vec![parent.clone()],
    };
    for p in parents {
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = crate::run::owner::stale_owner_pid(&name, host) {
                let _ = pid;
                let cg = Cgroup {
                    mode: mode.clone(),
                    dirs: vec![e.path()],
                    mem_dir: e.path(),
                    pids_dir: e.path(),
                };
                cg.destroy();
            }
        }
    }
}
