//! The docker backend against a REMOTE daemon over TCP + TLS, with a real second dockerd.
//!
//! The test starts its own dockerd on a free loopback port with `--tlsverify` and
//! certificates it makes with the `openssl` CLI (a CA, a server certificate for
//! `IP:127.0.0.1` and `DNS:localhost`, a client certificate with `clientAuth`). The daemon
//! leaves the main one (`/var/run/docker.sock`) alone: its own data root, exec root, pid
//! file, unix socket, config file and containerd namespaces, its own managed containerd, no
//! bridge, no iptables, no IP forwarding. It gets `llm-sandbox/bash:latest` from the main
//! daemon (`docker save | docker load`; no registry is needed), and then `llm-sandbox run`
//! runs jobs against it:
//!
//! * host and certificates from `[backends.docker]` (paths relative to the job file), with
//!   a `DOCKER_HOST` pointing elsewhere (the table wins);
//! * host and certificates from `DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`;
//! * bad TLS settings (no TLS, a wrong CA, no client certificate): status `error` with a
//!   message naming the host, within seconds, no panic.
//!
//! For the passing jobs, the second daemon's event log must show the container, and the
//! job's root file system (from its `/proc/self/mountinfo`) must be in that daemon's data
//! root.
//!
//! Needs root, `dockerd`, the `docker` CLI, `openssl`, and the main daemon with the image
//! (`scripts/engines docker`, `scripts/build-images docker bash`). When one is missing the
//! test says "SKIPPED: ..." on stderr and passes, or fails under `CI=true` or
//! `LLM_SANDBOX_REQUIRE_ENGINES=1`; a `LLM_SANDBOX_TEST_BACKENDS` without docker skips it
//! (tests/integration/common). The daemon is stopped and its directory removed when
//! its guard drops, also when the test panics.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::common;

/// The image the jobs run in (the default of `lang = "bash"`), copied from the main daemon.
const IMAGE: &str = common::DEFAULT_IMAGE;
/// Limit of a passing `llm-sandbox run`.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// Limit of a run that must fail fast: a TLS error is not a hang.
const ERROR_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit of the second daemon's start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The name of a second daemon's directory: this prefix, the test's pid, a nonce.
const DIR_PREFIX: &str = "llm-sandbox-d2-";
/// Limit of a docker or openssl CLI call.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variables of the docker client that must not leak into a run.
const DOCKER_ENV: [&str; 5] = [
    "DOCKER_HOST",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_CONTEXT",
    "DOCKER_API_VERSION",
];

// ---------------------------------------------------------------------------------------
// Requirements
// ---------------------------------------------------------------------------------------

/// The executable `name` on `$PATH` (or in the sbin directories, where dockerd lives).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// What this host lacks besides the main docker daemon and its image (which
/// `common::backend_selected("docker")` checks), each with how to get it.
fn missing_requirements() -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (dockerd runs as root)".to_string());
    }
    if find_program("dockerd").is_none() {
        missing.push("dockerd (scripts/engines docker)".to_string());
    }
    if find_program("openssl").is_none() {
        missing.push("openssl (apt-get install openssl)".to_string());
    }
    missing
}

/// True when the test can run. Otherwise it is skipped (false, with a `SKIPPED:` line on
/// stderr) or, under `CI=true` / `LLM_SANDBOX_REQUIRE_ENGINES=1`, fails.
fn requirements_met() -> bool {
    let missing = missing_requirements();
    if !missing.is_empty() {
        let what = format!(
            "docker remote tests need root, dockerd, openssl, the docker CLI and the main \
             daemon with {IMAGE}; missing: {}",
            missing.join("; ")
        );
        if let Some(flag) = common::strict() {
            panic!("{what} (required: {flag})");
        }
        common::skipped(what);
        return false;
    }
    // The main daemon answers and has the image; prints SKIPPED or panics by itself.
    if !common::backend_selected("docker") {
        if std::env::var_os("LLM_SANDBOX_TEST_BACKENDS").is_some() {
            common::skipped("docker remote tests: docker is not in LLM_SANDBOX_TEST_BACKENDS");
        }
        return false;
    }
    true
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

fn clear_docker_env(cmd: &mut Command) -> &mut Command {
    for var in DOCKER_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd` to its end with stdin closed and the output captured; kills it at `timeout`.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    wait_with_timeout(cmd.stdin(Stdio::null()), timeout)
}

/// Runs `cmd` (its stdin as set) to its end with the output captured; kills it at `timeout`.
fn wait_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.map_err(|e| format!("{shown}: {e}")),
        Err(_) => {
            // SAFETY: the child is not reaped before the waiting thread returns, so `pid`
            // still names it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            Err(format!(
                "{shown} did not finish within {}s (killed)",
                timeout.as_secs()
            ))
        }
    }
}

/// Runs `cmd` and returns its stdout; an error shows the command and its stderr.
fn run_ok(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = run_with_timeout(cmd, CLI_TIMEOUT)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Processes whose command line mentions `needle`: the second dockerd, its containerd and
/// their shims all name the test's own directory.
fn processes_mentioning(needle: &str) -> Vec<libc::pid_t> {
    let me = std::process::id() as libc::pid_t;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Seconds since the epoch, as `docker events --since/--until` takes them.
fn docker_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    run_ok(Command::new("openssl").current_dir(dir).args(args)).map(drop)
}

/// A self-signed CA `<name>.pem` (key `<name>-key.pem`) in `dir`.
fn make_ca(dir: &Path, name: &str, subject: &str) -> Result<(), String> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "2",
            "-subj",
            subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.pem"),
        ],
    )
}

/// A key `<name>-key.pem` and a certificate `<name>-cert.pem` signed by the CA `ca.pem`.
fn make_leaf(dir: &Path, name: &str, subject: &str, extensions: &str) -> Result<(), String> {
    let ext = format!("{name}.ext");
    fs::write(dir.join(&ext), extensions).map_err(|e| e.to_string())?;
    let csr = format!("{name}.csr");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &csr,
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-sha256",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAserial",
            "ca.srl",
            "-CAcreateserial",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}-cert.pem"),
        ],
    )
}

// ---------------------------------------------------------------------------------------
// The second daemon
// ---------------------------------------------------------------------------------------

/// A second dockerd on `tcp://127.0.0.1:<port>` with TLS and client verification. Dropping
/// it stops the daemon (and whatever it started) and removes its directory.
struct SecondDockerd {
    /// Everything of this daemon: `pki/`, `client/` (ca.pem, cert.pem, key.pem: a
    /// `DOCKER_CERT_PATH`), `daemon/` (data and exec roots, socket, log), the jobs.
    dir: PathBuf,
    child: Option<std::process::Child>,
    port: u16,
    /// Namespace suffix, unique per daemon.
    id: String,
}

impl SecondDockerd {
    /// Makes the directory and the certificates and starts the daemon; `Err` after the
    /// directory exists still cleans up (the guard exists from then on).
    fn start() -> Result<Self, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let id = format!("{}-{nanos:x}", std::process::id());
        // A short path: the daemon's unix sockets (containerd's among them) live in it.
        let base = if std::env::temp_dir().as_os_str().len() <= 40 {
            std::env::temp_dir()
        } else {
            PathBuf::from("/tmp")
        };
        sweep_stale(&base);
        let dir = base.join(format!("{DIR_PREFIX}{id}"));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut me = SecondDockerd {
            dir,
            child: None,
            port: 0,
            id,
        };
        fs::set_permissions(&me.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        me.make_certs()?;
        me.spawn_daemon()?;
        Ok(me)
    }

    fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    /// `ca.pem`, `cert.pem`, `key.pem` of the client: a `DOCKER_CERT_PATH`.
    fn client_dir(&self) -> PathBuf {
        self.dir.join("client")
    }
    fn daemon_dir(&self) -> PathBuf {
        self.dir.join("daemon")
    }
    fn socket(&self) -> PathBuf {
        self.daemon_dir().join("docker.sock")
    }
    fn log(&self) -> PathBuf {
        self.daemon_dir().join("dockerd.log")
    }
    fn host(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn make_certs(&self) -> Result<(), String> {
        let pki = self.pki();
        let client = self.client_dir();
        for d in [&pki, &client] {
            fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        make_ca(&pki, "ca", "/CN=llm-sandbox test CA")?;
        make_leaf(
            &pki,
            "server",
            "/CN=localhost",
            "basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        make_leaf(
            &pki,
            "client",
            "/CN=llm-sandbox test client",
            "basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )?;
        // Another CA, which signed nothing of this daemon: the "wrong CA" case.
        make_ca(&pki, "wrong-ca", "/CN=llm-sandbox unrelated CA")?;
        for (from, to) in [
            ("ca.pem", "ca.pem"),
            ("client-cert.pem", "cert.pem"),
            ("client-key.pem", "key.pem"),
        ] {
            fs::copy(pki.join(from), client.join(to)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The name of this daemon's own bridge interface (at most 15 characters).
    fn bridge(&self) -> String {
        format!("lsd2{}", std::process::id() % 100_000)
    }

    fn spawn_daemon(&mut self) -> Result<(), String> {
        let dockerd = find_program("dockerd").ok_or("dockerd not found")?;
        let br = self.bridge();
        let _ = Command::new("ip").args(["link", "del", &br]).output();
        run_ok(Command::new("ip").args(["link", "add", &br, "type", "bridge"]))
            .map_err(|e| format!("cannot create the bridge {br}: {e}"))?;
        let daemon = self.daemon_dir();
        fs::create_dir_all(&daemon).map_err(|e| e.to_string())?;
        // Not /etc/docker/daemon.json: nothing of the main daemon's configuration.
        fs::write(daemon.join("daemon.json"), "{}\n").map_err(|e| e.to_string())?;
        let pki = self.pki();
        let mut last_error = String::new();
        // The port is free when picked; another process may take it before dockerd binds
        // it, so a start that fails is tried again with a new port.
        for _attempt in 0..3 {
            self.port = free_port()?;
            let log = fs::File::create(self.log()).map_err(|e| e.to_string())?;
            let log2 = log.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(&dockerd);
            cmd.arg("--config-file")
                .arg(daemon.join("daemon.json"))
                .arg("--data-root")
                .arg(daemon.join("data"))
                .arg("--exec-root")
                .arg(daemon.join("exec"))
                .arg("--pidfile")
                .arg(daemon.join("docker.pid"))
                .arg("-H")
                .arg(format!("unix://{}", self.socket().display()))
                .arg("-H")
                .arg(self.host())
                .arg("--tlsverify")
                .arg("--tlscacert")
                .arg(pki.join("ca.pem"))
                .arg("--tlscert")
                .arg(pki.join("server-cert.pem"))
                .arg("--tlskey")
                .arg(pki.join("server-key.pem"))
                // Its own bridge: `--bridge=none` makes dockerd delete the host's `docker0`,
                // which breaks the main daemon's networking (libraries, `network = true`).
                .arg(format!("--bridge={}", self.bridge()))
                .args([
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-masq=false",
                    "--ip-forward=false",
                    "--userland-proxy=false",
                    "--shutdown-timeout=5",
                ])
                .arg("--containerd-namespace")
                .arg(format!("llm-sandbox-d2-{}", self.id))
                .arg("--containerd-plugins-namespace")
                .arg(format!("llm-sandbox-d2-{}-plugins", self.id))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            clear_docker_env(&mut cmd);
            // SAFETY: prctl is async-signal-safe. The daemon gets SIGTERM (a clean stop)
            // if this test's thread dies without dropping the guard.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", dockerd.display()))?;
            self.child = Some(child);
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last_error = e;
                    let exited = self
                        .child
                        .as_mut()
                        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                    let log = fs::read_to_string(self.log()).unwrap_or_default();
                    if !(exited && log.contains("address already in use")) {
                        break;
                    }
                    self.child = None;
                }
            }
        }
        Err(last_error)
    }

    /// Waits until the TLS endpoint answers the client certificate (so certificates and
    /// listener are right) or the daemon exits.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "the second dockerd exited at its start ({status}); last lines of {}:\n{}",
                        self.log().display(),
                        tail(&self.log(), 30)
                    ));
                }
            }
            match run_with_timeout(
                self.docker_tls()
                    .args(["version", "--format", "{{.Server.Version}}"]),
                Duration::from_secs(10),
            ) {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "the second dockerd did not answer on {} within {}s ({last}); last lines of {}:\n{}",
            self.host(),
            START_TIMEOUT.as_secs(),
            self.log().display(),
            tail(&self.log(), 30)
        ))
    }

    /// The docker CLI on the second daemon's unix socket.
    fn docker_unix(&self) -> Command {
        let mut cmd = Command::new("docker");
        clear_docker_env(&mut cmd);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket().display()));
        cmd
    }

    /// The docker CLI on the second daemon's TLS endpoint, with the client certificate.
    fn docker_tls(&self) -> Command {
        let client = self.client_dir();
        let mut cmd = Command::new("docker");
        clear_docker_env(&mut cmd);
        cmd.arg("--tlsverify")
            .arg("--tlscacert")
            .arg(client.join("ca.pem"))
            .arg("--tlscert")
            .arg(client.join("cert.pem"))
            .arg("--tlskey")
            .arg(client.join("key.pem"))
            .arg("-H")
            .arg(self.host());
        cmd
    }

    /// `docker save IMAGE` from the main daemon into `docker load` of this one.
    fn load_image(&self, image: &str) -> Result<(), String> {
        let mut save = Command::new("docker");
        clear_docker_env(&mut save);
        let mut save = save
            .args(["save", image])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("docker save: {e}"))?;
        let tar = save.stdout.take().expect("piped");
        let mut load = self.docker_unix();
        load.arg("load").stdin(tar);
        let loaded = wait_with_timeout(&mut load, Duration::from_secs(300));
        drop(load); // its copy of the pipe
        let saved = save.wait_with_output().map_err(|e| e.to_string())?;
        let loaded = loaded?;
        if !loaded.status.success() {
            return Err(format!(
                "docker load into the second daemon failed ({}): {}{}",
                loaded.status,
                String::from_utf8_lossy(&loaded.stdout),
                String::from_utf8_lossy(&loaded.stderr)
            ));
        }
        if !saved.status.success() {
            return Err(format!(
                "docker save {image} (main daemon) failed ({}): {}",
                saved.status,
                String::from_utf8_lossy(&saved.stderr)
            ));
        }
        Ok(())
    }

    /// `(action, container id)` of the container events of this daemon in `[since, until]`.
    fn container_events(
        &self,
        since: SystemTime,
        until: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        events(&mut self.docker_unix(), since, until)
    }

    /// SIGTERM (a clean stop: containers, containerd, mounts), SIGKILL after 30 s.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: `child` is not reaped yet, so `pid` names it.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("second dockerd: no exit 30s after SIGTERM, killing it");
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

impl Drop for SecondDockerd {
    fn drop(&mut self) {
        self.stop_daemon();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
        // Whatever survived (containerd or shims of a daemon that died): every process
        // this daemon started names this directory in its command line.
        let needle = self.dir.to_string_lossy().into_owned();
        let leftovers = processes_mentioning(&needle);
        for &pid in &leftovers {
            // SAFETY: a plain signal to a process of this test's daemon.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while leftovers.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        // Mounts left by a daemon that did not stop cleanly.
        unmount_under(&self.dir);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("second dockerd: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Removes the directories of earlier runs that were killed before their guard dropped
/// (their daemon stopped by itself: it gets SIGTERM when the test dies): those whose test
/// process is gone and which no process names.
fn sweep_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if alive(pid) || !processes_mentioning(&dir.to_string_lossy()).is_empty() {
            continue;
        }
        unmount_under(&dir);
        match fs::remove_dir_all(&dir) {
            Ok(()) => eprintln!("removed {} (left by a killed run)", dir.display()),
            Err(e) => eprintln!(
                "cannot remove {} (left by a killed run): {e}",
                dir.display()
            ),
        }
    }
}

/// Detaches every mount at or under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in mounts {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string; a failure leaves the mount (and the removal of the
            // directory then reports it).
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Mount points at or under `dir`, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Undoes the octal escapes (`\040` and the like) of a mountinfo path.
fn unescape_mount_path(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// `(action, container id)` of `docker events` of the daemon of `docker` in the window.
fn events(
    docker: &mut Command,
    since: SystemTime,
    until: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let out = run_ok(docker.args([
        "events",
        "--since",
        &docker_time(since),
        "--until",
        &docker_time(until),
        "--filter",
        "type=container",
        "--format",
        "{{.Action}} {{.Actor.ID}}",
    ]))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (action, id) = l.trim().split_once(' ')?;
            Some((action.to_string(), id.to_string()))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Runs of llm-sandbox
// ---------------------------------------------------------------------------------------

struct Run {
    exit: Option<i32>,
    stdout: String,
    stderr: String,
    report: Option<Value>,
    took: Duration,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?} after {:.1}s\n--- stdout:\n{}\n--- stderr:\n{}\n--- report:\n{}",
            self.exit,
            self.took.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end(),
            self.report
                .as_ref()
                .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
                .unwrap_or_else(|| "(none)".to_string())
        )
    }

    /// The report's entry of job `name`.
    fn job(&self, name: &str) -> Result<&Value, String> {
        self.report
            .as_ref()
            .and_then(|r| r["jobs"].as_array())
            .and_then(|jobs| jobs.iter().find(|j| j["name"] == name))
            .ok_or_else(|| format!("no job {name:?} in the JSON report; {}", self.describe()))
    }
}

/// `llm-sandbox run JOBFILE --json` with the docker client environment `env` only.
fn run_llm_sandbox(
    workdir: &Path,
    job_file: &Path,
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<Run, String> {
    let report_path = job_file.with_extension("report.json");
    let _ = fs::remove_file(&report_path);
    let mut cmd = common::bin();
    cmd.arg("run")
        .arg(job_file)
        .arg("--json")
        .arg(&report_path)
        .arg("--no-progress")
        .current_dir(workdir);
    clear_docker_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = run_with_timeout(&mut cmd, timeout)?;
    let report = fs::read_to_string(&report_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    Ok(Run {
        exit: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
        took: start.elapsed(),
    })
}

fn hello_job(name: &str) -> String {
    format!(
        r#"
[[jobs]]
name = "{name}"
lang = "bash"
backend = "docker"
code = "echo hello from $(hostname); cat /proc/self/mountinfo"
expect.stdout_contains = "hello"
"#
    )
}

/// Runs the passing job `name` of `job_file` and checks that it passed and that its
/// container ran on the second daemon.
fn expect_pass_on_second_daemon(
    d: &SecondDockerd,
    job_file: &Path,
    name: &str,
    env: &[(&str, String)],
) -> Result<(), String> {
    let since = SystemTime::now();
    let run = run_llm_sandbox(&d.dir, job_file, env, RUN_TIMEOUT)?;
    let until = SystemTime::now();
    let job = run.job(name)?;
    if job["status"] != "passed" || run.exit != Some(0) {
        return Err(format!(
            "job {name}: status {} (message: {}), expected passed; {}",
            job["status"],
            job["message"],
            run.describe()
        ));
    }
    // The second daemon ran a container in the meantime...
    let seen = d.container_events(since, until)?;
    let started: Vec<&str> = seen
        .iter()
        .filter(|(a, _)| a == "start")
        .map(|(_, id)| id.as_str())
        .collect();
    if started.is_empty() {
        return Err(format!(
            "job {name} passed but the second daemon started no container ({} events: {seen:?}); \
             did it run elsewhere? {}",
            seen.len(),
            run.describe()
        ));
    }
    // ...and the job's own root file system is in the second daemon's data root: its
    // mount table (printed by the job) names the overlay directories of that daemon.
    let data_root = format!("{}/", d.daemon_dir().join("data").display());
    let stdout = job["stdout"].as_str().unwrap_or_default();
    let root_line = stdout
        .lines()
        .find(|l| l.contains(" / / "))
        .unwrap_or("(no root mount printed)");
    if !root_line.contains(&data_root) {
        return Err(format!(
            "job {name} passed but its root file system is not in the second daemon's data              root {data_root}: {root_line}; {}",
            run.describe()
        ));
    }
    eprintln!(
        "ok: {name} passed on the second daemon in {:.1}s (container {})",
        run.took.as_secs_f64(),
        started.join(", ")
    );
    Ok(())
}

/// Runs the job `name` of `job_file` with broken TLS settings: status `error`, a message
/// that names the host, in time, no panic, no container on the daemon.
fn expect_error_naming_host(
    d: &SecondDockerd,
    job_file: &Path,
    name: &str,
    what: &str,
) -> Result<(), String> {
    let since = SystemTime::now();
    let run = run_llm_sandbox(&d.dir, job_file, &[], ERROR_TIMEOUT)
        .map_err(|e| format!("{what}: {e} (a TLS error must not hang)"))?;
    let until = SystemTime::now();
    if run.stderr.contains("panicked") {
        return Err(format!("{what}: llm-sandbox panicked; {}", run.describe()));
    }
    let job = run.job(name).map_err(|e| format!("{what}: {e}"))?;
    let message = job["message"].as_str().unwrap_or_default();
    let host = format!("127.0.0.1:{}", d.port);
    if job["status"] != "error" || run.exit != Some(1) || !message.contains(&host) {
        return Err(format!(
            "{what}: expected status error, exit 1 and a message naming {host}; got status {} \
             and message {message:?}; {}",
            job["status"],
            run.describe()
        ));
    }
    let created: Vec<_> = d
        .container_events(since, until)?
        .into_iter()
        .filter(|(a, _)| a == "create")
        .collect();
    if !created.is_empty() {
        return Err(format!(
            "{what}: the daemon created containers: {created:?}"
        ));
    }
    eprintln!(
        "ok: {what}: error in {:.1}s: {message}",
        run.took.as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[test]
fn docker_backend_runs_jobs_on_a_remote_daemon_over_tls() {
    if !requirements_met() {
        return;
    }
    let t0 = Instant::now();
    let d = SecondDockerd::start().unwrap_or_else(|e| panic!("second dockerd: {e}"));
    let t_start = t0.elapsed();
    d.load_image(IMAGE)
        .unwrap_or_else(|e| panic!("loading {IMAGE}: {e}"));
    let t_load = t0.elapsed();
    // The daemon itself works over TLS with the client certificate (not llm-sandbox yet).
    let hi = run_ok(
        d.docker_tls()
            .args(["run", "--rm", "--network", "none", IMAGE, "echo", "hi"]),
    )
    .unwrap_or_else(|e| panic!("the second dockerd cannot run {IMAGE} over TLS: {e}"));
    assert_eq!(hi.trim(), "hi");
    eprintln!(
        "second dockerd on {} ready in {:.1}s, {IMAGE} loaded in {:.1}s",
        d.host(),
        t_start.as_secs_f64(),
        (t_load - t_start).as_secs_f64()
    );

    let mut failures = Vec::new();

    // 1. [backends.docker] with host and tls, paths relative to the job file; DOCKER_HOST
    //    points elsewhere and must not matter.
    let client = d.client_dir();
    let table_job = client.join("remote.toml");
    let toml = format!(
        "[backends.docker]\nhost = \"{}\"\ntls = {{ ca = \"ca.pem\", cert = \"cert.pem\", key = \"key.pem\" }}\n{}",
        d.host(),
        hello_job("remote-hello")
    );
    fs::write(&table_job, toml).expect("write job file");
    let nowhere = format!("unix://{}", d.dir.join("no-such.sock").display());
    if let Err(e) =
        expect_pass_on_second_daemon(&d, &table_job, "remote-hello", &[("DOCKER_HOST", nowhere)])
    {
        failures.push(format!("[backends.docker] host + tls: {e}"));
    }

    // 2. No [backends.docker]: DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH.
    let env_dir = d.dir.join("jobs-env");
    fs::create_dir_all(&env_dir).expect("mkdir");
    let env_job = env_dir.join("remote-env.toml");
    fs::write(&env_job, hello_job("remote-hello-env")).expect("write job file");
    let env = [
        ("DOCKER_HOST", d.host()),
        ("DOCKER_TLS_VERIFY", "1".to_string()),
        ("DOCKER_CERT_PATH", client.display().to_string()),
    ];
    if let Err(e) = expect_pass_on_second_daemon(&d, &env_job, "remote-hello-env", &env) {
        failures.push(format!(
            "DOCKER_HOST + DOCKER_TLS_VERIFY + DOCKER_CERT_PATH: {e}"
        ));
    }

    // 3. Broken TLS settings: an error naming the host, not a hang or a panic.
    let bad = d.dir.join("jobs-bad");
    fs::create_dir_all(&bad).expect("mkdir");
    for (from, to) in [
        (d.pki().join("ca.pem"), "ca.pem"),
        (d.pki().join("wrong-ca.pem"), "wrong-ca.pem"),
        (client.join("cert.pem"), "cert.pem"),
        (client.join("key.pem"), "key.pem"),
    ] {
        fs::copy(from, bad.join(to)).expect("copy certificate");
    }
    let cases = [
        (
            "no-tls",
            "plain HTTP to the TLS port (no tls settings)",
            String::new(),
        ),
        (
            "wrong-ca",
            "a CA that did not sign the server certificate",
            "tls = { ca = \"wrong-ca.pem\", cert = \"cert.pem\", key = \"key.pem\" }\n".to_string(),
        ),
        (
            "no-client-cert",
            "TLS without a client certificate",
            "tls = { ca = \"ca.pem\" }\n".to_string(),
        ),
    ];
    for (name, what, tls) in cases {
        let file = bad.join(format!("{name}.toml"));
        let toml = format!(
            "[backends.docker]\nhost = \"{}\"\n{tls}{}",
            d.host(),
            hello_job(name)
        );
        fs::write(&file, toml).expect("write job file");
        if let Err(e) = expect_error_naming_host(&d, &file, name, what) {
            failures.push(e);
        }
    }

    let t_cases = t0.elapsed();
    drop(d);
    // The main daemon's bridge survives the second daemon (a regression: with
    // `--bridge=none` dockerd deletes `docker0`).
    let had_docker0 = Command::new("ip")
        .args(["link", "show", "docker0"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !had_docker0 {
        failures.push("the host's docker0 bridge is gone after the second dockerd".into());
    }
    eprintln!(
        "timing: daemon {:.1}s, image {:.1}s, jobs {:.1}s, stop and cleanup {:.1}s, total {:.1}s",
        t_start.as_secs_f64(),
        (t_load - t_start).as_secs_f64(),
        (t_cases - t_load).as_secs_f64(),
        (t0.elapsed() - t_cases).as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let mut report = String::new();
    for f in &failures {
        let _ = writeln!(report, "\n=== {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of 5 remote docker cases failed:{report}",
        failures.len()
    );
}
