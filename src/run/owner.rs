//! Ownership labels: every temporary directory and cgroup a run creates is named
//! `ls-<pid>-<starttime>-…` after the runner process that owns it, and its run directory
//! holds `owner.json` (tool, run id, host, pid). A later run removes what belongs to a
//! runner that no longer exists (SIGKILL), and never touches what a live run owns.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    pub tool: String,
    pub run_id: String,
    pub host: String,
    pub pid: u32,
    pub started_at: String,
}

/// Start time (in clock ticks since boot) of a process, from /proc/PID/stat.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

pub fn hostname() -> String {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into())
    })
    .clone()
}

/// The label prefix of everything this process owns: `ls-<pid>-<starttime>`.
pub fn prefix() -> String {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let pid = std::process::id();
        format!("ls-{pid}-{}", start_time(pid).unwrap_or(0))
    })
    .clone()
}

/// If `name` carries an owner label whose process is gone, its pid.
pub fn stale_owner_pid(name: &str, _host: &str) -> Option<u32> {
    let rest = name.strip_prefix("ls-")?;
    let mut it = rest.split('-');
    let pid: u32 = it.next()?.parse().ok()?;
    let st: u64 = it.next()?.parse().ok()?;
    match start_time(pid) {
        Some(t) if t == st => None,
        _ => Some(pid),
    }
}

/// Root of the run directories: `$TMPDIR/llm-sandbox-<uid>` (one per user: another
/// user's directory is neither writable nor ours to clean).
pub fn runs_root() -> PathBuf {
    std::env::temp_dir().join(format!("llm-sandbox-{}", nix::unistd::geteuid()))
}

/// Removes run directories left by dead runners on this host.
pub fn sweep_stale_dirs(root: &Path) -> usize {
    let host = hostname();
    let mut removed = 0;
    let Ok(rd) = std::fs::read_dir(root) else {
        return 0;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if stale_owner_pid(&name, &host).is_none() {
            continue;
        }
        // Only directories whose owner file says this host and this tool.
        let owner: Option<Owner> = std::fs::read(e.path().join("owner.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if owner.is_some_and(|o| o.host == host && o.tool == "llm-sandbox")
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Removes everything dead runners left: run directories and cgroups.
pub fn sweep_stale() {
    sweep_stale_dirs(&runs_root());
    if let Ok(mode) = crate::sandbox::cgroup::detect() {
        crate::sandbox::cgroup::sweep_stale(&mode, &hostname());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_label_is_live_and_dead_one_is_stale() {
        assert_eq!(stale_owner_pid(&format!("{}-0-1", prefix()), "h"), None);
        // pid 1 exists but with another start time than 999999999.
        assert_eq!(stale_owner_pid("ls-1-999999999-x", "h"), Some(1));
        assert_eq!(stale_owner_pid("something-else", "h"), None);
    }

    #[test]
    fn sweep_removes_only_dead_owners() {
        let root = tempfile::tempdir().unwrap();
        let host = hostname();
        let write = |name: &str, host: &str| {
            let d = root.path().join(name);
            std::fs::create_dir_all(d.join("job")).unwrap();
            let o = Owner {
                tool: "llm-sandbox".into(),
                run_id: name.into(),
                host: host.into(),
                pid: 1,
                started_at: String::new(),
            };
            std::fs::write(d.join("owner.json"), serde_json::to_vec(&o).unwrap()).unwrap();
        };
        write("ls-1-999999999-a", &host);
        write(&format!("{}-b", prefix()), &host);
        write("ls-1-999999999-c", "another-host");
        assert_eq!(sweep_stale_dirs(root.path()), 1);
        assert!(!root.path().join("ls-1-999999999-a").exists());
        assert!(root.path().join(format!("{}-b", prefix())).exists());
        assert!(root.path().join("ls-1-999999999-c").exists());
    }
}
