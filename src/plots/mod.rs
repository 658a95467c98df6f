//! Plot capture for python: matplotlib runs with the non-interactive Agg backend
//! (`MPLBACKEND=Agg`), and a start-up hook (`sitecustomize.py`, put on `PYTHONPATH`) makes
//! `matplotlib.pyplot.show()` save every open figure as `/sandbox/.plots/plot-NNN.png`;
//! figures still open at exit are saved too. The hook does nothing until the program
//! imports `matplotlib.pyplot` (a meta-path finder waits for it), so programs that never
//! plot pay only for reading one small file at start-up.
//!
//! Jobs list the plots among their artifacts (`.plots/plot-001.png`, …); sessions return
//! them with [`crate::Session::take_plots`]; the MCP server sends them as images.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The hook's source (a `sitecustomize` module).
pub const HOOK: &str = include_str!("sitecustomize.py");

/// Where the native sandbox sees the hook's directory (read-only bind).
pub const NATIVE_HOOK_DIR: &str = "/.llm-sandbox/python";

/// Where container sandboxes get the hook's directory (python's run step writes it).
pub const CONTAINER_HOOK_DIR: &str = "/tmp/.llm-sandbox-python";

/// The plots' directory, relative to the workdir.
pub const PLOTS_DIR: &str = ".plots";

/// The artifact pattern that matches captured plots.
pub const PLOTS_GLOB: &str = ".plots/*.png";

/// At most this many plots are read back from one run (the rest are left in the workdir).
pub const MAX_PLOTS: usize = 32;

/// One captured figure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plot {
    /// The file name (`plot-001.png`).
    pub name: String,
    /// PNG bytes.
    pub png: Vec<u8>,
}

/// The PNG file signature.
pub const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Whether a job gets plot capture: python whose code mentions plotting (matplotlib, pylab,
/// seaborn, or any `plot`: pandas' `.plot()` draws with matplotlib too), or that brings
/// python files of its own (they may plot). Other jobs pay nothing for it: no hook, no
/// collection of `.plots/` — what a batch of thousands of samples would feel.
/// (Sessions, and so the MCP server, always capture.)
pub fn wanted(job: &crate::plan::PlannedJob) -> bool {
    job.lang == crate::spec::types::Lang::Python
        && (mentions_plotting(&job.code)
            || job
                .files
                .iter()
                .any(|f| f.dest.ends_with(".py") || f.dest.ends_with(".ipynb")))
}

/// The code names a plotting library or a `plot` call.
pub fn mentions_plotting(code: &str) -> bool {
    ["matplotlib", "pylab", "seaborn", "plot"]
        .iter()
        .any(|w| code.contains(w))
}

/// A job's artifact patterns: its own, plus the plots' when it captures them.
pub fn artifact_globs(job: &crate::plan::PlannedJob) -> Vec<String> {
    let mut globs = job.artifacts.clone();
    if wanted(job) && !globs.iter().any(|g| g == PLOTS_GLOB) {
        globs.push(PLOTS_GLOB.to_string());
    }
    globs
}

/// Writes the hook into `<dir>/python/sitecustomize.py` (world-readable) and returns the
/// directory to put on `PYTHONPATH` (bound read-only into the sandbox).
pub fn write_hook(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let hook_dir = dir.join("python");
    std::fs::create_dir_all(&hook_dir)?;
    std::fs::set_permissions(&hook_dir, std::fs::Permissions::from_mode(0o755))?;
    let file = hook_dir.join("sitecustomize.py");
    std::fs::write(&file, HOOK)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    Ok(hook_dir)
}

/// Puts `dir` last on `PYTHONPATH` in `env` (the job's own entries and installed
/// libraries come first), and sets `MPLBACKEND=Agg` unless the job chose a backend.
pub fn add_to_env(env: &mut Vec<(String, String)>, dir: &str) {
    match env.iter_mut().find(|(k, _)| k == "PYTHONPATH") {
        Some((_, v)) if !v.is_empty() => {
            if !v.split(':').any(|p| p == dir) {
                v.push(':');
                v.push_str(dir);
            }
        }
        Some((_, v)) => *v = dir.to_string(),
        None => env.push(("PYTHONPATH".into(), dir.to_string())),
    }
    if !env.iter().any(|(k, _)| k == "MPLBACKEND") {
        env.push(("MPLBACKEND".into(), "Agg".into()));
    }
}

/// Reads the plots a sandbox left in `workdir/.plots` (host side, after the sandbox
/// ended), never following a symbolic link the sandbox planted. Files that are not PNG
/// images are ignored; at most [`MAX_PLOTS`], each at most `cap` bytes.
pub fn read_dir_safely(workdir: &Path, cap: u64) -> std::io::Result<Vec<Plot>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = workdir.join(PLOTS_DIR);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(vec![]),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    let mut plots = Vec::new();
    for name in names.into_iter().take(MAX_PLOTS) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(dir.join(&name));
        let Ok(f) = f else { continue };
        if !f.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        let mut png = Vec::new();
        f.take(cap).read_to_end(&mut png)?;
        if png.starts_with(PNG_SIGNATURE) {
            plots.push(Plot { name, png });
        }
    }
    Ok(plots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_path_keeps_the_jobs_entries_first() {
        let mut env = vec![("PYTHONPATH".to_string(), "/mine".to_string())];
        add_to_env(&mut env, "/hook");
        assert_eq!(env[0].1, "/mine:/hook");
        add_to_env(&mut env, "/hook");
        assert_eq!(env[0].1, "/mine:/hook", "added once");
        assert!(env.contains(&("MPLBACKEND".into(), "Agg".into())));
        let mut env = vec![("MPLBACKEND".to_string(), "svg".to_string())];
        add_to_env(&mut env, "/hook");
        assert!(env.contains(&("PYTHONPATH".into(), "/hook".into())));
        assert!(env.contains(&("MPLBACKEND".into(), "svg".into())));
    }

    #[test]
    fn reads_pngs_and_skips_links_and_other_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join(PLOTS_DIR);
        std::fs::create_dir(&d).unwrap();
        let mut png = PNG_SIGNATURE.to_vec();
        png.extend_from_slice(b"rest");
        std::fs::write(d.join("plot-001.png"), &png).unwrap();
        std::fs::write(d.join("plot-002.png"), b"not a png").unwrap();
        std::fs::write(d.join("notes.txt"), &png).unwrap();
        std::fs::write(t.path().join("secret.png"), &png).unwrap();
        std::os::unix::fs::symlink(t.path().join("secret.png"), d.join("plot-003.png")).unwrap();
        let plots = read_dir_safely(t.path(), 1 << 20).unwrap();
        assert_eq!(plots.len(), 1);
        assert_eq!(plots[0].name, "plot-001.png");
        assert_eq!(plots[0].png, png);
    }

    #[test]
    fn a_linked_plots_directory_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("x.png"), PNG_SIGNATURE).unwrap();
        std::os::unix::fs::symlink(&elsewhere, t.path().join(PLOTS_DIR)).unwrap();
        assert!(read_dir_safely(t.path(), 1 << 20).unwrap().is_empty());
    }

    #[test]
    fn the_hook_is_written_readable() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = write_hook(t.path()).unwrap();
        let f = d.join("sitecustomize.py");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), HOOK);
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
}
