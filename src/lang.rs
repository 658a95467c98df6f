//! One table of languages: file name, compile and run commands, package manager, default
//! image, host toolchain probe. Adding a language is one entry in [`TABLE`].

use crate::spec::types::Lang;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Placeholders in commands: `{file}` the source file name, `{class}` the Java class name,
/// `{mem_mb}` the memory limit in MiB (for runtimes that size their heap themselves).
#[derive(Debug)]
pub struct LangSpec {
    pub lang: Lang,
    /// Source file name inside `/sandbox` (Java derives it from the public class).
    pub file: &'static str,
    /// Compile command (argv), when the language compiles.
    pub compile: Option<&'static [&'static str]>,
    /// Run command (argv); job `args` are appended.
    pub run: &'static [&'static str],
    /// Host programs that must exist (first is the main toolchain program).
    pub tools: &'static [&'static str],
    /// Debian package(s) that provide the toolchain (for messages and `doctor`).
    pub debian_packages: &'static str,
    /// Package-manager command of the prepare phase; `{libs}` expands to the libraries.
    pub install: &'static str,
    /// Default container image (built locally by `scripts/build-images`).
    pub default_image: &'static str,
    /// Extra environment of compile and run steps.
    pub env: &'static [(&'static str, &'static str)],
    /// Whether an address-space rlimit can stand in for a memory cgroup (false for
    /// runtimes that reserve huge virtual ranges: the JVM, Go, node).
    pub address_space_limit_ok: bool,
}

pub static TABLE: &[LangSpec] = &[
    LangSpec {
        lang: Lang::Python,
        file: "main.py",
        compile: None,
        run: &["python3", "-B", "{file}"],
        tools: &["python3"],
        debian_packages: "python3",
        install: "pip install --no-cache-dir {libs}",
        default_image: "llm-sandbox/python:latest",
        env: &[("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1"), ("MPLBACKEND", "Agg")],
        address_space_limit_ok: true,
    },
    LangSpec {
        lang: Lang::Javascript,
        file: "main.js",
        compile: None,
        run: &["node", "--max-old-space-size={mem_mb}", "{file}"],
        tools: &["node"],
        debian_packages: "nodejs",
        install: "npm install --no-audit --no-fund {libs}",
        default_image: "llm-sandbox/node:latest",
        env: &[],
        address_space_limit_ok: false,
    },
    LangSpec {
        lang: Lang::Typescript,
        file: "main.ts",
        compile: Some(&[
            "tsc", "--target", "es2020", "--module", "commonjs", "--strict", "false",
            "--esModuleInterop", "--skipLibCheck", "--types", "node", "--outDir", ".", "{file}",
        ]),
        run: &["node", "--max-old-space-size={mem_mb}", "main.js"],
        tools: &["tsc", "node"],
        debian_packages: "nodejs and `npm install -g typescript @types/node`",
        install: "npm install --no-audit --no-fund {libs}",
        default_image: "llm-sandbox/node:latest",
        env: &[],
        address_space_limit_ok: false,
    },
    LangSpec {
        lang: Lang::Java,
        file: "Main.java",
        compile: Some(&["javac", "-J-Xmx256m", "-J-XX:+UseSerialGC", "-J-XX:TieredStopAtLevel=1", "-encoding", "UTF-8", "-d", ".", "{file}"]),
        run: &["java", "-Xmx{mem_mb}m", "-Xss8m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", ".", "{class}"],
        tools: &["javac", "java"],
        debian_packages: "default-jdk-headless",
        install: "true",
        default_image: "llm-sandbox/java:latest",
        env: &[],
        address_space_limit_ok: false,
    },
    LangSpec {
        lang: Lang::Cpp,
        file: "main.cpp",
        compile: Some(&["g++", "-O2", "-std=c++17", "-pipe", "-o", "main", "{file}", "-lm"]),
        run: &["./main"],
        tools: &["g++"],
        debian_packages: "g++",
        install: "true",
        default_image: "llm-sandbox/cpp:latest",
        env: &[],
        address_space_limit_ok: true,
    },
    LangSpec {
        lang: Lang::C,
        file: "main.c",
        compile: Some(&["gcc", "-O2", "-std=gnu11", "-pipe", "-o", "main", "{file}", "-lm"]),
        run: &["./main"],
        tools: &["gcc"],
        debian_packages: "gcc",
        install: "true",
        default_image: "llm-sandbox/cpp:latest",
        env: &[],
        address_space_limit_ok: true,
    },
    LangSpec {
        lang: Lang::Go,
        file: "main.go",
        compile: Some(&["go", "build", "-o", "main", "{file}"]),
        run: &["./main"],
        tools: &["go"],
        debian_packages: "golang-go",
        install: "go install {libs}",
        default_image: "llm-sandbox/go:latest",
        env: &[("GOCACHE", "/tmp/.gocache"), ("GOPATH", "/tmp/.gopath"), ("GO111MODULE", "auto"), ("GOFLAGS", "-buildvcs=false"), ("GOTOOLCHAIN", "local"), ("CGO_ENABLED", "0")],
        address_space_limit_ok: false,
    },
    LangSpec {
        lang: Lang::Ruby,
        file: "main.rb",
        compile: None,
        run: &["ruby", "{file}"],
        tools: &["ruby"],
        debian_packages: "ruby",
        install: "gem install --no-document {libs}",
        default_image: "llm-sandbox/ruby:latest",
        env: &[],
        address_space_limit_ok: true,
    },
    LangSpec {
        lang: Lang::Rust,
        file: "main.rs",
        compile: Some(&["rustc", "--edition", "2021", "-O", "-o", "main", "{file}"]),
        run: &["./main"],
        tools: &["rustc"],
        debian_packages: "rustc",
        install: "true",
        default_image: "llm-sandbox/rust:latest",
        env: &[],
        address_space_limit_ok: true,
    },
    LangSpec {
        lang: Lang::R,
        file: "main.R",
        compile: None,
        run: &["Rscript", "--vanilla", "{file}"],
        tools: &["Rscript"],
        debian_packages: "r-base-core",
        install: "Rscript -e 'install.packages(commandArgs(TRUE), repos=\"https://cloud.r-project.org\")' {libs}",
        default_image: "llm-sandbox/r:latest",
        env: &[],
        address_space_limit_ok: true,
    },
    LangSpec {
        lang: Lang::Bash,
        file: "main.sh",
        compile: None,
        run: &["bash", "{file}"],
        tools: &["bash"],
        debian_packages: "bash",
        install: "apt-get install -y {libs}",
        default_image: "llm-sandbox/bash:latest",
        env: &[],
        address_space_limit_ok: true,
    },
];

pub fn spec(lang: Lang) -> &'static LangSpec {
    TABLE
        .iter()
        .find(|s| s.lang == lang)
        .expect("every language has a table entry")
}

/// The source file name for this program (Java: the public class's name).
pub fn source_file(lang: Lang, code: &str) -> String {
    match lang {
        Lang::Java => format!("{}.java", java_main_class(code)),
        _ => spec(lang).file.to_string(),
    }
}

/// The class to run: the public class, else the first class declaring `main`, else `Main`.
pub fn java_main_class(code: &str) -> String {
    static PUBLIC: OnceLock<regex::Regex> = OnceLock::new();
    let re = PUBLIC.get_or_init(|| {
        regex::Regex::new(
            r"(?m)^\s*public\s+(?:final\s+|abstract\s+)*class\s+([A-Za-z_$][A-Za-z0-9_$]*)",
        )
        .expect("static regex")
    });
    if let Some(c) = re.captures(code) {
        return c[1].to_string();
    }
    static ANY: OnceLock<regex::Regex> = OnceLock::new();
    let re = ANY.get_or_init(|| {
        regex::Regex::new(r"(?m)^\s*(?:final\s+)?class\s+([A-Za-z_$][A-Za-z0-9_$]*)")
            .expect("static regex")
    });
    re.captures(code)
        .map(|c| c[1].to_string())
        .unwrap_or_else(|| "Main".to_string())
}

/// Expands the placeholders of a command template.
pub fn expand_command(template: &[&str], file: &str, class: &str, mem_mb: u64) -> Vec<String> {
    template
        .iter()
        .map(|a| {
            a.replace("{file}", file)
                .replace("{class}", class)
                .replace("{mem_mb}", &mem_mb.to_string())
        })
        .collect()
}

/// A toolchain found on the host, for the native backend.
#[derive(Debug, Clone)]
pub struct HostToolchain {
    /// Absolute paths of `tools`, in order (inside the sandbox, the same paths).
    pub programs: Vec<PathBuf>,
    /// Host directories to bind read-only into the sandbox (toolchains outside the
    /// standard system directories, e.g. a rustup sysroot).
    pub binds: Vec<PathBuf>,
    /// Extra PATH entries inside the sandbox.
    pub path: Vec<PathBuf>,
    /// Extra arguments of the compile command found by the probe (TypeScript's typeRoots).
    pub compile_extra: Vec<String>,
}

/// Directories the native sandbox always mounts read-only.
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt",
];

/// Search order for toolchain programs: system directories first (a user's shims under
/// `$HOME` often depend on files the sandbox does not show), then `$PATH`.
fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/local/bin", "/usr/bin", "/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(p) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&p) {
            if d.is_absolute() && !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub fn which(program: &str) -> Option<PathBuf> {
    search_path()
        .into_iter()
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn under_system_dirs(p: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| p.starts_with(d))
}

/// The error of a toolchain program missing on the host: names the package to install.
pub fn missing_tool(lang: Lang, tool: &str) -> String {
    let spec = spec(lang);
    format!(
        "`{tool}` was not found on this host (needed for {lang} on the native backend): install {} (e.g. `apt-get install {}`), or run the job with `backend = \"docker\"`",
        spec.debian_packages,
        spec.debian_packages.split_whitespace().next().unwrap_or(spec.debian_packages)
    )
}

/// Finds the toolchain of `lang` on this host. `Err` names the missing program and the
/// package to install.
pub fn probe_host(lang: Lang) -> Result<HostToolchain, String> {
    let spec = spec(lang);
    let mut programs = Vec::new();
    let mut binds: Vec<PathBuf> = Vec::new();
    let mut path = Vec::new();
    for tool in spec.tools {
        let Some(found) = which(tool) else {
            return Err(missing_tool(lang, tool));
        };
        let mut program = found.clone();
        // rustup proxies (~/.cargo/bin/rustc) need rustup's home: use the real toolchain.
        if lang == Lang::Rust && !under_system_dirs(&found) {
            if let Some(sysroot) = rust_sysroot(&found) {
                program = sysroot.join("bin").join(tool);
                binds.push(sysroot.clone());
                path.push(sysroot.join("bin"));
            }
        }
        let real = std::fs::canonicalize(&program).unwrap_or(program.clone());
        if !under_system_dirs(&real) && !binds.iter().any(|b| real.starts_with(b)) {
            // A toolchain installed under a prefix (…/bin/tool): show that prefix.
            let prefix = real
                .parent()
                .and_then(|bin| bin.parent())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| real.parent().unwrap_or(Path::new("/")).to_path_buf());
            if prefix == Path::new("/") || is_sensitive(&prefix) {
                return Err(format!(
                    "`{tool}` resolves to {} which the native sandbox cannot show safely; install {} system-wide",
                    real.display(),
                    spec.debian_packages
                ));
            }
            path.push(real.parent().unwrap_or(Path::new("/")).to_path_buf());
            binds.push(prefix);
        }
        programs.push(program);
    }
    let mut compile_extra = Vec::new();
    if lang == Lang::Typescript {
        // tsc lives in <node_modules>/typescript/bin/tsc; @types/node beside it.
        let real = std::fs::canonicalize(&programs[0]).unwrap_or(programs[0].clone());
        let types = real.ancestors().nth(3).map(|nm| nm.join("@types"));
        match types.filter(|t| t.join("node").is_dir()) {
            Some(t) => compile_extra = vec!["--typeRoots".into(), t.display().to_string()],
            None => {
                return Err(format!(
                    "the Node.js type definitions were not found next to {} (needed for typescript on the native backend): install them with `npm install -g @types/node`",
                    real.display()
                ))
            }
        }
    }
    Ok(HostToolchain {
        programs,
        binds,
        path,
        compile_extra,
    })
}

/// Directories that must never be bound into a sandbox as a whole.
fn is_sensitive(p: &Path) -> bool {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    p == Path::new("/root")
        || p == Path::new("/home")
        || p == Path::new("/etc")
        || p == Path::new("/tmp")
        || p == Path::new("/var")
        || p == Path::new("/run")
        || home.as_deref() == Some(p)
}

fn rust_sysroot(rustc: &Path) -> Option<PathBuf> {
    let out = Command::new(rustc)
        .arg("--print")
        .arg("sysroot")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let p = PathBuf::from(s.trim());
    p.join("bin/rustc").exists().then_some(p)
}

/// Cached probe results, one per language per process.
pub fn probe_cached(lang: Lang) -> Result<HostToolchain, String> {
    static CACHE: OnceLock<
        std::sync::Mutex<std::collections::HashMap<Lang, Result<HostToolchain, String>>>,
    > = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = cache.lock().expect("probe cache").get(&lang) {
        return r.clone();
    }
    let r = probe_host(lang);
    cache.lock().expect("probe cache").insert(lang, r.clone());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_has_one_entry() {
        for l in Lang::ALL {
            assert_eq!(TABLE.iter().filter(|s| s.lang == l).count(), 1, "{l}");
        }
    }

    #[test]
    fn java_class_detection() {
        assert_eq!(java_main_class("public class Solution { }"), "Solution");
        assert_eq!(
            java_main_class("import x;\nclass Foo { public static void main(String[] a){} }"),
            "Foo"
        );
        assert_eq!(java_main_class("interface X {}"), "Main");
        assert_eq!(source_file(Lang::Java, "public final class A {}"), "A.java");
        assert_eq!(source_file(Lang::Python, ""), "main.py");
    }

    #[test]
    fn missing_toolchain_names_the_package() {
        let m = missing_tool(Lang::Go, "go");
        assert!(
            m.contains("`go` was not found") && m.contains("apt-get install golang-go"),
            "{m}"
        );
        let m = missing_tool(Lang::R, "Rscript");
        assert!(m.contains("apt-get install r-base-core"), "{m}");
        assert!(which("definitely-not-a-real-tool-xyz").is_none());
    }

    #[test]
    fn placeholders() {
        let v = expand_command(
            &["java", "-Xmx{mem_mb}m", "{class}", "{file}"],
            "A.java",
            "A",
            256,
        );
        assert_eq!(v, ["java", "-Xmx256m", "A", "A.java"]);
    }
}
