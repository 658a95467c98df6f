//! One table of languages: file name, compile and run commands, package manager, default
//! image, host toolchain probe. Adding a language is one entry in [`TABLE`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Languages (README, "A job file"). A job file names one by its name or an alias of its
/// table entry (`py`, `js`, `c++`...).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Python,
    Javascript,
    Typescript,
    Java,
    Cpp,
    C,
    Go,
    Ruby,
    Rust,
    R,
    Bash,
}

impl Lang {
    pub const ALL: [Lang; 11] = [
        Lang::Python,
        Lang::Javascript,
        Lang::Typescript,
        Lang::Java,
        Lang::Cpp,
        Lang::C,
        Lang::Go,
        Lang::Ruby,
        Lang::Rust,
        Lang::R,
        Lang::Bash,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Javascript => "javascript",
            Lang::Typescript => "typescript",
            Lang::Java => "java",
            Lang::Cpp => "cpp",
            Lang::C => "c",
            Lang::Go => "go",
            Lang::Ruby => "ruby",
            Lang::Rust => "rust",
            Lang::R => "r",
            Lang::Bash => "bash",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        Lang::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Lang {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &[
            "python",
            "javascript",
            "typescript",
            "java",
            "cpp",
            "c",
            "go",
            "ruby",
            "rust",
            "r",
            "bash",
        ];
        let s = String::deserialize(d)?;
        // Exact names only here (case matters in a job file); aliases as in the table.
        Lang::parse(&s)
            .or_else(|| {
                TABLE
                    .iter()
                    .find(|l| l.aliases.contains(&s.as_str()))
                    .map(|l| l.lang)
            })
            .ok_or_else(|| serde::de::Error::unknown_variant(&s, NAMES))
    }
}

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
    /// `libraries` on the container backends: the prepare phase's shell command (run as
    /// root in a container of the image; `{libs}` expands to the names, validated before)
    /// and the image changes the template needs. None: the language has no package manager
    /// of its own (use `setup` or a Dockerfile).
    pub container_install: Option<ContainerInstall>,
    /// `libraries` on the native backend: installed into a directory that later sandboxes
    /// see read-only. None: install them on the host, or use a container backend.
    pub native_install: Option<NativeInstall>,
    /// Other names the language goes by (the MCP server, `exec --lang`).
    pub aliases: &'static [&'static str],
    /// File extensions of its programs (`exec FILE` infers the language from them).
    pub extensions: &'static [&'static str],
    /// Extra arguments of the compile step in the default container images.
    pub container_compile_extra: &'static [&'static str],
    /// Default container image (built locally by `scripts/build-images`).
    pub default_image: &'static str,
    /// Extra environment of compile and run steps.
    pub env: &'static [(&'static str, &'static str)],
    /// Whether an address-space rlimit can stand in for a memory cgroup (false for
    /// runtimes that reserve huge virtual ranges: the JVM, Go, node).
    pub address_space_limit_ok: bool,
    /// For a language whose uncaught errors exit 1 (testlib's "wrong answer"): how a
    /// checker or interactor in it is run so that they exit 3 ("the checker failed").
    pub judge_wrapper: Option<JudgeWrapper>,
}

/// How a checker or interactor (README, "Test cases") turns an uncaught error into a
/// message on stderr and exit code 3; every other exit (the language's own `exit(n)`)
/// stays the program's. Only for a language without a compile step: the checker's source is
/// staged as it is (`backend::cases::checker_files`).
#[derive(Debug)]
pub enum JudgeWrapper {
    /// The program is written as `program`, and the language's source file
    /// (`LangSpec::file`) is `source`, which runs it.
    Runs {
        program: &'static str,
        source: &'static str,
    },
    /// A file `name` holding `source` is written beside the program, which stays the
    /// language's source file, and the runtime loads it first: the environment variable
    /// `env` is set to `value`.
    Preloads {
        name: &'static str,
        source: &'static str,
        env: &'static str,
        value: &'static str,
    },
}

/// How `libraries` are installed on the container backends.
#[derive(Debug)]
pub struct ContainerInstall {
    /// Shell command; `{libs}` expands to the library names.
    pub command: &'static str,
    /// Dockerfile instructions the template image gets (e.g. `ENV NODE_PATH=...`).
    pub changes: &'static [&'static str],
}

/// How `libraries` are installed on the native backend: `argv` (`{tool}` is the language's
/// first host program, `{npm}` the host's npm, `{dir}` the install directory), then the
/// library names; jobs get `env_var=env_value` (`{dir}` expanded).
#[derive(Debug)]
pub struct NativeInstall {
    pub argv: &'static [&'static str],
    pub env_var: &'static str,
    pub env_value: &'static str,
}

/// Python's [`JudgeWrapper`]: `judged.py` run as `python3 main.py` would run it (`__main__`,
/// the same `sys.argv`); an uncaught exception's traceback (from the program's own first
/// frame) and exit 3.
const PYTHON_JUDGE_WRAPPER: &str = r#"# llm-sandbox: runs the checker or interactor in judged.py; an uncaught error exits 3
import os, runpy, sys, traceback
path = os.path.abspath("judged.py")
try:
    runpy.run_path(path, run_name="__main__")
except SystemExit:
    raise
except BaseException as e:
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    traceback.print_exception(type(e), e, tb)
    sys.exit(3)
"#;

/// JavaScript's [`JudgeWrapper`]: loaded before the checker (`node --require`), so that the
/// checker stays the main module (`require.main === module`); an uncaught exception or
/// unhandled rejection is printed, and exit 3.
const JAVASCRIPT_JUDGE_HOOK: &str = r#"// llm-sandbox: a checker's or interactor's uncaught error exits 3
process.on("uncaughtException", (e) => {
  console.error(e);
  process.exit(3);
});
"#;

pub static TABLE: &[LangSpec] = &[
    LangSpec {
        lang: Lang::Python,
        file: "main.py",
        compile: None,
        run: &["python3", "-B", "{file}"],
        tools: &["python3"],
        debian_packages: "python3",
        container_install: Some(ContainerInstall { command: "PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore {libs}", changes: &[] }),
        native_install: Some(NativeInstall { argv: &["{tool}", "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check", "--no-warn-script-location", "--target", "{dir}", "--"], env_var: "PYTHONPATH", env_value: "{dir}" }),
        aliases: &["py", "python3"],
        extensions: &["py"],
        container_compile_extra: &[],
        default_image: "llm-sandbox/python:latest",
        env: &[("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1"), ("MPLBACKEND", "Agg")],
        address_space_limit_ok: true,
        judge_wrapper: Some(JudgeWrapper::Runs { program: "judged.py", source: PYTHON_JUDGE_WRAPPER }),
    },
    LangSpec {
        lang: Lang::Javascript,
        file: "main.js",
        compile: None,
        run: &["node", "--max-old-space-size={mem_mb}", "{file}"],
        tools: &["node"],
        debian_packages: "nodejs",
        container_install: Some(ContainerInstall { command: "npm install -g --no-audit --no-fund {libs}", changes: &["ENV NODE_PATH=/usr/local/lib/node_modules"] }),
        native_install: Some(NativeInstall { argv: &["{npm}", "install", "--no-audit", "--no-fund", "--no-save", "--prefix", "{dir}"], env_var: "NODE_PATH", env_value: "{dir}/node_modules" }),
        aliases: &["js", "node", "nodejs", "node.js"],
        extensions: &["js", "mjs", "cjs"],
        container_compile_extra: &[],
        default_image: "llm-sandbox/node:latest",
        env: &[],
        address_space_limit_ok: false,
        judge_wrapper: Some(JudgeWrapper::Preloads { name: "judge_hook.js", source: JAVASCRIPT_JUDGE_HOOK, env: "NODE_OPTIONS", value: "--require=/sandbox/judge_hook.js" }),
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
        container_install: Some(ContainerInstall { command: "npm install -g --no-audit --no-fund {libs}", changes: &["ENV NODE_PATH=/usr/local/lib/node_modules"] }),
        native_install: Some(NativeInstall { argv: &["{npm}", "install", "--no-audit", "--no-fund", "--no-save", "--prefix", "{dir}"], env_var: "NODE_PATH", env_value: "{dir}/node_modules" }),
        aliases: &["ts"],
        extensions: &["ts"],
        container_compile_extra: &["--typeRoots", "/usr/local/lib/node_modules/@types"],
        default_image: "llm-sandbox/node:latest",
        env: &[],
        address_space_limit_ok: false,
        judge_wrapper: None,
    },
    LangSpec {
        lang: Lang::Java,
        file: "Main.java",
        compile: Some(&["javac", "-J-Xmx256m", "-J-XX:+UseSerialGC", "-J-XX:TieredStopAtLevel=1", "-encoding", "UTF-8", "-d", ".", "{file}"]),
        run: &["java", "-Xmx{mem_mb}m", "-Xss8m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", ".", "{class}"],
        tools: &["javac", "java"],
        debian_packages: "default-jdk-headless",
        container_install: None,
        native_install: None,
        aliases: &[],
        extensions: &["java"],
        container_compile_extra: &[],
        default_image: "llm-sandbox/java:latest",
        env: &[],
        address_space_limit_ok: false,
        judge_wrapper: None,
    },
    LangSpec {
        lang: Lang::Cpp,
        file: "main.cpp",
        compile: Some(&["g++", "-O2", "-std=c++17", "-pipe", "-o", "main", "{file}", "-lm"]),
        run: &["./main"],
        tools: &["g++"],
        debian_packages: "g++",
        container_install: None,
        native_install: None,
        aliases: &["c++", "cxx"],
        extensions: &["cpp", "cc", "cxx", "c++"],
        container_compile_extra: &[],
        default_image: "llm-sandbox/cpp:latest",
        env: &[],
        address_space_limit_ok: true,
        judge_wrapper: None,
    },
    LangSpec {
        lang: Lang::C,
        file: "main.c",
        compile: Some(&["gcc", "-O2", "-std=gnu11", "-pipe", "-o", "main", "{file}", "-lm"]),
        run: &["./main"],
        tools: &["gcc"],
        debian_packages: "gcc",
        container_install: None,
        native_install: None,
        aliases: &[],
        extensions: &["c"],
        container_compile_extra: &[],
        default_image: "llm-sandbox/cpp:latest",
        env: &[],
        address_space_limit_ok: true,
        judge_wrapper: None,
    },
    LangSpec {
        lang: Lang::Go,
        file: "main.go",
        compile: Some(&["go", "build", "-o", "main", "{file}"]),
        run: &["./main"],
        tools: &["go"],
        debian_packages: "golang-go",
        container_install: Some(ContainerInstall { command: "GOBIN=/usr/local/bin go install {libs}", changes: &[] }),
        native_install: None,
        aliases: &["golang"],
        extensions: &["go"],
        container_compile_extra: &[],
        default_image: "llm-sandbox/go:latest",
        env: &[("GOCACHE", "/tmp/.gocache"), ("GOPATH", "/tmp/.gopath"), ("GO111MODULE", "auto"), ("GOFLAGS", "-buildvcs=false"), ("GOTOOLCHAIN", "local"), ("CGO_ENABLED", "0")],
        address_space_limit_ok: false,
        judge_wrapper: None,
    },
    LangSpec {
        lang: Lang::Ruby,
        file: "main.rb",
        compile: None,
        run: &["ruby", "{file}"],
        tools: &["ruby"],
        debian_packages: "ruby",
        container_install: Some(ContainerInstall { command: "gem install --no-document {libs}", changes: &[] }),
        native_install: None,
        aliases: &["rb"],
        extensions: &["rb"],
        container_compile_extra: &[],
        default_image: "llm-sandbox/ruby:latest",
        env: &[],
        address_space_limit_ok: true,
        judge_wrapper: None,
    },
    LangSpec {
        lang: Lang::Rust,
        file: "main.rs",
        compile: Some(&["rustc", "--edition", "2021", "-O", "-o", "main", "{file}"]),
        run: &["./main"],
        tools: &["rustc"],
        debian_packages: "rustc",
        container_install: None,
        native_install: None,
        aliases: &["rs"],
        extensions: &["rs"],
        container_compile_extra: &[],
        default_image: "llm-sandbox/rust:latest",
        env: &[],
        address_space_limit_ok: true,
        judge_wrapper: None,
    },
    LangSpec {
        lang: Lang::R,
        file: "main.R",
        compile: None,
        run: &["Rscript", "--vanilla", "{file}"],
        tools: &["Rscript"],
        debian_packages: "r-base-core",
        container_install: Some(ContainerInstall { command: "Rscript -e 'install.packages(commandArgs(TRUE), repos=\"https://cloud.r-project.org\")' {libs}", changes: &[] }),
        native_install: None,
        aliases: &[],
        extensions: &["r", "R"],
        container_compile_extra: &[],
        default_image: "llm-sandbox/r:latest",
        env: &[],
        address_space_limit_ok: true,
        judge_wrapper: None,
    },
    LangSpec {
        lang: Lang::Bash,
        file: "main.sh",
        compile: None,
        run: &["bash", "{file}"],
        tools: &["bash"],
        debian_packages: "bash",
        container_install: Some(ContainerInstall { command: "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends {libs}", changes: &[] }),
        native_install: None,
        aliases: &["sh", "shell"],
        extensions: &["sh", "bash"],
        container_compile_extra: &[],
        default_image: "llm-sandbox/bash:latest",
        env: &[],
        address_space_limit_ok: true,
        judge_wrapper: None,
    },
];

pub fn spec(lang: Lang) -> &'static LangSpec {
    TABLE
        .iter()
        .find(|s| s.lang == lang)
        .expect("every language has a table entry")
}

/// A language by its name or one of its aliases (case-insensitive): `py`, `js`, `c++`...
pub fn parse_name(s: &str) -> Option<Lang> {
    let s = s.trim().to_ascii_lowercase();
    Lang::parse(&s).or_else(|| {
        TABLE
            .iter()
            .find(|l| l.aliases.iter().any(|a| *a == s))
            .map(|l| l.lang)
    })
}

/// The language of a program file by its extension (`hello.cpp`: cpp).
pub fn by_extension(path: &Path) -> Option<Lang> {
    let ext = path.extension()?.to_str()?;
    TABLE
        .iter()
        .find(|l| l.extensions.contains(&ext))
        .map(|l| l.lang)
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

/// How a job file moves a job to Docker, in messages; the command line says
/// [`DOCKER_HINT_CLI`] instead.
pub const DOCKER_HINT: &str = "run the job with `backend = \"docker\"`";
/// [`DOCKER_HINT`] as the command line says it.
pub const DOCKER_HINT_CLI: &str = "run it with `--backend docker`";

/// The error of a toolchain program missing on the host: names the package to install.
pub fn missing_tool(lang: Lang, tool: &str) -> String {
    let spec = spec(lang);
    format!(
        "`{tool}` was not found on this host (needed for {lang} on the native backend): install {} (e.g. `apt-get install {}`), or {DOCKER_HINT}",
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
    fn languages_by_alias_and_extension() {
        use std::path::Path;
        assert_eq!(parse_name("PY"), Some(Lang::Python));
        assert_eq!(parse_name("c++"), Some(Lang::Cpp));
        assert_eq!(parse_name("node.js"), Some(Lang::Javascript));
        assert_eq!(parse_name("javascript"), Some(Lang::Javascript));
        assert_eq!(parse_name("cobol"), None);
        assert_eq!(by_extension(Path::new("dir/hello.cpp")), Some(Lang::Cpp));
        assert_eq!(by_extension(Path::new("a.R")), Some(Lang::R));
        assert_eq!(by_extension(Path::new("Main.java")), Some(Lang::Java));
        assert_eq!(by_extension(Path::new("notes.txt")), None);
        // Every language's own file name is one of its extensions.
        for l in TABLE {
            assert_eq!(
                by_extension(Path::new(l.file)),
                Some(l.lang),
                "{:?}",
                l.lang
            );
        }
    }

    #[test]
    fn every_language_has_one_entry() {
        for l in Lang::ALL {
            assert_eq!(TABLE.iter().filter(|s| s.lang == l).count(), 1, "{l}");
        }
    }

    #[test]
    fn judge_wrappers_are_for_languages_that_do_not_compile() {
        for s in TABLE.iter().filter(|s| s.judge_wrapper.is_some()) {
            assert!(s.compile.is_none(), "{}", s.lang);
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
