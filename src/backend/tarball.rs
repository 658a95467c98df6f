//! Tar streams in and out of containers. Going in: the program and the input files, owned by
//! the sandbox user. Coming out: only regular files and directories are written, beneath a
//! fresh directory, never through a symlink, never outside it; everything else is refused
//! and reported (Judge0's CVE-2024-28185 came from following a planted link).

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// The uid/gid of the sandbox user of containers and pods (the user `sandbox` of the
/// default images). Containers have no user namespace: this is a uid of the host's too, so
/// it is one no host user has (not 1000, the first user of most machines), and whatever
/// per-user kernel count a job uses up is not a host user's (README, "Security").
pub const SANDBOX_UID: u64 = 60_999;

/// The command that unpacks a tar stream from stdin into the workdir of a container or
/// pod (`tar` of the image; owners from the archive ignored, mtimes set to now).
pub fn untar_argv() -> Vec<String> {
    [
        "tar",
        "-x",
        "--no-same-owner",
        "-m",
        "-C",
        "/sandbox",
        "-f",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The command that writes a tar of `path` (relative to the workdir) to stdout, refusing
/// when any component of the path is a symbolic link (tar would follow a linked directory
/// on the way to the member; links inside are stored as links, never followed).
pub fn tar_argv(path: &str) -> Vec<String> {
    const SCRIPT: &str = r#"p=""; IFS=/
for c in $1; do
  p="${p:+$p/}$c"
  if [ -L "/sandbox/$p" ]; then echo "symbolic link (never followed): $p" >&2; exit 3; fi
done
exec tar -c -C /sandbox -- "$1""#;
    vec![
        "/bin/sh".into(),
        "-c".into(),
        SCRIPT.into(),
        "sh".into(),
        path.into(),
    ]
}

/// A tar archive of `(relative path, contents, mode)` entries, with parent directories.
pub fn build(entries: &[(String, Vec<u8>, u32)]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut dirs: Vec<String> = Vec::new();
    for (path, data, mode) in entries {
        let rel = normalize(path).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{path:?} is not a relative path inside the workdir"),
            )
        })?;
        let mut parent = rel.parent();
        let mut missing = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let s = p.to_string_lossy().into_owned();
            if !dirs.contains(&s) {
                missing.push(s);
            }
            parent = p.parent();
        }
        for d in missing.into_iter().rev() {
            let mut h = header(tar::EntryType::Directory, 0o755, 0, mtime);
            b.append_data(&mut h, format!("{d}/"), std::io::empty())?;
            dirs.push(d);
        }
        let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64, mtime);
        b.append_data(&mut h, &rel, data.as_slice())?;
    }
    b.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(SANDBOX_UID);
    h.set_gid(SANDBOX_UID);
    h.set_mtime(mtime);
    h
}

/// `a/./b` → `a/b`; None for absolute paths, `..`, or an empty path.
pub fn normalize(p: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// What [`extract`] wrote and what it refused (path, why).
#[derive(Debug, Default)]
pub struct Extracted {
    pub files: Vec<String>,
    pub refused: Vec<(String, String)>,
    /// The archive held more than the cap: extraction stopped.
    pub truncated: bool,
}

/// Extracts `archive` beneath `dest` (created fresh by the caller): regular files and
/// directories only, at most `cap` bytes of file contents in all.
pub fn extract(archive: impl Read, dest: &Path, cap: u64) -> std::io::Result<Extracted> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = Extracted::default();
    let mut total = 0u64;
    let mut ar = tar::Archive::new(archive);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = normalize(&raw) else {
            if !matches!(raw.as_str(), "." | "./" | "") {
                out.refused
                    .push((raw, "path outside the workdir".to_string()));
            }
            continue;
        };
        let shown = rel.display().to_string();
        let kind = entry.header().entry_type();
        let target = dest.join(&rel);
        // Every ancestor must be a real directory we made (never a link).
        if let Err(why) = ensure_dirs(dest, rel.parent()) {
            out.refused.push((shown, why));
            continue;
        }
        match kind {
            tar::EntryType::Directory => {
                if let Err(why) = ensure_dirs(dest, Some(&rel)) {
                    out.refused.push((shown, why));
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().unwrap_or(0);
                if total + size > cap {
                    out.truncated = true;
                    out.refused.push((
                        shown,
                        format!("the files copied out exceed {cap} bytes in all"),
                    ));
                    break;
                }
                total += size;
                // Its permission bits, at most rwxr-xr-x (a built program stays
                // executable: a job's cases run it), never less than rw-r--r--.
                let mode = entry.header().mode().unwrap_or(0o644) & 0o755 | 0o644;
                let mut f = match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(mode)
                    .open(&target)
                {
                    Ok(f) => f,
                    Err(e) => {
                        out.refused.push((shown, format!("cannot create it: {e}")));
                        continue;
                    }
                };
                std::io::copy(&mut (&mut entry).take(size), &mut f)?;
                f.flush()?;
                out.files.push(shown);
            }
            tar::EntryType::Symlink => out
                .refused
                .push((shown, "symbolic link (never followed)".into())),
            tar::EntryType::Link => out
                .refused
                .push((shown, "hard link (only regular files are copied)".into())),
            _ => out
                .refused
                .push((shown, "not a regular file or directory".into())),
        }
    }
    Ok(out)
}

/// Creates `dest/rel` and its ancestors as directories; refuses when one exists as
/// anything but a directory (a link, a file).
fn ensure_dirs(dest: &Path, rel: Option<&Path>) -> Result<(), String> {
    let Some(rel) = rel else { return Ok(()) };
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", cur.display())),
            Err(_) => std::fs::create_dir(&cur).map_err(|e| e.to_string())?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sandbox_user_is_one_uid_everywhere() {
        let uid = super::SANDBOX_UID.to_string();
        assert_eq!(crate::backend::docker::SANDBOX_USER, format!("{uid}:{uid}"));
        assert_ne!(super::SANDBOX_UID, 1000, "the first user of most machines");
        let script = include_str!("../../scripts/build-images");
        assert!(
            script.contains(&format!("sandbox_uid={uid}\n")),
            "scripts/build-images makes the user `sandbox` with another uid"
        );
    }

    use super::*;

    #[test]
    fn round_trip_with_parents() {
        let t = build(&[
            ("a/b/c.txt".into(), b"hi".to_vec(), 0o644),
            ("main.py".into(), b"print(1)".to_vec(), 0o644),
        ])
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let x = extract(t.as_slice(), d.path(), 1 << 20).unwrap();
        assert_eq!(x.files, vec!["a/b/c.txt", "main.py"]);
        assert!(x.refused.is_empty());
        assert_eq!(std::fs::read(d.path().join("a/b/c.txt")).unwrap(), b"hi");
    }

    #[test]
    fn refuses_escapes_links_and_oversize() {
        assert!(build(&[("../x".into(), vec![], 0o644)]).is_err());
        assert!(build(&[("/etc/x".into(), vec![], 0o644)]).is_err());
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "/etc/shadow").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "hard", "link").unwrap();
        // A raw `../` name, written past the builder's own checks.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &[b'x'][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(10);
        h.set_mode(0o644);
        b.append_data(&mut h, "big", &[0u8; 10][..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        let x = extract(bytes.as_slice(), &d.path().join("."), 5).unwrap();
        let why: Vec<&str> = x.refused.iter().map(|(p, _)| p.as_str()).collect();
        assert!(why.contains(&"link") && why.contains(&"hard") && why.contains(&"big"));
        assert!(why.contains(&"../escape"), "{why:?}");
        assert!(x.truncated);
        assert!(!d.path().join("link").exists());
        assert!(!d.path().parent().unwrap().join("escape").exists());
    }
}
