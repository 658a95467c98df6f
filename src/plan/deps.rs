//! What a job reads from disk, so that `watch` reruns exactly the jobs a change affects.
//!
//! Expansion records each job's [`Dep`]s ([`PlannedJob::deps`](super::PlannedJob::deps))
//! from its spec alone, without touching the disk: the job file, `code_file` or
//! `template_file`, the checker's or interactor's `code_file`, `dataset`, every input `files` entry (a glob stays a glob, so a new
//! match counts), the Dockerfile and its build context, a Pod manifest file.
//! [`resolve`] turns them into [`WatchDep`]s (canonical folders, symlink targets,
//! compiled globs, `.dockerignore`) that match the paths of file-system events.

use crate::spec::load::LoadedFile;
use crate::spec::types::{CasesSpec, FileSpec, JobSpec, PodManifest};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// One thing on disk a job depends on. Paths are absolute (not canonical).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dep {
    /// A file, or a folder and everything under it: the job file, `code_file`,
    /// `template_file`, `dataset`, an input `files` entry, a Dockerfile, a Pod manifest.
    Path(PathBuf),
    /// An input `files` glob (absolute pattern), re-expanded at every plan: a file that
    /// matches it now, or starts to match it, counts.
    Glob(PathBuf),
    /// A Docker build context (the Dockerfile's folder), less what its `.dockerignore`
    /// excludes: a change there means a rebuild.
    Context(PathBuf),
}

/// `p` resolved against a job file's folder: absolute, `..` kept (as the plan does).
pub fn resolve_in(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

/// Whether an input `files` source is a glob (the plan's rule).
pub fn is_glob(src: &str) -> bool {
    src.contains(['*', '?', '[', '{'])
}

/// The deps of one job (`spec` already merged with `[defaults]`) of the job file `file`
/// whose relative paths resolve against `dir`. The job file comes first.
pub fn job_deps(file: &Path, dir: &Path, spec: &JobSpec) -> Vec<Dep> {
    let mut out = vec![Dep::Path(
        std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf()),
    )];
    let mut push = |d: Dep| {
        if !out.contains(&d) {
            out.push(d);
        }
    };
    let judges = [&spec.checker, &spec.interactor]
        .into_iter()
        .flatten()
        .map(|c| &c.code_file);
    for p in [&spec.code_file, &spec.template_file, &spec.dataset]
        .into_iter()
        .chain(judges)
        .flatten()
    {
        push(Dep::Path(resolve_in(dir, p)));
    }
    for f in spec.files.iter().flatten() {
        let src = match f {
            FileSpec::Path(p) => p,
            FileSpec::Mapped(m) => &m.src,
        };
        let p = resolve_in(dir, src);
        push(if is_glob(src) {
            Dep::Glob(p)
        } else {
            Dep::Path(p)
        });
    }
    if let Some(df) = &spec.dockerfile {
        let p = resolve_in(dir, df);
        if let Some(ctx) = p.parent() {
            push(Dep::Context(ctx.to_path_buf()));
        }
        push(Dep::Path(p));
    }
    if let Some(PodManifest::Path(p)) = &spec.pod_manifest {
        push(Dep::Path(resolve_in(dir, p)));
    }
    // Test cases: their input and answer files.
    if let Some(f) = spec.expect.as_ref().and_then(|e| e.stdout_file.as_ref()) {
        push(Dep::Path(resolve_in(dir, f)));
    }
    match &spec.cases {
        Some(CasesSpec::Pattern(p)) if !p.contains("{{") => {
            let inputs = resolve_in(dir, p);
            push(Dep::Glob(inputs.clone()));
            // The answers beside them (`X.out`, `X.ans`).
            if let (Some(parent), Some(name)) = (inputs.parent(), inputs.file_name()) {
                let stem = Path::new(name).file_stem().unwrap_or(name);
                for ext in ["out", "ans"] {
                    let mut n = stem.to_os_string();
                    n.push(".");
                    n.push(ext);
                    push(Dep::Glob(parent.join(n)));
                }
            }
        }
        Some(CasesSpec::List(list)) => {
            for c in list {
                let answer = c.expect.as_ref().and_then(|e| e.stdout_file.as_ref());
                for f in [c.stdin_file.as_ref(), answer].into_iter().flatten() {
                    push(Dep::Path(resolve_in(dir, f)));
                }
            }
        }
        _ => {}
    }
    out
}

/// Everything a job file's jobs depend on (the file itself first): what to re-plan the
/// file on. Computed from the parsed file alone, so it also covers jobs whose expansion
/// failed (a missing `code_file` that is about to be created).
pub fn file_deps(lf: &LoadedFile) -> Vec<Dep> {
    let defaults = lf.spec.defaults.clone().unwrap_or_default();
    let mut out = vec![Dep::Path(
        std::path::absolute(&lf.path).unwrap_or_else(|_| lf.path.clone()),
    )];
    let mut specs: Vec<JobSpec> = lf
        .spec
        .jobs
        .iter()
        .map(|j| super::merge(&defaults, j))
        .collect();
    if specs.is_empty() {
        specs.push(defaults);
    }
    for spec in &specs {
        for d in job_deps(&lf.path, &lf.dir, spec) {
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

/// `p` made absolute with its longest existing prefix canonicalized (symlinks and `..`
/// resolved) and the rest cleaned lexically: the form the paths of file-system events
/// under a canonical watch root take, also for paths that do not exist yet.
pub fn canonical(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let comps: Vec<Component> = abs.components().collect();
    for i in (1..=comps.len()).rev() {
        let prefix: PathBuf = comps[..i].iter().collect();
        if let Ok(mut c) = std::fs::canonicalize(&prefix) {
            for comp in &comps[i..] {
                match comp {
                    Component::ParentDir => {
                        c.pop();
                    }
                    Component::CurDir => {}
                    other => c.push(other.as_os_str()),
                }
            }
            return c;
        }
    }
    abs
}

/// `p` with its folder canonicalized but its last component kept as it is (a symlink
/// stays the link: replacing the link is a change too).
fn canonical_keep_last(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            canonical(parent).join(name)
        }
        _ => canonical(p),
    }
}

/// A [`Dep`] resolved for matching event paths.
#[derive(Debug, Clone)]
pub enum WatchDep {
    /// This path, anything under it (a folder), or a folder above it (created, removed,
    /// renamed).
    Path(PathBuf),
    /// A glob: `base` is its literal leading folder.
    Glob {
        base: PathBuf,
        matcher: globset::GlobMatcher,
        /// Whether matches can lie deeper than `base`'s own entries.
        deep: bool,
    },
    /// A build context and its `.dockerignore` patterns (as the Docker backend reads them).
    Context {
        dir: PathBuf,
        ignore: globset::GlobSet,
    },
}

/// Resolves deps for matching (see [`WatchDep`]); a symlinked file or folder also
/// depends on its target.
pub fn resolve(deps: &[Dep]) -> Vec<WatchDep> {
    let mut out = Vec::with_capacity(deps.len());
    for d in deps {
        match d {
            Dep::Path(p) => {
                let link = canonical_keep_last(p);
                let target = canonical(p);
                if target != link {
                    out.push(WatchDep::Path(target));
                }
                out.push(WatchDep::Path(link));
            }
            Dep::Context(dir) => {
                let dir = canonical(dir);
                let ignore = dockerignore(&dir);
                out.push(WatchDep::Context { dir, ignore });
            }
            Dep::Glob(pattern) => {
                // The literal folders before the first component with a wildcard.
                let comps: Vec<Component> = pattern.components().collect();
                let split = comps
                    .iter()
                    .position(|c| is_glob(&c.as_os_str().to_string_lossy()))
                    .unwrap_or(comps.len());
                let base_raw: PathBuf = comps[..split].iter().collect();
                let rest: Vec<OsString> = comps[split..]
                    .iter()
                    .map(|c| c.as_os_str().to_os_string())
                    .collect();
                let base = canonical(&base_raw);
                let deep = rest.len() > 1 || rest.iter().any(|c| c.to_string_lossy() == "**");
                let full = rest.iter().fold(base.clone(), |acc, c| acc.join(c));
                match globset::GlobBuilder::new(&full.to_string_lossy())
                    .literal_separator(true)
                    .build()
                {
                    Ok(g) => out.push(WatchDep::Glob {
                        base,
                        matcher: g.compile_matcher(),
                        deep,
                    }),
                    // Not a valid glob for globset: watch its folder as a whole.
                    Err(_) => out.push(WatchDep::Path(base)),
                }
            }
        }
    }
    out
}

/// The `.dockerignore` patterns of a build context, read the way the Docker backend
/// reads them when it builds the context.
fn dockerignore(dir: &Path) -> globset::GlobSet {
    let text = std::fs::read_to_string(dir.join(".dockerignore")).unwrap_or_default();
    let mut set = globset::GlobSetBuilder::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Ok(g) = globset::Glob::new(line.trim_start_matches('/')) {
            set.add(g);
        }
    }
    set.build().unwrap_or_else(|_| globset::GlobSet::empty())
}

/// Editor and VCS litter that is never a change worth a rerun when it appears in a
/// folder a job depends on (watchexec ignores the same): swap and backup files, lock
/// files, `.git/`.
pub fn is_litter(rel: &Path) -> bool {
    if rel.components().any(|c| c.as_os_str() == ".git") {
        return true;
    }
    let Some(name) = rel.file_name().map(|n| n.to_string_lossy()) else {
        return false;
    };
    name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".swo")
        || name.ends_with('~')
        || name.starts_with(".#")
        || (name.starts_with('#') && name.ends_with('#'))
        || name == "4913"
        || name == ".DS_Store"
}

impl WatchDep {
    /// Whether a change of `p` (an absolute path under a canonical watch root) affects
    /// this dep.
    pub fn matches(&self, p: &Path) -> bool {
        match self {
            WatchDep::Path(d) => {
                if p == d || d.starts_with(p) {
                    return true;
                }
                p.strip_prefix(d).is_ok_and(|rel| !is_litter(rel))
            }
            WatchDep::Context { dir, ignore } => {
                if dir.starts_with(p) {
                    return true;
                }
                let Ok(rel) = p.strip_prefix(dir) else {
                    return false;
                };
                if is_litter(rel) {
                    return false;
                }
                // The backend skips an ignored folder with everything under it.
                !rel.ancestors()
                    .filter(|a| !a.as_os_str().is_empty())
                    .any(|a| ignore.is_match(a))
            }
            WatchDep::Glob {
                base,
                matcher,
                deep: _,
            } => {
                if base.starts_with(p) {
                    return true;
                }
                let Ok(rel) = p.strip_prefix(base) else {
                    return false;
                };
                if rel.as_os_str().is_empty() {
                    return false;
                }
                // A match, or a file inside a matched folder (copied with it).
                if matcher.is_match(p) {
                    return true;
                }
                !is_litter(rel)
                    && p.ancestors()
                        .skip(1)
                        .take_while(|a| a.starts_with(base) && *a != base.as_path())
                        .any(|a| matcher.is_match(a))
            }
        }
    }

    /// Where to watch for this dep: a folder, and whether recursively. A path that does
    /// not exist yet is watched through its nearest existing folder (its creation shows
    /// there).
    pub fn watch_root(&self) -> (PathBuf, bool) {
        let (path, recursive) = match self {
            WatchDep::Path(d) => match std::fs::metadata(d) {
                Ok(m) if m.is_dir() => (d.clone(), true),
                _ => (
                    d.parent().map(Path::to_path_buf).unwrap_or(d.clone()),
                    false,
                ),
            },
            WatchDep::Context { dir, .. } => (dir.clone(), true),
            WatchDep::Glob { base, deep, .. } => (base.clone(), *deep),
        };
        if path.is_dir() {
            return (path, recursive);
        }
        let existing = path
            .ancestors()
            .find(|a| a.is_dir())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        (existing, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::load::parse_source;

    fn deps_of(dir: &Path, text: &str) -> Vec<Dep> {
        let path = dir.join("jobs.toml");
        std::fs::write(&path, text).unwrap();
        let lf = parse_source(&path, text.to_string()).unwrap();
        file_deps(&lf)
    }

    #[test]
    fn file_deps_cover_every_path_a_job_reads() {
        let d = tempfile::tempdir().unwrap();
        let dir = canonical(d.path());
        let deps = deps_of(
            &dir,
            r#"
[defaults]
lang = "bash"
files = ["shared.txt"]

[[jobs]]
name = "a"
code_file = "a.sh"
files = ["in/*.txt", { src = "data", dest = "d" }]

[[jobs]]
name = "b-{{ index }}"
template_file = "tpl/b.j2"
dataset = "rows.jsonl"
dockerfile = "docker/Dockerfile"

[[jobs]]
name = "c"
code = "true"
cases = [{ stdin = "1" }]
checker = { lang = "cpp", code_file = "judge/check.cpp" }

[[jobs]]
name = "d"
code = "true"
cases = [{ stdin = "1" }]
interactor = { lang = "python", code_file = "judge/interact.py" }
"#,
        );
        let want = vec![
            Dep::Path(dir.join("jobs.toml")),
            Dep::Path(dir.join("a.sh")),
            Dep::Glob(dir.join("in/*.txt")),
            Dep::Path(dir.join("data")),
            Dep::Path(dir.join("tpl/b.j2")),
            Dep::Path(dir.join("rows.jsonl")),
            Dep::Path(dir.join("shared.txt")),
            Dep::Context(dir.join("docker")),
            Dep::Path(dir.join("docker/Dockerfile")),
            Dep::Path(dir.join("judge/check.cpp")),
            Dep::Path(dir.join("judge/interact.py")),
        ];
        assert_eq!(deps, want);
    }

    #[test]
    fn planned_jobs_carry_their_deps_shared_by_rows() {
        let d = tempfile::tempdir().unwrap();
        let dir = canonical(d.path());
        std::fs::write(dir.join("rows.jsonl"), "{\"x\": 1}\n{\"x\": 2}\n").unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        std::fs::write(
            dir.join("jobs.toml"),
            r#"
[[jobs]]
name = "row-{{ index }}"
lang = "bash"
dataset = "rows.jsonl"
template = "echo {{ row.x }}"

[[jobs]]
name = "plain"
lang = "bash"
files = ["a.txt"]
code = "cat a.txt"
"#,
        )
        .unwrap();
        let plan = crate::plan::plan_paths(
            &[dir.join("jobs.toml")],
            &crate::plan::PlanOptions::default(),
        )
        .unwrap();
        let [r0, r1, plain] = &plan.jobs[..] else {
            panic!("three jobs")
        };
        assert!(std::sync::Arc::ptr_eq(&r0.deps, &r1.deps));
        assert_eq!(
            *r0.deps,
            vec![
                Dep::Path(dir.join("jobs.toml")),
                Dep::Path(dir.join("rows.jsonl"))
            ]
        );
        assert_eq!(
            *plain.deps,
            vec![
                Dep::Path(dir.join("jobs.toml")),
                Dep::Path(dir.join("a.txt"))
            ]
        );
    }

    #[test]
    fn matching() {
        let d = tempfile::tempdir().unwrap();
        let dir = canonical(d.path());
        std::fs::create_dir_all(dir.join("in/sub")).unwrap();
        std::fs::create_dir_all(dir.join("ctx/node_modules/x")).unwrap();
        std::fs::write(dir.join("ctx/.dockerignore"), "node_modules\n*.log\n").unwrap();
        let deps = resolve(&[
            Dep::Path(dir.join("a.txt")),
            Dep::Glob(dir.join("in/*.txt")),
            Dep::Context(dir.join("ctx")),
            Dep::Path(dir.join("folder")),
        ]);
        let m = |i: usize, p: &str| deps[i].matches(&dir.join(p));
        assert!(m(0, "a.txt"));
        assert!(!m(0, "b.txt"));
        assert!(!m(0, "a.txt.swp"));
        assert!(m(0, ""), "a change of the folder above counts");
        assert!(m(1, "in/new.txt"), "a new match counts");
        assert!(!m(1, "in/new.md"));
        assert!(!m(1, "in/sub/deep.txt"), "`*` does not cross folders");
        assert!(m(1, "in/sub.txt/inner"), "a file in a matched folder");
        assert!(m(1, "in"), "the glob's folder itself");
        assert!(m(2, "ctx/app.py"));
        assert!(m(2, "ctx/.dockerignore"));
        assert!(!m(2, "ctx/node_modules/x/y.js"), ".dockerignore'd folder");
        assert!(!m(2, "ctx/debug.log"));
        assert!(!m(2, "ctx/.git/index"));
        assert!(m(3, "folder/new/file"), "anything under an input folder");
        assert!(!m(3, "folder/.main.py.swp"));
        assert!(!m(3, "folderx"));
    }

    #[test]
    fn watch_roots() {
        let d = tempfile::tempdir().unwrap();
        let dir = canonical(d.path());
        std::fs::create_dir_all(dir.join("in/sub")).unwrap();
        std::fs::write(dir.join("a.txt"), "").unwrap();
        let deps = resolve(&[
            Dep::Path(dir.join("a.txt")),
            Dep::Path(dir.join("in")),
            Dep::Glob(dir.join("in/*.txt")),
            Dep::Glob(dir.join("in/**/*.txt")),
            Dep::Path(dir.join("missing/deeper/x.py")),
        ]);
        let roots: Vec<_> = deps.iter().map(WatchDep::watch_root).collect();
        assert_eq!(
            roots,
            vec![
                (dir.clone(), false),
                (dir.join("in"), true),
                (dir.join("in"), false),
                (dir.join("in"), true),
                (dir.clone(), false),
            ]
        );
    }

    #[test]
    fn canonical_resolves_dotdot_and_symlinks_of_what_exists() {
        let d = tempfile::tempdir().unwrap();
        let dir = canonical(d.path());
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        assert_eq!(canonical(&dir.join("link/x.txt")), dir.join("real/x.txt"));
        assert_eq!(
            canonical(&dir.join("real/../missing/./y")),
            dir.join("missing/y")
        );
        std::fs::write(dir.join("real/t.txt"), "").unwrap();
        std::os::unix::fs::symlink(dir.join("real/t.txt"), dir.join("l.txt")).unwrap();
        let w = resolve(&[Dep::Path(dir.join("l.txt"))]);
        assert!(w.iter().any(|d| d.matches(&dir.join("real/t.txt"))));
        assert!(w.iter().any(|d| d.matches(&dir.join("l.txt"))));
    }
}
