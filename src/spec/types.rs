//! The job-file data model (README, "A job file"). One model for TOML and YAML.
//!
//! Every job field is optional here because `[defaults]` uses the same type and a job
//! inherits what it does not set. `plan` turns these raw specs into [`crate::plan::PlannedJob`].

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use super::units::{ByteSize, DurationSpec};
/// Languages live with their table (src/lang.rs).
pub use crate::lang::Lang;

/// A whole job file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "llm-sandbox job file")]
pub struct JobFile {
    /// Any job field; a job's own value wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<JobSpec>,
    /// Template variables for every job of this file.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub vars: IndexMap<String, serde_json::Value>,
    /// Connection settings, per backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<BackendsConfig>,
    /// The jobs.
    #[serde(default)]
    pub jobs: Vec<JobSpec>,
}

/// Backends (README, "A job file").
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Deserialize,
    Serialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Linux namespaces, no daemon (default).
    #[default]
    Native,
    Docker,
    Podman,
    Kubernetes,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub podman: Option<PodmanConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// `unix:///path` or `tcp://host:port`; default `$DOCKER_HOST`, then the local socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Warm containers (default true): each job runs in a container of a pool, started
    /// ahead of demand and proven clean (no process, no file, no IPC object left) before
    /// its next job; `false`: one new container per job (also `run --fresh-containers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<bool>,
    /// Jobs a warm container runs before it is replaced (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle_after: Option<u32>,
    /// Python run steps in warm containers start from an interpreter the container's agent
    /// initialised once (README, "Preloaded Python"); default true (`false` starts python3;
    /// `{ modules = ["typing", ...] }` also imports those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload: Option<Preload>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodmanConfig {
    /// The API socket of `podman system service`: `unix:///path`, a path (relative to the
    /// job file), or `tcp://host:port`; default `$CONTAINER_HOST`, then the rootful socket
    /// `/run/podman/podman.sock`, then the rootless one `$XDG_RUNTIME_DIR/podman/podman.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Warm containers (default true), as `backends.docker.warm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<bool>,
    /// Jobs a warm container runs before it is replaced (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle_after: Option<u32>,
    /// Python run steps in warm containers start from an interpreter the container's agent
    /// initialised once (README, "Preloaded Python"); default true (`false` starts python3;
    /// `{ modules = ["typing", ...] }` also imports those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload: Option<Preload>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A kubeconfig file (relative to the job file); default `$KUBECONFIG`, then
    /// `~/.kube/config`, then the in-cluster configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_manifest: Option<PodManifest>,
    /// How long a sandbox pod may take to become ready (scheduling, image pull) before
    /// the job is an `error` saying why (default 120s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<DurationSpec>,
    /// Warm pods (default true): jobs run in pods of a pool, started ahead of demand and
    /// proven clean before their next job; `false`: one new pod per job (also
    /// `run --fresh-containers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<bool>,
    /// Jobs a warm pod runs before it is replaced (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle_after: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeConfig {
    /// A root filesystem directory to use instead of the host's toolchain directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// Extra host paths bind-mounted read-only: `"/opt/tool"` or `{ src, dest }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<Vec<FileSpec>>,
    /// Python run steps start from an interpreter the sandbox server initialised once,
    /// each in its own fresh sandbox (README, "Preloaded Python"); default true (`false`
    /// starts python3 for each job; `{ modules = ["typing", ...] }` also imports those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload: Option<Preload>,
}

/// `backends.native.preload`: on or off, or on with modules imported ahead.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Preload {
    Switch(bool),
    With(PreloadWith),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreloadWith {
    /// Modules the preloaded interpreter imports before any job (standard library or
    /// installed on the host, e.g. `typing`, `collections.abc`): a job finds them in
    /// `sys.modules` already.
    pub modules: Vec<PythonModule>,
}

/// A Python module name: dotted identifiers (`os.path`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"))]
pub struct PythonModule(pub String);

impl<'de> Deserialize<'de> for PythonModule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ident = |p: &str| {
            p.chars()
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && p.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
        };
        if s.split('.').all(ident) {
            Ok(PythonModule(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{s}` is not a Python module name (dotted identifiers, e.g. `typing` or `collections.abc`)"
            )))
        }
    }
}

// By hand, not `untagged`: a wrong module name is then said as such, where it is.
impl<'de> Deserialize<'de> for Preload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Preload;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or { modules = [\"typing\", ...] }")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Preload, E> {
                Ok(Preload::Switch(b))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Preload, A::Error> {
                PreloadWith::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(Preload::With)
            }
        }
        d.deserialize_any(V)
    }
}

impl Preload {
    /// Whether it is on.
    pub fn on(&self) -> bool {
        !matches!(self, Preload::Switch(false))
    }

    /// The modules to import ahead.
    pub fn modules(&self) -> Vec<String> {
        match self {
            Preload::With(w) => w.modules.iter().map(|m| m.0.clone()).collect(),
            Preload::Switch(_) => vec![],
        }
    }
}

/// A Pod manifest: a path to a YAML/JSON file, or the manifest inline.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum PodManifest {
    Path(String),
    Inline(serde_json::Map<String, serde_json::Value>),
}

/// An input file: `"path"` (glob allowed, copied under its relative path) or `{ src, dest }`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum FileSpec {
    Path(String),
    Mapped(MappedFile),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MappedFile {
    pub src: String,
    /// Destination relative to `/sandbox` (or absolute under `/sandbox`).
    pub dest: String,
}

/// One string or a list of strings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `skip = true` or `skip = "reason"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum Skip {
    Flag(bool),
    Reason(String),
}

/// `cases` (README, "Test cases"): a glob of input files (`"tests/*.in"`, each `X.in` with
/// its expected output in `X.out` or `X.ans` beside it), a template rendering to a JSON
/// list of `{ input, output }` objects, or a list of cases.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum CasesSpec {
    Pattern(String),
    List(Vec<CaseSpec>),
}

// By hand, not `untagged`: a case with a wrong key (`stdout = "3"` for
// `expect.stdout = "3"`) is then said as such, where it is, with the valid keys.
impl<'de> Deserialize<'de> for CasesSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CasesSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a glob of input files (\"tests/*.in\"), a template rendering to a JSON \
                     list, or a list of cases ([{ stdin = \"...\", expect.stdout = \"...\" }])",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<CasesSpec, E> {
                Ok(CasesSpec::Pattern(s.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<CasesSpec, E> {
                Ok(CasesSpec::Pattern(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, s: A) -> Result<CasesSpec, A::Error> {
                Vec::<CaseSpec>::deserialize(serde::de::value::SeqAccessDeserializer::new(s))
                    .map(CasesSpec::List)
            }
        }
        d.deserialize_any(V)
    }
}

/// One test case of a job: its input and what its output must be; the job's program,
/// limits and `expect` apply too.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    /// Default: `case-N` (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// A file (relative to the job file) whose content is the standard input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_file: Option<String>,
    /// Replace the job's `args` for this case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Added to the job's `expect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
}

/// How an expected `stdout` is compared: `"lines"` (default), `"exact"`, `"tokens"`, or
/// `{ float = 1e-6 }`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum CompareSpec {
    Mode(String),
    Float(FloatCompare),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FloatCompare {
    /// Two numeric tokens are equal when their absolute or relative difference is at
    /// most this.
    pub float: f64,
}

/// A judge's own program (README, "Test cases"): a `checker`, run as `checker INPUT OUTPUT
/// ANSWER` (three files) after each case, or an `interactor`, run as `interactor INPUT
/// OUTPUT [ANSWER]` beside each case with its stdin and stdout connected to the program's;
/// exit 0 accepted, 1 wrong answer, 2 presentation error (testlib's convention), anything
/// else an error of the checker or interactor.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckerSpec {
    pub lang: Lang,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Relative to the job file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_file: Option<String>,
}

/// Whether a job's cases stop at the first that does not pass.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CasesStop {
    #[default]
    FirstFailure,
    Never,
}

/// `setup`: one shell command or a list.
pub type Setup = OneOrMany;

/// Resource limits of the run step.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory, e.g. "512MiB" (default 512MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// CPUs, e.g. 1.0 (default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Cap of captured stdout and of stderr, each (default 1MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<ByteSize>,
    /// Size of the writable workdir `/sandbox` (default 64MiB); `/tmp` gets the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<ByteSize>,
    /// Open files per process (default 256). Extension of README, "A job file".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// CPU time of the run step's processes ("2s", "500ms"): past it the step is ended
    /// and the job's status is `timeout`, however loaded the machine is (README, "Resource
    /// figures"). Default: none (the wall-clock `timeout` bounds the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<DurationSpec>,
}

/// Checks on one file of the workdir after the run.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileExpect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The file parses as JSON equal to this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    /// Lower-case hex SHA-256 of the file's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Checks; all must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Equal after trimming trailing whitespace of each line and trailing blank lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// A file (relative to the job file) whose content is the expected `stdout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Byte-for-byte equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_contains: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_contains: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<IndexMap<String, FileExpect>>,
}

/// One job, or the `[defaults]` of a file (README, "A job file").
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Required (for jobs); may be a template; unique after expansion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<Lang>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// Container image; default per language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Path to a Dockerfile, relative to the job file; excludes `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_template: Option<bool>,
    /// Packages installed with the language's package manager before the code runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libraries: Option<Vec<String>>,
    /// Shell commands run in the sandbox before the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<Setup>,
    /// Input files copied into the workdir (globs allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileSpec>>,
    /// The program, literal (never rendered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_file: Option<String>,
    /// The program, rendered with minijinja.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<IndexMap<String, String>>,
    /// Wall-clock limit of the run step ("500ms", "10s", "2m"); default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Network during the run step; default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    /// Glob patterns relative to the workdir, copied out after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    /// Table of lists: one job per combination, as `{{ matrix.KEY }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<IndexMap<String, Vec<serde_json::Value>>>,
    /// JSONL, JSON array or CSV file: one job per row, as `{{ row.FIELD }}` and `{{ index }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Template; jobs with the same group key form one group for pass@k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// `true` or a reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<Skip>,
    /// Kubernetes: a Pod manifest (inline or path) used as the sandbox pod's base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_manifest: Option<PodManifest>,
    /// Test cases: the program is compiled once and run once per case (README, "Test
    /// cases").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases: Option<CasesSpec>,
    /// How expected `stdout` is compared (default `"lines"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<CompareSpec>,
    /// `"first-failure"` (default) or `"never"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases_stop: Option<CasesStop>,
    /// Judges each case's output instead of comparing it with the expected one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker: Option<CheckerSpec>,
    /// Interactive problems: a program that talks with the solution (its stdout is the
    /// solution's stdin and the other way round) and decides each case by its exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactor: Option<CheckerSpec>,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Native,
        BackendKind::Docker,
        BackendKind::Podman,
        BackendKind::Kubernetes,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Docker => "docker",
            BackendKind::Podman => "podman",
            BackendKind::Kubernetes => "kubernetes",
        }
    }
    pub fn parse(s: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Unused alias kept for readers: env maps are ordered.
pub type EnvMap = BTreeMap<String, String>;
