//! Ownership labels: every temporary directory and cgroup a run creates is named
//! `ls-<pid>-<starttime>-…` after the runner process that owns it, and its run directory
//! holds `owner.json` (tool, run id, host, pid). A later run removes what belongs to a
//! runner that no longer exists (SIGKILL), and never touches what a live run owns.

use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

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

/// Overrides where the runner keeps its private files (see [`runs_root`]).
pub const RUNTIME_DIR_ENV: &str = "LLM_SANDBOX_RUNTIME_DIR";

/// Where the private root of this user's runs would be: `$LLM_SANDBOX_RUNTIME_DIR` when set;
/// as root `/run/llm-sandbox` when `/run` is in memory (tmpfs); else
/// `$XDG_RUNTIME_DIR/llm-sandbox` (a per-user directory nobody else can write); else
/// `/dev/shm/llm-sandbox-<euid>` when that is in memory and free or already ours (another
/// user cannot make us fail by creating it first); else `/run/llm-sandbox` (root) or
/// `$TMPDIR/llm-sandbox-<euid>`. In memory, because every job stages its inputs there and
/// removes them: on a disk that cost each job a journal commit and a discard (a fifth of
/// the runner's time on a machine whose `/run` is on ext4).
pub fn runs_root_path() -> PathBuf {
    if let Some(p) = std::env::var_os(RUNTIME_DIR_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let euid = nix::unistd::geteuid();
    let root_run = euid.is_root() && Path::new("/run").is_dir();
    if root_run && in_memory(Path::new("/run")) {
        return PathBuf::from("/run/llm-sandbox");
    }
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
    {
        return xdg.join("llm-sandbox");
    }
    let shm = PathBuf::from(format!("/dev/shm/llm-sandbox-{euid}"));
    if in_memory(Path::new("/dev/shm")) && free_or_ours(&shm) {
        return shm;
    }
    if root_run {
        return PathBuf::from("/run/llm-sandbox");
    }
    std::env::temp_dir().join(format!("llm-sandbox-{euid}"))
}

/// Whether `dir` does not exist, or is a directory (not a link) of the effective user that
/// nobody else may write: what [`private_dir`] accepts.
fn free_or_ours(dir: &Path) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    match std::fs::symlink_metadata(dir) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(m) => {
            m.is_dir()
                && m.uid() == nix::unistd::geteuid().as_raw()
                && m.permissions().mode() & 0o022 == 0
        }
    }
}

/// Whether `dir` is a directory of a memory file system (tmpfs).
fn in_memory(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// The private root of this user's run directories ([`runs_root_path`]), created or verified
/// safely once per process: created with mode 0700; an existing one must be a directory (a
/// symbolic link is never followed), owned by the effective user, and writable by nobody
/// else (it is then narrowed to 0700). Everything the runner and its sandbox servers keep on
/// the host lives below it, so no other local user can swap or plant anything there.
pub fn runs_root() -> std::io::Result<PathBuf> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let p = runs_root_path();
        private_dir(&p).map(|()| p)
    })
    .clone()
    .map_err(std::io::Error::other)
}

/// Creates `dir` (mode 0700) or verifies an existing one: not a symbolic link, a directory,
/// owned by the effective user, not writable by group or others. The error names the
/// directory, what is wrong and how to fix it.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::{fchmod, fstat, Mode};
    use nix::unistd::mkdir;
    let fix = format!(
        "remove it (`rm -rf {d}`) if you trust its contents, or point {RUNTIME_DIR_ENV} at a private directory",
        d = dir.display()
    );
    match mkdir(dir, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(nix::Error::EEXIST) => {}
        Err(e) => {
            return Err(format!(
                "cannot create the runner's private directory {}: {e} (set {RUNTIME_DIR_ENV} to a directory you own)",
                dir.display()
            ))
        }
    }
    let fd = match open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::Error::ELOOP) | Err(nix::Error::ENOTDIR) => {
            return Err(format!(
                "refusing to use {} as the runner's private directory: it is not a directory of its own (a symbolic link or a file); {fix}",
                dir.display()
            ))
        }
        Err(e) => return Err(format!("cannot open {}: {e}", dir.display())),
    };
    // SAFETY: `open` returned a new fd that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let st = fstat(fd.as_raw_fd()).map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if st.st_uid != euid {
        return Err(format!(
            "refusing to use {} as the runner's private directory: it belongs to uid {}, not to you (uid {euid}), so its owner could change what the sandboxes are told; {fix}",
            dir.display(),
            st.st_uid
        ));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "refusing to use {} as the runner's private directory: it is writable by group or others (mode {mode:04o}); {fix}",
            dir.display()
        ));
    }
    if mode & 0o077 != 0 {
        fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o700))
            .map_err(|e| format!("cannot chmod 0700 {}: {e}", dir.display()))?;
    }
    Ok(())
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

/// The private temporary directory of one run, removed when dropped.
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn create() -> std::io::Result<RunDir> {
        let root = runs_root()?;
        let nonce: u32 = rand_u32();
        let path = root.join(format!("{}-{nonce:08x}", prefix()));
        std::fs::create_dir(&path)?;
        let o = Owner {
            tool: "llm-sandbox".into(),
            run_id: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            host: hostname(),
            pid: std::process::id(),
            started_at: chrono::Utc::now().to_rfc3339(),
        };
        std::fs::write(
            path.join("owner.json"),
            serde_json::to_vec_pretty(&o).unwrap_or_default(),
        )?;
        Ok(RunDir { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u32
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

    #[test]
    fn private_dir_is_created_0700_and_narrowed() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let fresh = t.path().join("fresh");
        private_dir(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        let loose = t.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&loose).unwrap();
        let mode = std::fs::metadata(&loose).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode, 0o700,
            "a directory of ours readable by others is narrowed"
        );
    }

    #[test]
    fn private_dir_refuses_links_shared_and_foreign_directories() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = private_dir(&link).unwrap_err();
        assert!(
            e.contains("symbolic link") && e.contains(RUNTIME_DIR_ENV),
            "{e}"
        );
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&shared).unwrap_err();
        assert!(e.contains("writable by group or others (mode 0777)"), "{e}");
        if nix::unistd::geteuid().is_root() {
            let foreign = t.path().join("foreign");
            std::fs::create_dir(&foreign).unwrap();
            std::os::unix::fs::chown(&foreign, Some(4321), Some(4321)).unwrap();
            let e = private_dir(&foreign).unwrap_err();
            assert!(e.contains("belongs to uid 4321"), "{e}");
        }
    }

    #[test]
    fn root_keeps_its_runs_under_run_not_in_a_shared_tmp() {
        if std::env::var_os(RUNTIME_DIR_ENV).is_some() || !nix::unistd::geteuid().is_root() {
            return;
        }
        // /run, or (when /run is not in memory) root's own directory in /dev/shm: never
        // the shared temporary directory.
        let p = runs_root_path();
        assert!(
            p == Path::new("/run/llm-sandbox") || p == Path::new("/dev/shm/llm-sandbox-0"),
            "{}",
            p.display()
        );
    }
}
