//! The connection to a Docker-API engine (Docker, later Podman's compatible service), the
//! labels on everything we create, the sweep of what killed runs left, and the images:
//! present → used, absent → pulled, `dockerfile` → built by content hash, `libraries` and
//! `setup` → a template image committed from a prepare container.

use crate::backend::error::error_chain;
use crate::backend::Error;
use crate::owner;
use crate::spec::types::BackendKind;
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Marks everything llm-sandbox creates.
pub const LABEL: &str = "llm-sandbox";
/// `ls-<pid>-<starttime>` of the runner that created it.
pub const LABEL_OWNER: &str = "llm-sandbox.owner";
/// The [`crate::backend::Scope`] that created it (a run, a session): what its end removes.
pub const LABEL_SCOPE: &str = "llm-sandbox.scope";
/// Host name of that runner (its pid means nothing elsewhere).
pub const LABEL_HOST: &str = "llm-sandbox.host";
/// `job`, `prepare`, `build`, `template`.
pub const LABEL_KIND: &str = "llm-sandbox.kind";
/// Images: `true` when kept for later runs (`keep_template`).
pub const LABEL_KEEP: &str = "llm-sandbox.keep";
/// Images: the hash of their inputs.
pub const LABEL_KEY: &str = "llm-sandbox.key";

/// What a foreign runner's leftovers must be older than before a sweep removes them.
const FOREIGN_AGE: Duration = Duration::from_secs(24 * 3600);

/// Request timeout of the client: long, the runner keeps its own per-step timeouts.
const CLIENT_TIMEOUT_S: u64 = 24 * 3600;

/// Where to connect: an endpoint and, for TCP, TLS material.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.host)?;
        if self.tls.is_some() {
            write!(f, " (TLS)")?;
        }
        Ok(())
    }
}

fn truthy(v: Option<std::ffi::OsString>) -> bool {
    v.is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

impl Endpoint {
    /// As docker does: the job file's `[backends.docker]` (`host`, `tls` relative to the job
    /// file), else `DOCKER_HOST` with `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`, else the local
    /// socket.
    pub fn resolve(
        host: Option<&str>,
        tls: Option<&crate::spec::types::TlsConfig>,
        base: &Path,
    ) -> Result<Endpoint, Error> {
        let env_host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        let host = host
            .map(String::from)
            .or(env_host)
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let tls = match tls {
            Some(t) => {
                let cert_dir = cert_path();
                let pick = |v: &Option<String>, default: &str| -> PathBuf {
                    match v {
                        Some(p) => base.join(p),
                        None => cert_dir.join(default),
                    }
                };
                Some(TlsFiles {
                    ca: pick(&t.ca, "ca.pem"),
                    cert: pick(&t.cert, "cert.pem"),
                    key: pick(&t.key, "key.pem"),
                })
            }
            None if truthy(std::env::var_os("DOCKER_TLS_VERIFY"))
                || host.starts_with("https://") =>
            {
                let d = cert_path();
                Some(TlsFiles {
                    ca: d.join("ca.pem"),
                    cert: d.join("cert.pem"),
                    key: d.join("key.pem"),
                })
            }
            None => None,
        };
        if let Some(t) = &tls {
            if host.starts_with("unix://") {
                return Err(Error::Unavailable(format!(
                    "TLS settings apply to tcp:// hosts, not to {host}"
                )));
            }
            for (what, p) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
                if !p.is_file() {
                    return Err(Error::Unavailable(format!(
                        "the TLS {what} file {} of the Docker host {host} does not exist (set backends.docker.tls.{what}, or DOCKER_CERT_PATH)",
                        p.display()
                    )));
                }
            }
        }
        Ok(Endpoint { host, tls })
    }
}

/// The rootful Podman API socket.
pub const PODMAN_ROOTFUL_SOCKET: &str = "/run/podman/podman.sock";

/// The rootless Podman API socket of this user: `$XDG_RUNTIME_DIR/podman/podman.sock`.
pub fn podman_rootless_socket() -> PathBuf {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", nix::unistd::getuid())));
    runtime.join("podman/podman.sock")
}

/// How a Podman socket was chosen (for `doctor` and error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodmanSource {
    Config,
    ContainerHost,
    Rootful,
    Rootless,
}

impl PodmanSource {
    pub fn describe(self) -> &'static str {
        match self {
            PodmanSource::Config => "backends.podman.socket",
            PodmanSource::ContainerHost => "CONTAINER_HOST",
            PodmanSource::Rootful => "the rootful socket",
            PodmanSource::Rootless => "the rootless socket",
        }
    }
}

/// How to start Podman's API service for this user.
pub fn podman_start_hint() -> String {
    let sock = if nix::unistd::geteuid().is_root() {
        PathBuf::from(PODMAN_ROOTFUL_SOCKET)
    } else {
        podman_rootless_socket()
    };
    format!(
        "start Podman's API service: `podman system service --time=0 unix://{} &` (or `scripts/engines podman`; with systemd: `systemctl {}start podman.socket`), or set backends.podman.socket / CONTAINER_HOST",
        sock.display(),
        if nix::unistd::geteuid().is_root() { "" } else { "--user " }
    )
}

impl Endpoint {
    /// As podman-remote does: the job file's `backends.podman.socket` (a path is relative
    /// to the job file), else `CONTAINER_HOST`, else the rootful socket when it exists and
    /// this user may use it, else the rootless one under `XDG_RUNTIME_DIR`.
    pub fn resolve_podman(
        socket: Option<&str>,
        base: &Path,
    ) -> Result<(Endpoint, PodmanSource), Error> {
        let as_host = |s: &str| -> Result<String, String> {
            if s.contains("://") {
                if s.starts_with("unix://") || s.starts_with("tcp://") || s.starts_with("http://") {
                    Ok(s.to_string())
                } else {
                    Err(format!(
                        "unsupported Podman socket `{s}`: use unix:///path/to/podman.sock, a path, or tcp://host:port (ssh:// connections are not supported: run `podman system service` on that host and forward its socket)"
                    ))
                }
            } else {
                Ok(format!("unix://{}", base.join(s).display()))
            }
        };
        if let Some(s) = socket.filter(|s| !s.is_empty()) {
            return Ok((
                Endpoint {
                    host: as_host(s).map_err(Error::Unavailable)?,
                    tls: None,
                },
                PodmanSource::Config,
            ));
        }
        if let Some(s) = std::env::var("CONTAINER_HOST")
            .ok()
            .filter(|s| !s.is_empty())
        {
            let host =
                as_host(&s).map_err(|e| Error::Unavailable(format!("CONTAINER_HOST: {e}")))?;
            return Ok((Endpoint { host, tls: None }, PodmanSource::ContainerHost));
        }
        let rootful = Path::new(PODMAN_ROOTFUL_SOCKET);
        let usable =
            |p: &Path| p.exists() && nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
        let rootless = podman_rootless_socket();
        let (path, source) =
            if usable(rootful) || (!rootless.exists() && nix::unistd::geteuid().is_root()) {
                (rootful.to_path_buf(), PodmanSource::Rootful)
            } else {
                (rootless, PodmanSource::Rootless)
            };
        Ok((
            Endpoint {
                host: format!("unix://{}", path.display()),
                tls: None,
            },
            source,
        ))
    }
}

fn cert_path() -> PathBuf {
    std::env::var_os("DOCKER_CERT_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .unwrap_or_else(|| PathBuf::from(".docker"))
}

/// A connected engine.
pub struct Engine {
    pub docker: Docker,
    pub kind: BackendKind,
    pub endpoint: String,
    /// Whether the daemon runs on this machine (stale-owner checks by pid apply).
    pub local: bool,
    /// The id of the scope that connected it ([`LABEL_SCOPE`] of what it creates).
    pub scope: String,
    /// Images this run built and must remove at its end (not kept).
    built: Mutex<Vec<String>>,
    /// One build/pull/prepare at a time per image key.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Images found present in this scope, by name: their id (a job does not ask the
    /// engine again; an image this scope removes is forgotten).
    present: Mutex<HashMap<String, String>>,
    /// Why this engine cannot enforce the sandbox limits (rootless Podman on cgroup v1):
    /// hardened containers are refused with this message.
    pub limits_unenforced: Option<String>,
    /// The removal of what runs which are gone left, started when the scope connected.
    sweeping: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

type Slot = Arc<tokio::sync::OnceCell<Result<Arc<Engine>, Error>>>;
/// An engine of a [`crate::backend::Scope`], connected once.
pub type EngineSlot = (Endpoint, BackendKind, Slot);

/// Connects once per endpoint per scope (and sweeps what dead runs left on it).
pub async fn connect(
    scope: &crate::backend::Scope,
    ep: &Endpoint,
    kind: BackendKind,
) -> Result<Arc<Engine>, Error> {
    let slot = {
        let mut all = scope
            .engines
            .lock()
            .map_err(|_| Error::Engine("engine registry poisoned".into()))?;
        match all.iter().find(|(e, k, _)| e == ep && *k == kind) {
            Some((_, _, s)) => s.clone(),
            None => {
                let s: Slot = Arc::default();
                all.push((ep.clone(), kind, s.clone()));
                s
            }
        }
    };
    slot.get_or_init(|| async {
        let e = Arc::new(open(ep, kind, &scope.id).await?);
        // Images first and waited for (this run may be about to use a template a killed
        // run built); the containers in the background, while this run starts its own (the
        // end of the run waits for it: [`Engine::finish_run`]).
        e.sweep_stale_images().await;
        let bg = e.clone();
        let sweep = tokio::spawn(async move { bg.sweep_stale_containers().await });
        *e.sweeping.lock().unwrap_or_else(|p| p.into_inner()) = Some(sweep);
        Ok(e)
    })
    .await
    .clone()
}

/// Wraps a client the caller built (library API).
pub async fn from_client(
    docker: Docker,
    kind: BackendKind,
    scope: &crate::backend::Scope,
) -> Result<Arc<Engine>, Error> {
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| Error::Unavailable(format!("cannot reach the {kind} engine: {e}")))?;
    Ok(Arc::new(Engine::new(
        docker,
        kind,
        "caller-provided client".into(),
        true,
        scope.id.clone(),
    )))
}

/// Every engine the scope connected to (for its end).
pub fn connected(scope: &crate::backend::Scope) -> Vec<Arc<Engine>> {
    scope
        .engines
        .lock()
        .map(|all| {
            all.iter()
                .filter_map(|(_, _, s)| s.get().and_then(|r| r.as_ref().ok().cloned()))
                .collect()
        })
        .unwrap_or_default()
}

async fn open(ep: &Endpoint, kind: BackendKind, scope: &str) -> Result<Engine, Error> {
    use bollard::API_DEFAULT_VERSION as V;
    let host = ep.host.as_str();
    let client = if let Some(path) = host.strip_prefix("unix://") {
        if !Path::new(path).exists() {
            return Err(Error::Unavailable(unreachable(
                kind,
                host,
                &format!("{path} does not exist"),
            )));
        }
        Docker::connect_with_unix(host, CLIENT_TIMEOUT_S, V)
    } else if let Some(t) = &ep.tls {
        let addr = host.replacen("https://", "tcp://", 1);
        Docker::connect_with_ssl(&addr, &t.key, &t.cert, &t.ca, CLIENT_TIMEOUT_S, V)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, CLIENT_TIMEOUT_S, V)
    } else {
        return Err(Error::Unavailable(format!(
            "unsupported {kind} host `{host}`: use unix:///path/to/docker.sock or tcp://host:port"
        )));
    }
    .map_err(|e| Error::Unavailable(unreachable(kind, host, &e.to_string())))?;
    // A local socket's version comes from `/_ping` (below); else bollard asks `/version`.
    let pinged = match host.strip_prefix("unix://") {
        Some(path) => ping_api_version(path).await,
        None => None,
    };
    let docker = match pinged {
        Some(v) => Docker::connect_with_unix(host, CLIENT_TIMEOUT_S, if v < *V { &v } else { V })
            .map_err(|e| Error::Unavailable(unreachable(kind, host, &e.to_string())))?,
        None => tokio::time::timeout(Duration::from_secs(20), client.negotiate_version())
            .await
            .map_err(|_| Error::Unavailable(unreachable(kind, host, "no answer within 20s")))?
            .map_err(|e| Error::Unavailable(unreachable(kind, host, &error_chain(&e))))?,
    };
    let local = host.starts_with("unix://")
        || host.contains("://127.0.0.1")
        || host.contains("://localhost")
        || host.contains("://[::1]");
    let mut e = Engine::new(docker, kind, host.to_string(), local, scope.to_string());
    if kind == BackendKind::Podman {
        e.limits_unenforced = rootless_cgroup_v1(&e, host).await;
    }
    Ok(e)
}

/// The API version the engine behind a local socket speaks: the `Api-Version` header of
/// `GET /_ping`, as the docker CLI negotiates. About a millisecond, where `/version` (what
/// bollard's negotiation asks) took 15-110 ms of Docker and about a second of Podman here,
/// at the start of every run. None when the answer has no such header (bollard asks then).
async fn ping_api_version(path: &str) -> Option<bollard::ClientVersion> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::UnixStream::connect(path).await.ok()?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
            .await
            .ok()?;
        // The headers are enough (HTTP/1.0: the engine closes the connection after them
        // and a two-byte body; one that keeps it open is not waited for).
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.len() < 64 * 1024 {
            match s.read(&mut chunk).await.ok()? {
                0 => break,
                n => answer.extend_from_slice(&chunk[..n]),
            }
        }
        api_version_header(&String::from_utf8_lossy(&answer))
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .ok()
        .flatten()
}

/// `Api-Version: 1.41` among an HTTP answer's headers.
fn api_version_header(answer: &str) -> Option<bollard::ClientVersion> {
    let head = answer.split("\r\n\r\n").next()?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    let value = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("api-version")
            .then(|| v.trim())
    })?;
    let (major, minor) = value.split_once('.')?;
    Some(bollard::ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

/// Rootless Podman on cgroup v1 cannot set any resource limit and ignores them without an
/// error: sandboxes there would have no memory, pids or CPU bound. Says so, with the fixes.
/// Rootless is recognised by the owner of a local socket (the service runs as that user).
async fn rootless_cgroup_v1(e: &Engine, host: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(host.strip_prefix("unix://")?).ok()?.uid();
    if owner == 0 {
        return None;
    }
    let info = e.docker.info().await.ok()?;
    (info.cgroup_version.map(|v| v.to_string()).as_deref() == Some("1")).then(|| {
        format!(
            "rootless Podman (the service at {host} runs as uid {owner}) cannot enforce memory, pids or CPU limits on this host's cgroup v1: it ignores them, so llm-sandbox refuses to run untrusted code there. Use cgroup v2 (boot with systemd.unified_cgroup_hierarchy=1), rootful Podman (`sudo scripts/engines podman`, socket /run/podman/podman.sock), the docker backend, or the native backend"
        )
    })
}

/// What `doctor` says of an engine: its version and which default images it has. Connects
/// without the sweep of [`connect`] (doctor changes nothing).
pub async fn probe(ep: &Endpoint, kind: BackendKind) -> Result<(String, Vec<String>), Error> {
    let e = open(ep, kind, "").await?;
    if let Some(why) = &e.limits_unenforced {
        return Err(Error::Unavailable(why.clone()));
    }
    let version = e
        .docker
        .version()
        .await
        .map_err(|err| Error::Unavailable(unreachable(kind, &ep.host, &error_chain(&err))))?
        .version
        .unwrap_or_else(|| "?".into());
    let mut missing = Vec::new();
    for l in crate::spec::types::Lang::ALL {
        let image = crate::lang::spec(l).default_image;
        if !missing.iter().any(|m| m == image) && e.image_id(image).await.is_none() {
            missing.push(image.to_string());
        }
    }
    Ok((version, missing))
}

/// `doctor` for an engine found from the environment, as a job without `backends`
/// settings would find it: its version, where it was found, and which default images it
/// lacks.
pub async fn doctor(kind: BackendKind) -> Result<String, Error> {
    let (ep, found) = if kind == BackendKind::Podman {
        let (ep, source) = Endpoint::resolve_podman(None, Path::new("."))?;
        (ep, source.describe())
    } else {
        let ep = Endpoint::resolve(None, None, Path::new("."))?;
        let from = if std::env::var_os("DOCKER_HOST").is_some() {
            "DOCKER_HOST"
        } else {
            "the local socket"
        };
        (ep, from)
    };
    let (version, missing) = probe(&ep, kind).await?;
    let images = if missing.is_empty() {
        "every default image present".to_string()
    } else {
        format!(
            "default images missing: {} (build them: scripts/build-images {kind})",
            missing.join(", ")
        )
    };
    Ok(format!(
        "{kind} {version} at {} ({found}); {images}",
        ep.host
    ))
}

fn unreachable(kind: BackendKind, host: &str, why: &str) -> String {
    let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
    let lower = why.to_lowercase();
    let tls = [
        "certificate",
        "tls",
        "https",
        "handshake",
        "unknownissuer",
        "ssl",
    ];
    if tls.iter().any(|t| lower.contains(t)) {
        return format!(
            "cannot reach the {kind} engine at {host}: {why}; the daemon answered but the TLS settings do not match: check backends.docker.tls (ca, cert, key) or DOCKER_TLS_VERIFY and DOCKER_CERT_PATH"
        );
    }
    if lower.contains("permission denied") {
        return format!(
            "cannot reach the {kind} engine at {host}: {why}; this user may not use that socket: {}",
            match kind {
                BackendKind::Podman => "use the rootless socket of your own `podman system service` (or run as root)".to_string(),
                _ => "join the `docker` group (`sudo usermod -aG docker $USER`, then log in again), or run as root".to_string(),
            }
        );
    }
    let fix = match kind {
        BackendKind::Podman => podman_start_hint(),
        _ => "start it (`scripts/engines docker`, or `sudo systemctl start docker`), or point backends.docker.host / DOCKER_HOST at a running daemon".to_string(),
    };
    format!("cannot reach the {kind} engine at {host}: {why}; {fix}")
}

impl Engine {
    fn new(
        docker: Docker,
        kind: BackendKind,
        endpoint: String,
        local: bool,
        scope: String,
    ) -> Engine {
        Engine {
            docker,
            kind,
            endpoint,
            local,
            scope,
            built: Mutex::new(Vec::new()),
            locks: Mutex::new(HashMap::new()),
            present: Mutex::new(HashMap::new()),
            limits_unenforced: None,
            sweeping: Mutex::new(None),
        }
    }

    /// The labels of an object this run creates.
    pub fn labels(&self, kind: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL.to_string(), "1".to_string()),
            (LABEL_OWNER.to_string(), owner::prefix()),
            (LABEL_SCOPE.to_string(), self.scope.clone()),
            (LABEL_HOST.to_string(), owner::hostname()),
            (LABEL_KIND.to_string(), kind.to_string()),
        ])
    }

    fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut all = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(key.to_string()).or_default().clone()
    }

    /// Whether an object with these labels belongs to a runner that is gone.
    fn is_stale(&self, labels: &HashMap<String, String>, created: i64) -> bool {
        let Some(o) = labels.get(LABEL_OWNER) else {
            return false;
        };
        if *o == owner::prefix() {
            return false;
        }
        let same_host = labels.get(LABEL_HOST) == Some(&owner::hostname());
        if same_host && self.local {
            return owner::stale_owner_pid(o, "").is_some();
        }
        let now = chrono::Utc::now().timestamp();
        now - created > FOREIGN_AGE.as_secs() as i64
    }

    /// Removes containers (and Podman's volumes of them) that runs which are gone left
    /// behind: ours by label only, never anything else.
    async fn sweep_stale_containers(&self) {
        self.remove_containers_where(|l, created| self.is_stale(l, created))
            .await;
    }

    /// Our containers that `remove` picks, by their labels and creation time (Unix
    /// seconds), then on Podman their tmpfs volumes (once the containers are gone).
    async fn remove_containers_where(
        &self,
        remove: impl Fn(&HashMap<String, String>, i64) -> bool,
    ) {
        let filters = HashMap::from([("label", vec![LABEL])]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        if let Ok(list) = self.docker.list_containers(Some(opts)).await {
            for c in list {
                let labels = c.labels.unwrap_or_default();
                if remove(&labels, c.created.unwrap_or(0)) {
                    if let Some(id) = c.id {
                        tracing::info!("removing container {id}");
                        self.remove_container(&id).await;
                    }
                }
            }
        }
        if self.kind == BackendKind::Podman {
            self.remove_volumes_where(|l, created| !remove(l, created))
                .await;
        }
    }

    /// Removes the images without `keep_template` that runs which are gone built.
    async fn sweep_stale_images(&self) {
        let filters = HashMap::from([("label", vec![format!("{LABEL_KEEP}=false")])]);
        let opts = bollard::query_parameters::ListImagesOptionsBuilder::default()
            .filters(&filters)
            .build();
        if let Ok(list) = self.docker.list_images(Some(opts)).await {
            for i in list {
                if self.is_stale(&i.labels, i.created) {
                    self.remove_image(&i.id).await;
                }
            }
        }
    }

    pub async fn remove_container(&self, id: &str) {
        let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        // Podman refuses while the container is stopping by itself (its keep-alive stream
        // was just closed): "could not be stopped … container state improper". Retry.
        for attempt in 1..=20u64 {
            match self.docker.remove_container(id, Some(opts.clone())).await {
                Ok(()) => return,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return,
                Err(e) => {
                    tracing::debug!(
                        "removing container {id} (attempt {attempt}): {}",
                        error_chain(&e)
                    );
                    if attempt == 20 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50 * attempt.min(5))).await;
                }
            }
        }
    }

    /// A named volume of the local driver that is a tmpfs mounted with `options` (Podman
    /// passes them to mount(2) as they are), labelled as ours.
    pub async fn create_tmpfs_volume(&self, name: &str, options: &str) -> Result<(), Error> {
        let body = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            driver: Some("local".into()),
            driver_opts: Some(HashMap::from([
                ("type".to_string(), "tmpfs".to_string()),
                ("device".to_string(), "tmpfs".to_string()),
                ("o".to_string(), options.to_string()),
            ])),
            labels: Some(self.labels("volume")),
            ..Default::default()
        };
        self.docker
            .create_volume(body)
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::Engine(format!(
                    "cannot create the tmpfs volume {name} on {}: {}",
                    self.endpoint,
                    error_chain(&e)
                ))
            })
    }

    pub async fn remove_volumes(&self, names: &[String]) {
        for name in names {
            // Never `force`: Podman would remove the containers using the volume.
            if let Err(e) = self
                .docker
                .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await
            {
                tracing::debug!("removing volume {name}: {}", error_chain(&e));
            }
        }
    }

    /// Our volumes (Podman's tmpfs volumes) that `keep` does not want, by their labels.
    /// `keep` sees a volume's labels and its creation time (Unix seconds).
    async fn remove_volumes_where(&self, keep: impl Fn(&HashMap<String, String>, i64) -> bool) {
        let filters = HashMap::from([("label", vec![LABEL])]);
        let opts = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        if let Ok(list) = self.docker.list_volumes(Some(opts)).await {
            let names: Vec<String> = list
                .volumes
                .unwrap_or_default()
                .into_iter()
                .filter(|v| {
                    let created = v
                        .created_at
                        .as_deref()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map_or(0, |t| t.timestamp());
                    !keep(&v.labels, created)
                })
                .map(|v| v.name)
                .collect();
            self.remove_volumes(&names).await;
        }
    }

    async fn remove_image(&self, id: &str) {
        self.present
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, i| name != id && i != id);
        let opts = bollard::query_parameters::RemoveImageOptionsBuilder::default()
            .force(true)
            .build();
        let _ = self.docker.remove_image(id, Some(opts), None).await;
    }

    /// The end of its scope (a run): removes every container of the scope still there, and
    /// again those of runs that are gone (swept when the scope connected): an
    /// engine may still have been creating containers for a run killed just before this one
    /// started (its requests were in flight) after that sweep. Then the images it built
    /// without `keep_template`.
    pub async fn finish_run(&self) {
        let sweep = self
            .sweeping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(sweep) = sweep {
            let _ = sweep.await;
        }
        self.remove_containers_where(|labels, created| {
            labels.get(LABEL_SCOPE) == Some(&self.scope) || self.is_stale(labels, created)
        })
        .await;
        self.finish_session().await;
    }

    /// The end of a library session: the images it built without `keep_template`.
    pub async fn finish_session(&self) {
        let built: Vec<String> =
            std::mem::take(&mut *self.built.lock().unwrap_or_else(|e| e.into_inner()));
        for image in built {
            self.remove_image(&image).await;
        }
    }

    /// The image's id when it is present locally (asked once per scope: an inspection
    /// per job cost a round trip to the engine each).
    pub async fn image_id(&self, name: &str) -> Option<String> {
        let known = |s: &Self| {
            s.present
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned()
        };
        if let Some(id) = known(self) {
            return Some(id);
        }
        let id = self
            .docker
            .inspect_image(name)
            .await
            .ok()
            .and_then(|i| i.id)?;
        self.present
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), id.clone());
        Some(id)
    }

    /// Makes `image` available: present → used, absent → pulled.
    pub async fn ensure_image(&self, image: &str) -> Result<String, Error> {
        let lock = self.lock(image);
        let _g = lock.lock().await;
        if let Some(id) = self.image_id(image).await {
            return Ok(id);
        }
        let opts = bollard::query_parameters::CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut s = self.docker.create_image(Some(opts), None, None);
        let mut last_err = None;
        while let Some(item) = s.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        last_err = Some(e);
                    }
                }
                Err(e) => {
                    last_err = Some(error_chain(&e));
                    break;
                }
            }
        }
        match self.image_id(image).await {
            Some(id) => Ok(id),
            None => Err(Error::Prepare {
                message: format!(
                "image `{image}` is not on the {} engine at {} and could not be pulled ({}); build the default images with `scripts/build-images {}`, or load/build `{image}` there",
                self.kind,
                self.endpoint,
                last_err.unwrap_or_else(|| "no error given".into()),
                if self.kind == BackendKind::Podman { "podman" } else { "docker" }
            ),
                log: None,
            }),
        }
    }

    /// Builds a Dockerfile (its folder is the context), tagged by the hash of the context;
    /// an image with that tag is reused.
    pub async fn build_dockerfile(&self, dockerfile: &Path, keep: bool) -> Result<String, Error> {
        let dir = dockerfile.parent().unwrap_or(Path::new("."));
        let (context, hash) = context_tar(dir, dockerfile).map_err(|e| Error::Prepare {
            message: format!("cannot read the build context {}: {e}", dir.display()),
            log: None,
        })?;
        let tag = format!("llm-sandbox/build:{}", &hash[..16]);
        let lock = self.lock(&tag);
        let _g = lock.lock().await;
        if self.image_id(&tag).await.is_some() {
            return Ok(tag);
        }
        let mut labels = self.labels("build");
        labels.insert(LABEL_KEEP.into(), keep.to_string());
        labels.insert(LABEL_KEY.into(), hash.clone());
        let name = dockerfile
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into());
        let opts = bollard::query_parameters::BuildImageOptionsBuilder::default()
            .dockerfile(&name)
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            .build();
        let mut s = self
            .docker
            .build_image(opts, None, Some(bollard::body_full(context.into())));
        let mut log = String::new();
        let mut err = None;
        while let Some(item) = s.next().await {
            match item {
                Ok(info) => {
                    if let Some(l) = info.stream {
                        log.push_str(&l);
                    }
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        err = Some(e);
                    }
                }
                Err(e) => {
                    err = Some(error_chain(&e));
                    break;
                }
            }
        }
        if let Some(e) = err {
            return Err(Error::Prepare {
                message: format!("building {} failed: {e}", dockerfile.display()),
                log: Some(tail(&log, 30)),
            });
        }
        if self.image_id(&tag).await.is_none() {
            return Err(Error::Prepare {
                message: format!("building {} produced no image:", dockerfile.display()),
                log: Some(tail(&log, 30)),
            });
        }
        if !keep {
            self.built
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(tag.clone());
        }
        Ok(tag)
    }

    /// Registers an image this run made and must remove at its end.
    pub fn built_by_run(&self, image: &str) {
        self.built
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(image.to_string());
    }

    /// A per-key lock for callers that build images (templates).
    pub fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.lock(key)
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A deterministic tar of the build context (sorted, mtime 0, no owners) and its sha256.
/// Symlinks in the context are stored as links (docker does the same); `.dockerignore`
/// patterns are honoured for plain names and globs.
fn context_tar(dir: &Path, dockerfile: &Path) -> std::io::Result<(Vec<u8>, String)> {
    use sha2::Digest;
    let ignore = std::fs::read_to_string(dir.join(".dockerignore")).unwrap_or_default();
    let mut set = globset::GlobSetBuilder::new();
    for line in ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Ok(g) = globset::Glob::new(line.trim_start_matches('/')) {
            set.add(g);
        }
    }
    let ignored = set.build().unwrap_or_else(|_| globset::GlobSet::empty());
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap_or(&p).to_path_buf();
            if ignored.is_match(&rel) && p != dockerfile {
                continue;
            }
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(p.clone());
            }
            files.push((rel, p, ft));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    for (rel, p, ft) in &files {
        if ft.is_dir() || ft.is_file() || ft.is_symlink() {
            b.append_path_with_name(p, rel)?;
        }
    }
    let bytes = b.into_inner()?;
    let hash: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((bytes, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local engine's version comes from `/_ping` on its socket, also when the engine
    /// keeps the connection open after answering; no answer gives None (bollard then asks).
    #[tokio::test]
    async fn a_local_engine_is_pinged_for_its_version() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            for close in [true, false] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = vec![0u8; 1024];
                let n = s.read(&mut req).await.unwrap();
                // Only the ping is answered with a version.
                let answer: &[u8] = if req[..n].starts_with(b"GET /_ping HTTP/1.") {
                    b"HTTP/1.1 200 OK\r\nApi-Version: 1.43\r\nContent-Length: 2\r\n\r\nOK"
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                };
                s.write_all(answer).await.unwrap();
                if !close {
                    // Held open well past the test's bound.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        });
        let p = path.to_str().unwrap();
        let v = ping_api_version(p)
            .await
            .map(|v| (v.major_version, v.minor_version));
        assert_eq!(v, Some((1, 43)));
        let t = std::time::Instant::now();
        let v = ping_api_version(p)
            .await
            .map(|v| (v.major_version, v.minor_version));
        assert_eq!(v, Some((1, 43)));
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "waited for the connection to close"
        );
        server.abort();
        let missing = d.path().join("none.sock");
        assert!(ping_api_version(missing.to_str().unwrap()).await.is_none());
    }

    #[test]
    fn the_api_version_of_a_ping_answer() {
        let v = |a: &str| api_version_header(a).map(|v| (v.major_version, v.minor_version));
        let docker = "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK";
        assert_eq!(v(docker), Some((1, 41)));
        assert_eq!(
            v("HTTP/1.0 200 OK\r\napi-version:1.47\r\n\r\nOK"),
            Some((1, 47))
        );
        // No header, an error, a body that only looks like one, or not a version: bollard
        // negotiates instead.
        assert_eq!(v("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"), None);
        assert_eq!(
            v("HTTP/1.1 500 Internal\r\nApi-Version: 1.41\r\n\r\n"),
            None
        );
        assert_eq!(v("HTTP/1.1 200 OK\r\n\r\nApi-Version: 1.41"), None);
        assert_eq!(v("HTTP/1.1 200 OK\r\nApi-Version: v1\r\n\r\n"), None);
        assert_eq!(v("SSH-2.0-OpenSSH\r\n"), None);
    }

    #[test]
    fn endpoint_from_job_settings_and_errors() {
        let d = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let tls = crate::spec::types::TlsConfig {
            ca: Some("ca.pem".into()),
            cert: Some("cert.pem".into()),
            key: Some("key.pem".into()),
        };
        let ep = Endpoint::resolve(Some("tcp://127.0.0.1:2376"), Some(&tls), d.path()).unwrap();
        assert_eq!(ep.host, "tcp://127.0.0.1:2376");
        assert_eq!(ep.tls.unwrap().ca, d.path().join("ca.pem"));
        let bad = crate::spec::types::TlsConfig {
            ca: Some("missing.pem".into()),
            ..tls.clone()
        };
        let e = Endpoint::resolve(Some("tcp://h:1"), Some(&bad), d.path()).unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("missing.pem") && e.contains("tls.ca"), "{e}");
        let e = Endpoint::resolve(Some("unix:///x.sock"), Some(&tls), d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tcp://"), "{e}");
    }

    #[test]
    fn context_hash_is_stable_and_content_sensitive() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(d.path().join("a.txt"), "1").unwrap();
        std::fs::write(d.path().join("skip.log"), "1").unwrap();
        std::fs::write(d.path().join(".dockerignore"), "*.log\n").unwrap();
        let df = d.path().join("Dockerfile");
        let (_, h1) = context_tar(d.path(), &df).unwrap();
        std::fs::write(d.path().join("skip.log"), "2").unwrap();
        let (_, h2) = context_tar(d.path(), &df).unwrap();
        assert_eq!(h1, h2, "ignored files do not change the hash");
        std::fs::write(d.path().join("a.txt"), "2").unwrap();
        let (_, h3) = context_tar(d.path(), &df).unwrap();
        assert_ne!(h1, h3);
    }
}
