//! `llm-sandbox mcp`: a Model Context Protocol server on stdio with two tools,
//! `run_code` and `list_languages`. Every `run_code` call runs in a fresh sandbox session
//! (nothing leaks from one call to the next) through the library's [`Session`], on the
//! backend and with the limits the server was started with. Failures, timeouts and bad
//! arguments are tool results with `isError: true` and a message the model can act on;
//! python figures come back as PNG `image` content. Only protocol messages go to stdout.

use crate::lang;
use crate::plan::job::ResolvedLimits;
use crate::report::model::cut;
use crate::spec::types::{BackendKind, Lang};
use crate::spec::units::{format_size, parse_duration, parse_size};
use crate::Session;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler, ServiceExt};
use std::sync::Arc;
use std::time::Duration;

/// How the server runs code: `llm-sandbox mcp --help`. Every flag can also come from the
/// environment variable named after it (`LLM_SANDBOX_MCP_*`).
#[derive(Debug, Clone, clap::Args)]
pub struct McpArgs {
    /// Backend of every sandbox: native, docker, podman or kubernetes.
    #[arg(long, env = "LLM_SANDBOX_MCP_BACKEND", default_value = "native", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Container image: `IMAGE` for every language, or `LANG=IMAGE` (repeatable; in the
    /// environment, comma-separated). Default: the language's `llm-sandbox/<lang>:latest`.
    #[arg(long = "image", env = "LLM_SANDBOX_MCP_IMAGE", value_delimiter = ',')]
    pub images: Vec<String>,
    /// Default wall-clock limit of a run when the call gives no `timeout`.
    #[arg(long, env = "LLM_SANDBOX_MCP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Largest `timeout` a call may ask for (larger ones are lowered to it).
    #[arg(long, env = "LLM_SANDBOX_MCP_MAX_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub max_timeout: Duration,
    /// Memory limit of a sandbox.
    #[arg(long, env = "LLM_SANDBOX_MCP_MEMORY", default_value = "512MiB", value_parser = parse_size)]
    pub memory: u64,
    /// CPU limit of a sandbox (cores).
    #[arg(long, env = "LLM_SANDBOX_MCP_CPUS", default_value_t = 1.0)]
    pub cpus: f64,
    /// Process limit of a sandbox.
    #[arg(long, env = "LLM_SANDBOX_MCP_PIDS", default_value_t = 128)]
    pub pids: u64,
    /// Disk (workdir and /tmp) limit of a sandbox.
    #[arg(long, env = "LLM_SANDBOX_MCP_DISK", default_value = "64MiB", value_parser = parse_size)]
    pub disk: u64,
    /// Stdout and stderr returned per run, each (the rest is cut, and the result says so).
    #[arg(long, env = "LLM_SANDBOX_MCP_MAX_OUTPUT", default_value = "64KiB", value_parser = parse_size)]
    pub max_output: u64,
    /// Let sandboxes reach the network (off by default).
    #[arg(long, env = "LLM_SANDBOX_MCP_NETWORK")]
    pub network: bool,
    /// Allow `libraries` in calls (container backends install them in a prepare phase
    /// with network access; the run itself still follows --network).
    #[arg(long, env = "LLM_SANDBOX_MCP_ALLOW_LIBRARIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_libraries: bool,
    /// Tool calls that run at once; further calls wait for a free slot.
    #[arg(long, env = "LLM_SANDBOX_MCP_CONCURRENCY", default_value_t = default_concurrency())]
    pub concurrency: usize,
    /// Images returned per run (python figures); the rest are mentioned by name only.
    #[arg(long, env = "LLM_SANDBOX_MCP_MAX_PLOTS", default_value_t = 8)]
    pub max_plots: usize,
}

fn default_concurrency() -> usize {
    crate::run::default_parallelism().clamp(1, 8)
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    BackendKind::parse(s)
        .ok_or_else(|| format!("unknown backend {s:?}; valid: native, docker, podman, kubernetes"))
}

impl McpArgs {
    fn limits(&self) -> ResolvedLimits {
        ResolvedLimits {
            memory: self.memory,
            cpus: self.cpus,
            pids: self.pids,
            // Output past what is returned is read and dropped, up to 1 MiB (or
            // --max-output when larger); past that the program is stopped.
            output: self.max_output.saturating_add(1).max(1 << 20),
            disk: self.disk,
            ..ResolvedLimits::default()
        }
    }

    /// Checks the settings; the message names the flag and what is valid.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout.is_zero() || self.max_timeout.is_zero() {
            return Err("--timeout and --max-timeout must be more than 0s".into());
        }
        if self.timeout > self.max_timeout {
            return Err(format!(
                "--timeout ({}s) is larger than --max-timeout ({}s)",
                self.timeout.as_secs_f64(),
                self.max_timeout.as_secs_f64()
            ));
        }
        if !(self.cpus.is_finite() && self.cpus > 0.0) {
            return Err(format!(
                "--cpus must be a positive number of cores, not {}",
                self.cpus
            ));
        }
        if self.memory < 16 << 20 {
            return Err(format!(
                "--memory must be at least 16MiB, not {}",
                format_size(self.memory)
            ));
        }
        if self.pids == 0 || self.concurrency == 0 || self.max_output == 0 {
            return Err("--pids, --concurrency and --max-output must be more than 0".into());
        }
        for i in &self.images {
            if let Some((l, img)) = i.split_once('=') {
                if parse_language(l).is_none() {
                    return Err(format!(
                        "--image {i:?}: unknown language {l:?}; valid: {}",
                        language_names()
                    ));
                }
                if img.is_empty() {
                    return Err(format!("--image {i:?}: the image name is empty"));
                }
            } else if i.is_empty() {
                return Err("--image: the image name is empty".into());
            }
        }
        Ok(())
    }

    /// The image for `lang`: a `LANG=IMAGE` entry, else a plain `IMAGE`, else the default.
    fn image_for(&self, lang: Lang) -> Option<String> {
        let specific = self.images.iter().find_map(|i| {
            let (l, img) = i.split_once('=')?;
            (parse_language(l) == Some(lang)).then(|| img.to_string())
        });
        specific.or_else(|| self.images.iter().find(|i| !i.contains('=')).cloned())
    }
}

/// The languages' names, comma-separated.
fn language_names() -> String {
    Lang::ALL
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A language by name, with the aliases models tend to use (the language table's).
pub fn parse_language(s: &str) -> Option<Lang> {
    lang::parse_name(s)
}

/// Arguments of `run_code`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct RunCodeArgs {
    /// The complete program's source code.
    pub code: String,
    /// The language: python, javascript, typescript, java, cpp, c, go, ruby, rust, r or bash.
    pub language: String,
    /// Packages to install before running (pip for python, npm for javascript/typescript,
    /// gem, go, R, apt for bash). Container backends only.
    #[serde(default)]
    pub libraries: Option<Vec<String>>,
    /// Wall-clock limit in seconds (the server's default when absent; capped by its maximum).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Text given to the program's standard input.
    #[serde(default)]
    pub stdin: Option<String>,
}

/// The MCP server.
#[derive(Clone)]
pub struct SandboxServer {
    args: Arc<McpArgs>,
    /// What the server's sessions own of the backends; its end removes what is left.
    scope: Arc<crate::backend::Scope>,
    slots: Arc<tokio::sync::Semaphore>,
    tool_router: ToolRouter<Self>,
}

/// What a run produced, for the structured result.
#[derive(Debug, serde::Serialize)]
struct RunSummary {
    language: String,
    backend: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    timeout_seconds: f64,
    duration_ms: u64,
    /// The program's CPU time and peak memory where the backend measured them (README,
    /// "Resource figures").
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_memory_bytes: Option<u64>,
    stdout: String,
    stderr: String,
    stdout_truncated: bool,
    stderr_truncated: bool,
    compile_failed: bool,
    plots: Vec<String>,
}

fn error_result(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

#[tool_router]
impl SandboxServer {
    pub fn new(args: McpArgs) -> Self {
        let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
        SandboxServer {
            args: Arc::new(args),
            scope: crate::backend::Scope::new(),
            slots,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Run a program in a fresh, isolated sandbox (no network unless the server allows it, limited memory/CPU/time, only its own working directory /sandbox) and return its stdout, stderr, exit code and duration. Python figures made with matplotlib (plt.show(), or left open at exit) come back as PNG images. Languages: python, javascript, typescript, java, cpp, c, go, ruby, rust, r, bash (see list_languages). Nothing persists between calls."
    )]
    async fn run_code(
        &self,
        Parameters(req): Parameters<RunCodeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let Some(lang) = parse_language(&req.language) else {
            return error_result(format!(
                "unknown language {:?}; valid languages: {}",
                req.language,
                language_names()
            ));
        };
        let a = &self.args;
        let mut notes = Vec::new();
        let timeout = match req.timeout {
            None => a.timeout,
            Some(t) if t.is_finite() && t > 0.0 => {
                let asked = Duration::from_secs_f64(t.min(1e6));
                if asked > a.max_timeout {
                    notes.push(format!(
                        "timeout lowered from {t}s to the server's maximum of {}s",
                        a.max_timeout.as_secs_f64()
                    ));
                    a.max_timeout
                } else {
                    asked
                }
            }
            Some(t) => {
                return error_result(format!(
                    "invalid timeout {t}: give a number of seconds greater than 0 (at most {})",
                    a.max_timeout.as_secs_f64()
                ))
            }
        };
        let libraries = req.libraries.unwrap_or_default();
        if !libraries.is_empty() && !a.allow_libraries {
            return error_result(
                "libraries are disabled on this server (--allow-libraries false); use the standard library",
            );
        }
        for l in &libraries {
            if let Err(why) = crate::plan::expand::check_library_name(l) {
                return error_result(format!("invalid library name {l:?}: {why}"));
            }
        }
        if !libraries.is_empty() && a.backend == BackendKind::Native {
            return error_result(format!(
                "this server runs code on the native backend, where `libraries` cannot be installed per call ({}); use the standard library and what is installed, or start the server with --backend docker",
                libraries.join(", ")
            ));
        }
        let Ok(_slot) = self.slots.acquire().await else {
            return error_result("the server is shutting down");
        };
        let started = std::time::Instant::now();
        let mut b = Session::builder()
            .in_scope(self.scope.clone())
            .lang(lang)
            .backend(a.backend)
            .limits(a.limits())
            .timeout(timeout)
            .network(a.network);
        if let Some(img) = a.image_for(lang) {
            b = b.image(img);
        }
        if !libraries.is_empty() {
            // The image with the libraries is kept for the next call that asks for them.
            b = b.libraries(&libraries).keep_template(true);
        }
        let cancel = ctx.ct.clone();
        let work = async {
            let mut s = b.open().await?;
            let token = s.cancel_token();
            let run = async {
                let out = s
                    .run_with_stdin(&req.code, &[], req.stdin.as_deref().map(str::as_bytes))
                    .await?;
                let plots = if lang == Lang::Python {
                    s.take_plots().await.unwrap_or_else(|e| {
                        tracing::warn!("reading the plots failed: {e}");
                        vec![]
                    })
                } else {
                    vec![]
                };
                Ok::<_, crate::session::SessionError>((out, plots))
            };
            // The sandbox enforces the timeout; this only guards against a stuck backend.
            let grace = timeout + Duration::from_secs(30);
            let r = {
                tokio::pin!(run);
                let r = tokio::select! {
                    r = &mut run => Some(r),
                    _ = tokio::time::sleep(grace) => None,
                    _ = cancel.cancelled() => None,
                };
                if r.is_none() {
                    // Stop the sandbox and let the run wind down (its processes killed,
                    // its files removed) rather than dropping it half-way.
                    token.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(10), &mut run).await;
                }
                r
            };
            token.cancel();
            let _ = s.close().await;
            match r {
                Some(r) => r.map(Some),
                None => Ok(None),
            }
        };
        let r = work.await;
        let (out, plots) = match r {
            Ok(Some(x)) => x,
            Ok(None) if cancel.is_cancelled() => return error_result("cancelled by the client"),
            Ok(None) => {
                return error_result(format!(
                    "timed out: the sandbox did not finish within {}s (the {} backend did not answer in time)",
                    timeout.as_secs_f64(),
                    a.backend
                ))
            }
            Err(e) => {
                return error_result(format!("could not run the {lang} program: {e}"));
            }
        };
        let cap = a.max_output as usize;
        let mut stdout = out.stdout.clone();
        let mut stderr = out.stderr.clone();
        let stdout_truncated = cut(&mut stdout, cap);
        let stderr_truncated = cut(&mut stderr, cap);
        let compile_failed = out.compile_output.is_some();
        // Past the sandbox's own output limit the program was stopped.
        let stopped_for_output = out.output_truncated && out.exit_code.is_none();
        let stdout_truncated = stdout_truncated || (out.output_truncated && stdout.len() >= cap);
        let stderr_truncated = stderr_truncated || (out.output_truncated && stderr.len() >= cap);
        let status = if stopped_for_output {
            format!(
                "stopped: the program wrote more than the output limit ({})",
                format_size(a.limits().output)
            )
        } else if out.timed_out {
            format!(
                "timed out after {}s (the program was killed)",
                timeout.as_secs_f64()
            )
        } else if compile_failed {
            format!("compilation failed (exit code {})", opt(out.exit_code))
        } else if let Some(sig) = out.signal {
            format!(
                "killed by signal {sig} ({})",
                crate::backend::native::signal_name(sig)
            )
        } else {
            format!("exit code {}", opt(out.exit_code))
        };
        let mut text = format!(
            "{status}\nduration: {:.3}s\n",
            out.duration.as_secs_f64().max(0.0)
        );
        if let Some(ms) = out.cpu_ms {
            text.push_str(&format!("cpu: {:.3}s\n", ms as f64 / 1000.0));
        }
        if let Some(peak) = out.peak_memory_bytes {
            text.push_str(&format!("peak memory: {}\n", format_size(peak)));
        }
        for n in &notes {
            text.push_str(&format!("note: {n}\n"));
        }
        let section = |name: &str, body: &str, truncated: bool| {
            let mut s = format!("--- {name} ---\n{body}");
            if !body.is_empty() && !body.ends_with('\n') {
                s.push('\n');
            }
            if truncated {
                s.push_str(&format!(
                    "[{name} truncated: only the first {} are shown]\n",
                    format_size(cap as u64)
                ));
            }
            s
        };
        text.push_str(&section("stdout", &stdout, stdout_truncated));
        text.push_str(&section("stderr", &stderr, stderr_truncated));
        let shown = plots.len().min(a.max_plots);
        if !plots.is_empty() {
            text.push_str(&format!("plots: {}", plots.len()));
            if shown < plots.len() {
                text.push_str(&format!(" (the first {shown} are attached)"));
            }
            text.push('\n');
        }
        let mut content = vec![ContentBlock::text(text)];
        for p in plots.iter().take(shown) {
            content.push(ContentBlock::image(STANDARD.encode(&p.png), "image/png"));
        }
        let summary = RunSummary {
            language: lang.to_string(),
            backend: a.backend.to_string(),
            exit_code: out.exit_code,
            signal: out.signal,
            timed_out: out.timed_out,
            timeout_seconds: timeout.as_secs_f64(),
            duration_ms: out.duration.as_millis() as u64,
            cpu_ms: out.cpu_ms,
            peak_memory_bytes: out.peak_memory_bytes,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            compile_failed,
            plots: plots.iter().map(|p| p.name.clone()).collect(),
        };
        let mut result = if out.success() {
            CallToolResult::success(content)
        } else {
            CallToolResult::error(content)
        };
        result.structured_content = serde_json::to_value(&summary).ok();
        tracing::debug!("run_code {lang}: {status} in {:?}", started.elapsed());
        result
    }

    #[tool(
        description = "List the languages run_code accepts, with whether each works on this server's backend and how its code is run."
    )]
    async fn list_languages(&self) -> CallToolResult {
        let a = &self.args;
        let mut rows = Vec::new();
        let mut text = format!("backend: {}\n", a.backend);
        for l in Lang::ALL {
            let spec = lang::spec(l);
            let (available, note) = match a.backend {
                BackendKind::Native => match lang::probe_cached(l) {
                    Ok(_) => (true, String::new()),
                    Err(e) => (false, e),
                },
                _ => (
                    true,
                    format!(
                        "image {}",
                        a.image_for(l)
                            .unwrap_or_else(|| spec.default_image.to_string())
                    ),
                ),
            };
            let mem_mb = (a.memory >> 20).max(16);
            let class = "Main".to_string();
            let mut how = String::new();
            if let Some(c) = spec.compile {
                how.push_str(&format!(
                    "compiled with `{}`, ",
                    lang::expand_command(c, spec.file, &class, mem_mb).join(" ")
                ));
            }
            how.push_str(&format!(
                "run as `{}`",
                lang::expand_command(spec.run, spec.file, &class, mem_mb).join(" ")
            ));
            let run = how;
            text.push_str(&format!(
                "- {l}: {}{}\n",
                if available {
                    "available"
                } else {
                    "unavailable"
                },
                if note.is_empty() {
                    format!(" (file {}, {run})", spec.file)
                } else {
                    format!(" ({note})")
                }
            ));
            rows.push(serde_json::json!({
                "language": l.as_str(),
                "available": available,
                "file": spec.file,
                "command": run,
                "note": note,
            }));
        }
        let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
        r.structured_content =
            Some(serde_json::json!({ "backend": a.backend.as_str(), "languages": rows }));
        r
    }
}

fn opt(c: Option<i32>) -> String {
    c.map(|c| c.to_string()).unwrap_or_else(|| "none".into())
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandboxServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("llm-sandbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Runs untrusted code in sandboxes on the {} backend. Call run_code with the complete program; each call starts from an empty sandbox.",
                self.args.backend
            ))
    }
}

/// Serves MCP on stdin/stdout until the client closes the connection; the exit code.
pub async fn serve(args: McpArgs) -> i32 {
    if let Err(e) = args.validate() {
        eprintln!("error: {e}");
        return crate::exit_codes::BAD_INPUT;
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // Started by hand rather than by an MCP client.
        eprintln!(
            "llm-sandbox mcp: serving MCP on stdin/stdout (backend {}, timeout {}s, max {}s); an MCP client starts this command",
            args.backend,
            args.timeout.as_secs_f64(),
            args.max_timeout.as_secs_f64()
        );
    }
    tracing::info!("serving MCP on stdio, backend {}", args.backend);
    let server = SandboxServer::new(args);
    let scope = server.scope.clone();
    let service = match server.serve(rmcp::transport::stdio()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: the MCP session could not start: {e}");
            return crate::exit_codes::JOBS_FAILED;
        }
    };
    let code = match service.waiting().await {
        Ok(_) => crate::exit_codes::OK,
        Err(e) => {
            eprintln!("error: the MCP server stopped: {e}");
            crate::exit_codes::JOBS_FAILED
        }
    };
    scope.finish().await;
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: McpArgs,
    }

    #[test]
    fn languages_and_aliases() {
        assert_eq!(parse_language("Python"), Some(Lang::Python));
        assert_eq!(parse_language("js"), Some(Lang::Javascript));
        assert_eq!(parse_language("c++"), Some(Lang::Cpp));
        assert_eq!(parse_language("cobol"), None);
    }

    #[test]
    fn images_per_language() {
        let t = T::try_parse_from(["x", "--image", "python=py:1", "--image", "all:2"]).unwrap();
        assert_eq!(t.a.image_for(Lang::Python).as_deref(), Some("py:1"));
        assert_eq!(t.a.image_for(Lang::Go).as_deref(), Some("all:2"));
        let t = T::try_parse_from(["x", "--image", "cobol=x"]).unwrap();
        assert!(t
            .a
            .validate()
            .unwrap_err()
            .contains("unknown language \"cobol\""));
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let t = T::try_parse_from(["x", "--timeout", "200s"]).unwrap();
        assert!(t.a.validate().unwrap_err().contains("--max-timeout"));
        let t = T::try_parse_from(["x", "--cpus", "0"]).unwrap();
        assert!(t.a.validate().unwrap_err().contains("--cpus"));
        assert!(T::try_parse_from(["x", "--backend", "vm"]).is_err());
        let t = T::try_parse_from(["x"]).unwrap();
        assert_eq!(t.a.backend, BackendKind::Native);
        t.a.validate().unwrap();
    }

    #[test]
    fn cutting_keeps_characters_whole() {
        let mut s = "aé".to_string();
        assert!(cut(&mut s, 2));
        assert_eq!(s, "a");
        let mut s = "abc".to_string();
        assert!(!cut(&mut s, 3));
    }
}
