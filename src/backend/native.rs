//! The native backend: one fresh namespace sandbox per job (see [`crate::sandbox`]).

use super::{error_report, prepare_error_report, sanitize_name, Error, RunCtx};
use crate::checks;
use crate::lang::{self, HostToolchain};
use crate::plan::job::ResolvedLimits;
use crate::plan::PlannedJob;
use crate::report::model::{JobReport, Phase, Status};
use crate::sandbox::host::{self, Outcome};
use crate::sandbox::proto::{LimitEvents, Msg, StepResult};
use crate::sandbox::{Bind, SandboxConfig, SandboxLimits, Step, StepKind};
use crate::spec::types::{FileSpec, Lang};
use crate::spec::units::{format_duration, format_size};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Wall-clock limit of the compile step (and of each setup command).
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// Base PATH inside the sandbox.
pub const BASE_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Where a job's `libraries` appear inside the sandbox (read-only).
pub const LIBS_DIR: &str = "/.llm-sandbox/libs";
const LIBS_PREFIX: &str = "native-libs-";

/// Variables of the host's package-manager configuration that the prepare step sees
/// (index, certificates, proxies): read from the machine at run time, never the run step.
fn package_env() -> Vec<(String, String)> {
    const EXACT: &[&str] = &[
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
    ];
    std::env::vars()
        .filter(|(k, _)| {
            EXACT.contains(&k.as_str())
                || super::PROXY_VARS.contains(&k.as_str())
                || ["PIP_", "npm_config_", "NPM_CONFIG_"]
                    .iter()
                    .any(|p| k.starts_with(p))
        })
        .collect()
}

/// One install at a time per set of libraries (jobs of a run share it).
static INSTALLS: std::sync::Mutex<Vec<(PathBuf, std::sync::Arc<tokio::sync::Mutex<()>>)>> =
    std::sync::Mutex::new(Vec::new());

/// The prepare phase of the native backend: installs `libraries` with the language's package
/// manager into a directory (network on, as the sandbox user), which later sandboxes see
/// read-only at [`LIBS_DIR`]. Keyed by a hash of the language and the libraries; kept in
/// `~/.cache/llm-sandbox` when `keep_template` is set, else removed with the run.
async fn install_libraries(
    job: &PlannedJob,
    tc: &HostToolchain,
    ctx: &RunCtx,
) -> Result<PathBuf, Error> {
    use sha2::Digest;
    let fail = |message: String| Error::Prepare { message, log: None };
    // The language table's install command (lang::LangSpec::native_install).
    let Some(install) = &lang::spec(job.lang).native_install else {
        return Err(fail(format!(
            "`libraries` on the native backend are installed for python (pip) and javascript/typescript (npm); for {}, install them on the host or use a container backend",
            job.lang
        )));
    };
    let npm = if install.argv.contains(&"{npm}") {
        match lang::which("npm") {
            Some(npm) => npm.display().to_string(),
            None => return Err(fail(format!("`npm` was not found on this host (needed to install `libraries` for {}): install npm (e.g. `apt-get install npm`)", job.lang))),
        }
    } else {
        String::new()
    };
    let tool = tc.programs[0].display().to_string();
    let argv: Vec<String> = install
        .argv
        .iter()
        .map(|a| {
            a.replace("{tool}", &tool)
                .replace("{npm}", &npm)
                .replace("{dir}", LIBS_DIR)
        })
        .chain(job.libraries.iter().cloned())
        .collect();
    let (env_var, env_val) = (
        install.env_var,
        install.env_value.replace("{dir}", LIBS_DIR),
    );
    let mut h = sha2::Sha256::new();
    h.update(job.lang.as_str());
    for l in &job.libraries {
        h.update([0]);
        h.update(l);
    }
    let key: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = if job.keep_template {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("llm-sandbox")
    } else {
        ctx.run_dir.clone()
    };
    let dir = base.join(format!("{LIBS_PREFIX}{key}"));
    let lock = {
        let mut all = INSTALLS
            .lock()
            .map_err(|_| fail("install lock poisoned".into()))?;
        match all.iter().find(|(d, _)| *d == dir) {
            Some((_, l)) => l.clone(),
            None => {
                let l = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                all.push((dir.clone(), l.clone()));
                l
            }
        }
    };
    let _guard = lock.lock().await;
    let done = dir.join(".llm-sandbox-complete");
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    if nix::unistd::geteuid().is_root() {
        let id = crate::sandbox::helper::UNPRIVILEGED_HOST_ID;
        std::os::unix::fs::chown(&dir, Some(id), Some(id))
            .map_err(|e| fail(format!("chown {}: {e}", dir.display())))?;
    }
    let id = sandbox_id();
    let sdir = ctx.run_dir.join(&id);
    // Room to install: more memory, processes and disk than a job gets, and the network.
    let limits = SandboxLimits {
        memory: job.limits.memory.max(1 << 30),
        cpus: 2.0,
        pids: 512,
        disk: 1 << 30,
        open_files: 4096,
        address_space_fallback: false,
    };
    let mut cfg = sandbox_config(&id, &sdir, job.lang, tc, &[], limits, true)
        .map_err(|e| fail(format!("cannot create {}: {e}", sdir.display())))?;
    cfg.env.extend(package_env());
    cfg.env
        .push(("npm_config_cache".into(), "/tmp/.npm".into()));
    cfg.binds.push(Bind {
        src: dir.clone(),
        dest: PathBuf::from(LIBS_DIR),
        writable: true,
    });
    cfg.steps.push(Step {
        kind: StepKind::Setup,
        argv,
        timeout_ms: 600_000,
        capture_cap: job.limits.output,
        as_root: false,
        limited: false,
        cpu_seconds: None,
    });
    let o = host::run(
        &ctx.scope.servers,
        &cfg,
        None,
        job.limits.output,
        &ctx.cancel,
    )
    .await;
    let _ = std::fs::remove_dir_all(&sdir);
    let o = o.map_err(|e| fail(format!("cannot start the sandbox for the libraries: {e}")))?;
    let step = o.msgs.iter().find_map(|m| {
        if let Msg::Step(s) = m {
            Some(s.clone())
        } else {
            None
        }
    });
    match step {
        Some(s) if s.exit_code == Some(0) => {
            std::fs::write(&done, env_var.to_string() + "=" + &env_val)
                .map_err(|e| fail(e.to_string()))?;
            Ok(dir)
        }
        Some(s) => Err(Error::Prepare {
            message: format!(
                "installing the libraries {:?} failed ({})",
                job.libraries,
                describe_exit(&s)
            ),
            log: Some(s.output),
        }),
        None => Err(fail(format!(
            "installing the libraries {:?} failed: {}",
            job.libraries,
            o.msgs
                .iter()
                .find_map(|m| if let Msg::Error { message, .. } = m {
                    Some(message.clone())
                } else {
                    None
                })
                .unwrap_or_default()
        ))),
    }
}

/// A unique, owner-labelled id for one sandbox.
pub fn sandbox_id() -> String {
    format!(
        "{}-{}",
        crate::owner::prefix(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The environment of every step: nothing of the runner's environment leaks in.
fn base_env(
    lang: Lang,
    tc: &HostToolchain,
    job_env: &[(String, String)],
) -> (Vec<(String, String)>, Vec<String>) {
    let mut path: Vec<String> = tc.path.iter().map(|p| p.display().to_string()).collect();
    path.extend(BASE_PATH.iter().map(|s| s.to_string()));
    let env = super::sandbox_env(lang, job_env, Some(path.join(":")));
    if let Some((_, p)) = env.iter().find(|(k, _)| k == "PATH") {
        path = p.split(':').map(String::from).collect();
    }
    (env, path)
}

/// The part of a native sandbox's config every caller shares, built here once: its
/// directories under `dir` (`root`, the new root's mount point; `out`, where files come
/// out), the toolchain's directories bound read-only (an installed-libraries directory at
/// [`LIBS_DIR`]), the language's environment and `PATH` with `job_env`, the limits, and the
/// network. The caller adds what is its own: steps, inputs, more binds, collection, preload.
pub fn sandbox_config(
    id: &str,
    dir: &Path,
    lang: Lang,
    tc: &HostToolchain,
    job_env: &[(String, String)],
    limits: SandboxLimits,
    network: bool,
) -> std::io::Result<SandboxConfig> {
    let (root, out) = (dir.join("root"), dir.join("out"));
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&out)?;
    let (env, path) = base_env(lang, tc, job_env);
    Ok(SandboxConfig {
        id: id.to_string(),
        root_mount: root,
        inputs_dir: None,
        out_dir: out,
        persistent_workdir: None,
        binds: toolchain_binds(tc),
        rootfs: None,
        path,
        env,
        steps: Vec::new(),
        limits,
        network,
        user_net: crate::sandbox::usernet::for_sandbox(network),
        collect_globs: vec![],
        collect_paths: vec![],
        collect_cap: 0,
        preload: false,
        preload_modules: vec![],
    })
}

/// A job's limits as the sandbox enforces them.
pub fn sandbox_limits(lang: Lang, l: &crate::plan::job::ResolvedLimits) -> SandboxLimits {
    SandboxLimits {
        memory: l.memory,
        cpus: l.cpus,
        pids: l.pids,
        disk: l.disk,
        open_files: l.open_files,
        address_space_fallback: lang::spec(lang).address_space_limit_ok,
    }
}

/// The toolchain's directories, read-only where they are on the host (an installed
/// libraries directory at [`LIBS_DIR`]).
fn toolchain_binds(tc: &HostToolchain) -> Vec<Bind> {
    tc.binds
        .iter()
        .map(|b| Bind {
            src: b.clone(),
            dest: if b
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(LIBS_PREFIX))
            {
                PathBuf::from(LIBS_DIR)
            } else {
                b.clone()
            },
            writable: false,
        })
        .collect()
}

/// `backends.native.bind`: the job's own read-only binds.
fn job_binds(job: &PlannedJob) -> Vec<Bind> {
    let mut binds = Vec::new();
    if let Some(native) = &job.backends.native {
        let base = job.file.parent().unwrap_or(Path::new("."));
        for b in native.bind.iter().flatten() {
            let (src, dest) = match b {
                FileSpec::Path(p) => (base.join(p), PathBuf::from(p)),
                FileSpec::Mapped(m) => (base.join(&m.src), PathBuf::from(&m.dest)),
            };
            let dest = if dest.is_absolute() {
                dest
            } else {
                Path::new("/").join(dest)
            };
            binds.push(Bind {
                src,
                dest,
                writable: false,
            });
        }
    }
    binds
}

/// Plot capture ([`crate::plots`]): the hook's directory `hook`, read-only, last on
/// `PYTHONPATH`.
pub fn add_plot_hook(cfg: &mut SandboxConfig, hook: PathBuf) {
    cfg.binds.push(Bind {
        src: hook,
        dest: PathBuf::from(crate::plots::NATIVE_HOOK_DIR),
        writable: false,
    });
    crate::plots::add_to_env(&mut cfg.env, crate::plots::NATIVE_HOOK_DIR);
}

/// Writes the code and the input files into `in_dir`.
pub fn stage_inputs(job: &PlannedJob, in_dir: &Path, source: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(in_dir)?;
    for f in &job.files {
        let dest = in_dir.join(&f.dest);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(&f.src, &dest)?;
    }
    std::fs::write(in_dir.join(source), &job.code)?;
    Ok(())
}

/// Runs `job` in a fresh sandbox; with `wire`, its run step's stdin and stdout are
/// connected through it ([`super::Wire`]).
pub async fn run_job(job: &PlannedJob, ctx: &RunCtx, wire: Option<super::Wire>) -> JobReport {
    let tc = match lang::probe_cached(job.lang) {
        Ok(tc) => tc,
        Err(e) => return error_report(job, Phase::Prepare, e),
    };
    let libs = if job.libraries.is_empty() {
        None
    } else {
        match install_libraries(job, &tc, ctx).await {
            Ok(dir) => Some(dir),
            Err(e) => return prepare_error_report(job, e),
        }
    };
    let mut tc = tc;
    if let Some(dir) = libs {
        tc.binds.push(dir);
    }
    let id = sandbox_id();
    let dir = ctx.run_dir.join(&id);
    let report = run_in(job, ctx, &tc, &id, &dir, wire).await;
    let _ = std::fs::remove_dir_all(&dir);
    report
}

/// The compile step (for languages that compile) and the run step of a program whose
/// source is `source` (the file name in `/sandbox`).
pub fn program_steps(
    lang: Lang,
    tc: &HostToolchain,
    source: &str,
    code: &str,
    limits: &ResolvedLimits,
    timeout: Duration,
    args: &[String],
) -> Vec<Step> {
    let spec = lang::spec(lang);
    let class = lang::java_main_class(code);
    let mem_mb = (limits.memory >> 20).max(16);
    let mut steps = Vec::new();
    if let Some(compile) = spec.compile {
        let mut argv = lang::expand_command(compile, source, &class, mem_mb);
        argv[0] = tc.programs[0].display().to_string();
        argv.extend(tc.compile_extra.iter().cloned());
        steps.push(Step {
            kind: StepKind::Compile,
            argv,
            timeout_ms: COMPILE_TIMEOUT.as_millis() as u64,
            capture_cap: limits.output,
            as_root: false,
            limited: false,
            cpu_seconds: None,
        });
    }
    let mut argv = lang::expand_command(spec.run, source, &class, mem_mb);
    if let Some(p) = spec
        .tools
        .iter()
        .position(|t| *t == argv[0])
        .and_then(|i| tc.programs.get(i))
    {
        argv[0] = p.display().to_string();
    }
    argv.extend(args.iter().cloned());
    steps.push(Step {
        kind: StepKind::Run,
        argv,
        timeout_ms: timeout.as_millis() as u64,
        capture_cap: limits.output,
        as_root: false,
        limited: true,
        cpu_seconds: Some(limits.cpu_rlimit_secs(timeout)),
    });
    steps
}

/// Stages the job's files under `dir`; returns the sandbox's config (it travels to the
/// sandbox server over its socket, never as a file).
pub fn prepare(
    job: &PlannedJob,
    tc: &HostToolchain,
    id: &str,
    dir: &Path,
) -> Result<SandboxConfig, Error> {
    let source = lang::source_file(job.lang, &job.code);
    let in_dir = dir.join("in");
    let limits = sandbox_limits(job.lang, &job.limits);
    let staged = stage_inputs(job, &in_dir, &source)
        .and_then(|_| sandbox_config(id, dir, job.lang, tc, &job.env, limits, job.network));
    let mut cfg = match staged {
        Ok(c) => c,
        Err(e) => {
            return Err(Error::Sandbox(format!(
                "cannot stage the job's files in {}: {e}",
                dir.display()
            )))
        }
    };
    cfg.inputs_dir = Some(in_dir);
    for cmd in &job.setup {
        cfg.steps.push(Step {
            kind: StepKind::Setup,
            argv: vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
            timeout_ms: COMPILE_TIMEOUT.as_millis() as u64,
            capture_cap: job.limits.output,
            as_root: false,
            limited: false,
            cpu_seconds: None,
        });
    }
    cfg.steps.extend(program_steps(
        job.lang,
        tc,
        &source,
        &job.code,
        &job.limits,
        job.timeout,
        &job.args,
    ));
    if let Some(dir) = tc.binds.iter().find(|b| {
        b.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(LIBS_PREFIX))
    }) {
        if let Ok(line) = std::fs::read_to_string(dir.join(".llm-sandbox-complete")) {
            if let Some((k, v)) = line.split_once('=') {
                cfg.env.retain(|(ek, _)| ek != k);
                cfg.env.push((k.to_string(), v.to_string()));
            }
        }
    }
    cfg.steps.retain(|s| job.part.wants(s.kind));
    cfg.rootfs = job
        .backends
        .native
        .as_ref()
        .and_then(|n| n.rootfs.as_ref())
        .map(|r| job.file.parent().unwrap_or(Path::new(".")).join(r));
    cfg.binds.extend(job_binds(job));
    if crate::plots::wanted(job) && cfg.rootfs.is_none() {
        // Plot capture (crate::plots): the hook, read-only, last on PYTHONPATH. (A job's
        // own rootfs is read-only: no mount point can be made in it for the hook.)
        let hook = crate::plots::write_hook(dir).map_err(|e| {
            Error::Sandbox(format!(
                "cannot write the plot hook in {}: {e}",
                dir.display()
            ))
        })?;
        add_plot_hook(&mut cfg, hook);
    }
    cfg.collect_globs = crate::plots::artifact_globs(job);
    cfg.collect_paths = job.expect.files.iter().map(|f| f.path.clone()).collect();
    cfg.collect_cap = job.limits.disk;
    let preload = job
        .backends
        .native
        .as_ref()
        .and_then(|n| n.preload.as_ref());
    cfg.preload = crate::sandbox::pyembed::asked(job.lang, preload.map(|p| p.on()));
    if cfg.preload {
        cfg.preload_modules = preload.map(|p| p.modules()).unwrap_or_default();
    }
    Ok(cfg)
}

async fn run_in(
    job: &PlannedJob,
    ctx: &RunCtx,
    tc: &HostToolchain,
    id: &str,
    dir: &Path,
    wire: Option<super::Wire>,
) -> JobReport {
    let cfg = match prepare(job, tc, id, dir) {
        Ok(c) => c,
        Err(e) => return error_report(job, Phase::Prepare, e),
    };
    let out_dir = cfg.out_dir.clone();
    let cap = job.limits.output;
    let stdin = job.stdin.as_ref().map(|s| s.as_bytes().to_vec());
    let servers = &ctx.scope.servers;
    let ran = match wire {
        None => host::run(servers, &cfg, stdin, cap, &ctx.cancel).await,
        Some(w) => host::run_wired(servers, &cfg, w.stdin, cap, w.output, &ctx.cancel).await,
    };
    let outcome = match ran {
        Ok(o) => o,
        Err(e) => return error_report(job, Phase::Prepare, helper_failed(e)),
    };
    let mut report = to_report(job, &outcome);
    if report.status != Status::Error && !crate::plots::artifact_globs(job).is_empty() {
        match copy_artifacts(job, &out_dir, &ctx.artifacts_root) {
            Ok(a) => report.artifacts = a,
            Err(e) => {
                report.status = Status::Error;
                report.message = Some(format!("cannot copy the artifacts out: {e}"));
            }
        }
    }
    report
}

/// Whether the run step `last` used up its CPU time, and the message that says so: killed
/// by RLIMIT_CPU (SIGXCPU at the soft limit, SIGKILL at the hard one when no OOM kill
/// explains it), or, with `limits.cpu_time`, measured at or past it (a program of several
/// processes each below the per-process rlimit).
fn cpu_time_exceeded(job: &PlannedJob, last: &StepResult, oom_killed: bool) -> Option<String> {
    // The limit is the program's: a build that ends a job (test cases build once, then run
    // each case from its files) is bounded by the compile timeout alone.
    if last.kind != Some(StepKind::Run) {
        return None;
    }
    let limit = job.limits.cpu_limit_ms(job.timeout);
    let used = last.usage.map(|u| u.cpu_ms);
    // RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL at the hard one (a second
    // later); the kernel counts CPU time for it in ticks, which can run ahead of the
    // rusage the step measured by several percent on a loaded machine.
    let killed = last.signal == Some(libc::SIGXCPU)
        || (last.signal == Some(libc::SIGKILL)
            && used.is_some_and(|c| c * 10 >= limit * 9)
            && !oom_killed);
    let over = job.limits.cpu_time.is_some() && used.is_some_and(|c| c >= limit);
    if !killed && !over {
        return None;
    }
    let limit = format_duration(Duration::from_millis(limit));
    Some(match (job.limits.cpu_time, used) {
        (Some(_), Some(c)) => format!(
            "CPU time limit exceeded: the program used {} of CPU time; `limits.cpu_time` is {limit}",
            format_duration(Duration::from_millis(c))
        ),
        _ => format!("CPU time limit exceeded ({limit} of CPU time)"),
    })
}

/// Turns what the sandbox said into a job report (statuses of README, "Statuses and exit codes").
pub fn to_report(job: &PlannedJob, o: &Outcome) -> JobReport {
    let mut r = error_report(job, Phase::Prepare, String::new());
    r.image = Some("host".into());
    r.message = None;
    r.duration_ms = o.wall.as_millis() as u64;
    let steps: Vec<&StepResult> = o
        .msgs
        .iter()
        .filter_map(|m| if let Msg::Step(s) = m { Some(s) } else { None })
        .collect();
    let limits: LimitEvents = o
        .msgs
        .iter()
        .find_map(|m| {
            if let Msg::Limits(l) = m {
                Some(l.clone())
            } else {
                None
            }
        })
        .unwrap_or_default();
    let error = o.msgs.iter().find_map(Msg::error_text);
    let refused: Vec<String> = o
        .msgs
        .iter()
        .filter_map(|m| {
            if let Msg::Collected { refused, .. } = m {
                Some(refused.clone())
            } else {
                None
            }
        })
        .flatten()
        .map(|(p, why)| format!("{p}: {why}"))
        .collect();
    if o.cancelled {
        r.status = Status::Error;
        r.message = Some("interrupted: the run was cancelled before this job finished".into());
        r.stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        r.stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        return r;
    }
    if o.output_limit_hit && steps.last().is_none_or(|s| s.kind == Some(StepKind::Run)) {
        r.status = Status::Failed;
        r.phase = Some(Phase::Run);
        r.stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        r.stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        r.stdout_truncated = o.stdout_truncated;
        r.stderr_truncated = o.stderr_truncated;
        r.message = Some(output_limit_message(job, o));
        return r;
    }
    let Some(last) = steps.last() else {
        r.status = Status::Error;
        r.message = Some(error.unwrap_or_else(|| {
            format!(
                "the sandbox helper ended without a result ({}); stderr: {}",
                o.helper_status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no status".into()),
                String::from_utf8_lossy(&o.stderr).trim()
            )
        }));
        return r;
    };
    r.exit_code = last.exit_code;
    r.signal = last.signal;
    match last.kind {
        Some(StepKind::Setup) | Some(StepKind::Compile) if last.spawn_error.is_some() => {
            r.status = Status::Error;
            r.phase = Some(if last.kind == Some(StepKind::Setup) {
                Phase::Prepare
            } else {
                Phase::Compile
            });
            r.message = last.spawn_error.clone();
            return r;
        }
        Some(StepKind::Setup) if last.exit_code != Some(0) || last.timed_out => {
            r.phase = Some(Phase::Prepare);
            r.status = if last.timed_out {
                Status::Timeout
            } else {
                Status::Error
            };
            r.stderr = last.output.clone();
            r.stderr_truncated = last.output_truncated;
            r.message = Some(if last.timed_out {
                format!(
                    "a setup command timed out after {}",
                    format_duration(COMPILE_TIMEOUT)
                )
            } else {
                format!("a setup command failed ({})", describe_exit(last))
            });
            return r;
        }
        Some(StepKind::Compile) if last.exit_code != Some(0) || last.timed_out => {
            r.phase = Some(Phase::Compile);
            r.stderr = last.output.clone();
            r.stderr_truncated = last.output_truncated;
            if last.timed_out {
                r.status = Status::Timeout;
                r.message = Some(format!(
                    "compilation timed out after {}",
                    format_duration(COMPILE_TIMEOUT)
                ));
            } else {
                r.status = Status::Failed;
                r.message = Some(format!("compilation failed ({})", describe_exit(last)));
            }
            return r;
        }
        _ => {}
    }
    r.phase = Some(Phase::Run);
    r.stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    r.stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    r.stdout_truncated = o.stdout_truncated;
    r.stderr_truncated = o.stderr_truncated;
    if let Some(e) = &last.spawn_error {
        r.status = Status::Error;
        r.message = Some(format!("the program could not start: {e}"));
        return r;
    }
    if let Some(u) = last.usage.filter(|_| last.kind == Some(StepKind::Run)) {
        r.cpu_ms = Some(u.cpu_ms);
        r.peak_memory_bytes = (u.peak_memory_bytes > 0).then_some(u.peak_memory_bytes);
    }
    if last.timed_out {
        r.status = Status::Timeout;
        r.message = Some(format!(
            "timed out after {} (wall clock); every process of the job was killed",
            format_duration(job.timeout)
        ));
        return r;
    }
    if let Some(m) = cpu_time_exceeded(job, last, limits.oom_killed) {
        r.status = Status::Timeout;
        r.message = Some(m);
        return r;
    }
    let files_dir = o.msgs.iter().any(|m| matches!(m, Msg::Collected { .. }));
    if !files_dir && (!job.artifacts.is_empty() || !job.expect.files.is_empty()) {
        // The program ran, but its files were never copied out: an error of the sandbox,
        // never a silent loss (a missing artifact, a file check that says "does not exist").
        r.status = Status::Error;
        r.message = Some(format!(
            "the job's files (artifacts, expect.files) could not be copied out of the sandbox: {}",
            error.unwrap_or_else(|| "the sandbox ended before copying them".into())
        ));
        return r;
    }
    r.checks = checks::evaluate(
        &job.expect,
        last.exit_code,
        &r.stdout,
        &r.stderr,
        if files_dir {
            o.out_dir.as_deref()
        } else {
            None
        },
    );
    let mut notes = Vec::new();
    if o.output_limit_hit {
        notes.push(output_limit_message(job, o));
    }
    if limits.oom_killed {
        notes.push(format!(
            "memory limit exceeded ({}): the program was killed",
            format_size(job.limits.memory)
        ));
    } else if last.exit_code != Some(0) && ran_out_of_memory(&r.stderr) {
        notes.push(format!(
            "the program ran out of memory (memory limit {})",
            format_size(job.limits.memory)
        ));
    }
    if limits.pids_limit_hit {
        notes.push(format!(
            "process limit reached ({} processes and threads)",
            job.limits.pids
        ));
    }
    if let Some(sig) = last.signal {
        if !limits.oom_killed {
            // A program that ran out of memory under an address-space limit (or a runtime
            // that aborts when an allocation fails) dies by one of these.
            let memory_may = matches!(
                sig,
                libc::SIGSEGV | libc::SIGBUS | libc::SIGABRT | libc::SIGKILL
            );
            notes.push(format!(
                "the program was killed by signal {sig} ({}){}",
                signal_name(sig),
                if memory_may {
                    format!(
                        "; the memory limit ({}) may be the cause",
                        format_size(job.limits.memory)
                    )
                } else {
                    String::new()
                }
            ));
        }
    }
    if !refused.is_empty() {
        notes.push(format!("files not copied out: {}", refused.join("; ")));
    }
    let all_ok = r.checks.iter().all(|c| c.passed);
    r.status = if all_ok && !o.output_limit_hit && !limits.oom_killed {
        Status::Passed
    } else {
        Status::Failed
    };
    if r.status == Status::Failed && notes.is_empty() {
        let failed: Vec<&str> = r
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.message.as_str())
            .collect();
        notes.push(failed.join("; "));
    }
    if !notes.is_empty() {
        r.message = Some(notes.join("; "));
    }
    r
}

/// The runtimes' own out-of-memory reports (the limit was hit inside the runtime, before
/// the kernel had to kill anything: the JVM's -Xmx, an address-space rlimit).
fn ran_out_of_memory(stderr: &str) -> bool {
    const SIGNS: &[&str] = &[
        "java.lang.OutOfMemoryError",
        "MemoryError",
        "std::bad_alloc",
        "fatal error: runtime: out of memory",
        "JavaScript heap out of memory",
        "failed to allocate memory",
        "memory allocation of",
        "Cannot allocate memory",
        "cannot allocate vector of size",
        "NoMemoryError",
    ];
    SIGNS.iter().any(|s| stderr.contains(s))
}

fn output_limit_message(job: &PlannedJob, o: &Outcome) -> String {
    format!(
        "output limit exceeded: the program wrote more than {} to {}; it was stopped",
        format_size(job.limits.output),
        if o.stdout_truncated {
            "stdout"
        } else {
            "stderr"
        }
    )
}

fn describe_exit(s: &StepResult) -> String {
    match (s.exit_code, s.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
        _ => "no exit status".into(),
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGFPE => "SIGFPE",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGSYS => "SIGSYS",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// Copies the artifacts from the job's out dir (regular files only, written by the
/// sandbox's init with O_NOFOLLOW) to `<root>/<job name>/`.
pub(crate) fn copy_artifacts(
    job: &PlannedJob,
    out_dir: &Path,
    root: &Path,
) -> std::io::Result<Vec<String>> {
    let mut set = globset::GlobSetBuilder::new();
    for g in &crate::plots::artifact_globs(job) {
        if let Ok(glob) = globset::GlobBuilder::new(g).literal_separator(true).build() {
            set.add(glob);
        }
    }
    let set = set.build().map_err(std::io::Error::other)?;
    let dest_root = root.join(sanitize_name(&job.name));
    let mut copied = Vec::new();
    let mut stack = vec![(out_dir.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::symlink_metadata(e.path())?;
            if meta.is_dir() {
                stack.push((e.path(), rel));
            } else if meta.is_file() && set.is_match(&rel) {
                if copied.is_empty() && dest_root.exists() {
                    // A previous run's artifacts of the same job: replace them.
                    std::fs::remove_dir_all(&dest_root)?;
                }
                let dest = dest_root.join(&rel);
                std::fs::create_dir_all(dest.parent().unwrap_or(&dest_root))?;
                std::fs::copy(e.path(), &dest)?;
                copied.push(dest.display().to_string());
            }
        }
    }
    copied.sort();
    Ok(copied)
}

/// `doctor`: a real sandbox, `echo ok` through the whole native path (the helper, its
/// server, the init, every confinement), in a scope of its own.
pub async fn doctor() -> Result<String, Error> {
    let unavailable = |e: String| Error::Unavailable(e);
    let tc = lang::probe_cached(Lang::Bash).map_err(unavailable)?;
    let dir = crate::owner::RunDir::create()
        .map_err(|e| unavailable(format!("cannot create a run directory: {e}")))?;
    let id = sandbox_id();
    let limits = sandbox_limits(Lang::Bash, &ResolvedLimits::default());
    let mut cfg = sandbox_config(
        &id,
        &dir.path.join(&id),
        Lang::Bash,
        &tc,
        &[],
        limits,
        false,
    )
    .map_err(|e| unavailable(e.to_string()))?;
    cfg.steps.push(Step {
        kind: StepKind::Run,
        argv: vec!["/bin/sh".into(), "-c".into(), "echo ok".into()],
        timeout_ms: 30_000,
        capture_cap: 1 << 16,
        as_root: false,
        limited: true,
        cpu_seconds: Some(31),
    });
    let io = host::Io::Capture {
        stdin: None,
        cap: 1 << 16,
        live: None,
    };
    let o = host::run_once(&cfg, io, &Default::default())
        .await
        .map_err(|e| unavailable(helper_failed(e)))?;
    let said = String::from_utf8_lossy(&o.stdout);
    if said.trim() != "ok" {
        let why = o.msgs.iter().find_map(Msg::error_text);
        return Err(unavailable(why.unwrap_or_else(|| {
            format!(
                "a test sandbox printed {said:?} (stderr {:?})",
                String::from_utf8_lossy(&o.stderr)
            )
        })));
    }
    Ok(format!(
        "Linux namespaces (user, mount, pid, net, ipc, uts, cgroup), seccomp, {}",
        match crate::sandbox::landlock::abi() {
            0 => "no Landlock (kernel without it)".to_string(),
            n => format!("Landlock ABI {n}"),
        }
    ))
}

/// Runs one job with the runner's own stdio (`exec`): output streams as it comes.
pub async fn exec_inherit(
    job: &PlannedJob,
    dir: &Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Outcome, Error> {
    let tc = lang::probe_cached(job.lang).map_err(Error::Unavailable)?;
    let cfg = prepare(job, &tc, &sandbox_id(), dir)?;
    host::run_once(&cfg, host::Io::Inherit, cancel)
        .await
        .map_err(|e| Error::Sandbox(helper_failed(e)))
}

/// Why a sandbox did not start: the helper could not be run.
fn helper_failed(e: std::io::Error) -> String {
    format!(
        "cannot start the sandbox helper {}: {e}",
        host::helper_path().display()
    )
}
