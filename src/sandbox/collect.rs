//! Which files of a workdir are copied out after a job (artifacts, `expect.files`): the
//! one selection of every backend, made where the files are (the native sandbox's init,
//! a warm container's agent) after every process of the job is dead. Regular files only;
//! a wanted path that is a symbolic link, or a directory that cannot be listed, is refused
//! with why (never a silent loss); links are never followed.

use std::path::Path;

/// The files to copy out, relative to the workdir, and what was refused (path, why).
#[derive(Debug, Default, PartialEq)]
pub struct Wanted {
    pub files: Vec<String>,
    pub refused: Vec<(String, String)>,
}

/// The regular files below `root` that match one of `globs` (relative paths, `*` within a
/// path component) or are one of `paths`.
pub fn select(root: &Path, globs: &[String], paths: &[String]) -> Wanted {
    let mut w = Wanted::default();
    if globs.is_empty() && paths.is_empty() {
        return w;
    }
    let set = {
        let mut b = globset::GlobSetBuilder::new();
        for g in globs {
            if let Ok(glob) = globset::GlobBuilder::new(g).literal_separator(true).build() {
                b.add(glob);
            }
        }
        b.build().unwrap_or_else(|_| globset::GlobSet::empty())
    };
    let wanted = |rel: &str| set.is_match(rel) || paths.iter().any(|p| p == rel);
    let mut unreadable = Vec::new();
    walk(
        root,
        &mut |rel, meta| {
            if meta.file_type().is_symlink() {
                if wanted(rel) {
                    w.refused
                        .push((rel.to_string(), "is a symbolic link".to_string()));
                }
            } else if meta.is_file() && wanted(rel) {
                w.files.push(rel.to_string());
            }
        },
        &mut |rel, e| unreadable.push((format!("{rel}/"), format!("cannot be listed: {e}"))),
    );
    w.refused.extend(unreadable);
    w
}

/// Visits every entry below `dir` (sorted by name within a directory), depth first, with
/// its path relative to `dir` and its own metadata (links are not followed). Iterative:
/// the depth of the tree is the job's to choose, the collector's stack is not. A directory that
/// cannot be read is reported to `unreadable`.
fn walk(
    dir: &Path,
    f: &mut dyn FnMut(&str, &std::fs::Metadata),
    unreadable: &mut dyn FnMut(&str, String),
) {
    // (directory, its relative path)
    let mut pending: Vec<(std::path::PathBuf, String)> = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = pending.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) => {
                unreadable(&prefix, e.to_string());
                continue;
            }
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for e in entries {
            let name = e.file_name().to_string_lossy().to_string();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            f(&rel, &meta);
            if meta.is_dir() {
                subdirs.push((e.path(), rel));
            }
        }
        // Popped in name order.
        pending.extend(subdirs.into_iter().rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_wanted_regular_files_at_any_depth_and_refuses_links() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("d/".repeat(300));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("out.txt"), "x").unwrap();
        std::fs::write(t.path().join("a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("b.txt")).unwrap();
        let w = select(t.path(), &["*.txt".into()], &["d/d/x".into()]);
        assert_eq!(w.files, ["a.txt"]);
        assert_eq!(
            w.refused,
            [("b.txt".to_string(), "is a symbolic link".to_string())]
        );
        let deep_out = format!("{}out.txt", "d/".repeat(300));
        let w = select(t.path(), &[], std::slice::from_ref(&deep_out));
        assert_eq!(w.files, [deep_out]);
    }
}
