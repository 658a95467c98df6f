//! The fake API server itself (used by main.rs and, through `#[path]`, by the tests).
//!
//! What it serves (JSON over HTTP/1.1 on 127.0.0.1, no authentication):
//! - `GET /version`, `GET /api`;
//! - pods: `POST /api/v1/namespaces/{ns}/pods` (create, `generateName` too),
//!   `GET .../pods/{name}`, `GET .../pods` and `GET /api/v1/pods` (list, `labelSelector`
//!   with `k=v`, `k!=v`, `k`, `!k`), `DELETE .../pods/{name}`, `DELETE .../pods` (collection,
//!   `labelSelector`);
//! - `GET`/`POST .../pods/{name}/exec?command=…&stdin=…&stdout=…&stderr=…&container=…`,
//!   upgraded to a WebSocket with the subprotocol `v5.channel.k8s.io` (preferred) or
//!   `v4.channel.k8s.io`: channel 0 stdin, 1 stdout, 2 stderr (streamed as the program
//!   writes), 3 the final `Status` exactly as the real API server sends it, and (v5) 255
//!   to close stdin. With v4 there is no way to close stdin but closing the WebSocket,
//!   which ends the exec (as it does on a real API server): use v5 for programs that
//!   read their stdin to the end.
//! - network policies: `POST`/`GET`/`DELETE /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies[/{name}]`
//!   (stored; pods labelled `llm-sandbox.network=off` get no network, as a CNI enforcing
//!   the backend's deny-all policy would do).
//!
//! Every exec runs in llm-sandbox's native sandbox (namespaces, seccomp, cgroup limits)
//! as uid 1000 with the pod's `/sandbox` directory bind-mounted (kept across the pod's
//! execs; when the server runs as root it is a tmpfs of the size of the `sizeLimit` of the
//! pod's `/sandbox` volume, for up to 64 pods at once). `/tmp` is fresh per exec. The
//! container's `resources.limits` (memory, cpu) become the sandbox's limits, the pod
//! annotations `llm-sandbox.pids` and `llm-sandbox.open-files` its pids and open-files
//! limits. OOM kills and pids-limit hits are counted in the pod's `/sys/fs/cgroup`
//! (`memory.events`, `pids.events`), as cgroup v2 shows them in a real container.

//! What it does not emulate: images (never pulled: every pod has the host's toolchains),
//! scheduling beyond one node, watches, other resources.
//!
//! Making pods fail to start, for testing bounded waits: an image whose name contains
//! `unpullable` stays `Pending` with the waiting reason `ErrImagePull`, then
//! `ImagePullBackOff`; a pod requesting more CPU than the host has stays `Pending` with
//! the condition `PodScheduled=False`, reason `Unschedulable`.

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use llm_sandbox::backend::kubernetes::pod::parse_quantity;
use llm_sandbox::sandbox::host::{self, Io};
use llm_sandbox::sandbox::proto::Msg;
use llm_sandbox::sandbox::{Bind, SandboxConfig, SandboxLimits, Step, StepKind};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Body = Full<Bytes>;

/// The pod annotation naming the pids limit of its execs.
pub const ANNOTATION_PIDS: &str = "llm-sandbox.pids";
/// The pod annotation naming the open-files limit of its execs.
pub const ANNOTATION_OPEN_FILES: &str = "llm-sandbox.open-files";
/// The pod label that turns its network off.
pub const LABEL_NETWORK: &str = "llm-sandbox.network";

/// Why a pod does not start.
#[derive(Debug, Clone)]
enum NotReady {
    ImagePull(String),
    Unschedulable(String),
}

struct Pod {
    obj: Value,
    dir: PathBuf,
    /// The tmpfs slot that is its `/sandbox` (else `dir/sandbox`).
    slot: Option<PathBuf>,
    not_ready: Option<NotReady>,
    created: std::time::Instant,
    /// Cancelled when the pod is deleted: its execs stop.
    cancel: CancellationToken,
}

struct State {
    root: tempfile::TempDir,
    /// Size-limited tmpfs mounts made before any sandbox exists (a mount made later would
    /// not be seen by the sandbox helpers' mount namespaces; a remount's new size is).
    slots: Mutex<Vec<PathBuf>>,
    all_slots: Vec<PathBuf>,
    pods: Mutex<BTreeMap<(String, String), Pod>>,
    policies: Mutex<BTreeMap<(String, String), Value>>,
    seq: std::sync::atomic::AtomicU64,
    toolchains: (Vec<PathBuf>, Vec<String>),
    /// The sandbox servers the execs run on (the fake's own scope).
    servers: Arc<host::Servers>,
}

/// A running fake API server.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1:`port` (0: any free port) and serves in the background.
    pub async fn start(port: u16) -> std::io::Result<FakeApiServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        sweep_stale_roots();
        let root = tempfile::Builder::new()
            .prefix(&format!("{ROOT_PREFIX}{}-", llm_sandbox::owner::prefix()))
            .tempdir()?;
        set_mode(root.path(), 0o755)?;
        let all_slots = tmpfs_slots(root.path());
        let state = Arc::new(State {
            slots: Mutex::new(all_slots.clone()),
            all_slots,
            root,
            pods: Mutex::new(BTreeMap::new()),
            policies: Mutex::new(BTreeMap::new()),
            seq: std::sync::atomic::AtomicU64::new(1),
            toolchains: toolchains(),
            servers: Arc::new(host::Servers::new()),
        });
        let stop = CancellationToken::new();
        let (st, stop2) = (state.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = stop2.cancelled() => break,
                };
                let Ok((stream, _)) = conn else { continue };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(FakeApiServer {
            addr,
            state,
            stop,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context points at this server.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake-apiserver
  cluster:
    server: {}
contexts:
- name: fake-apiserver
  context:
    cluster: fake-apiserver
    user: fake-apiserver
    namespace: {namespace}
current-context: fake-apiserver
users:
- name: fake-apiserver
  user: {{}}
",
            self.url()
        )
    }

    /// Writes [`Self::kubeconfig`] to `path` (atomically: a reader never sees half a file).
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(p)?;
        }
        let tmp = path.with_extension("tmp-fake-apiserver");
        std::fs::write(&tmp, self.kubeconfig(namespace))?;
        std::fs::rename(&tmp, path)
    }

    /// The (namespace, name) of every pod it holds.
    pub fn pods(&self) -> Vec<(String, String)> {
        self.state
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The pod as stored (its spec as created, with status), if it exists.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        let pods = self.state.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.get(&(namespace.to_string(), name.to_string()))
            .map(pod_json)
    }

    /// Stops serving and deletes every pod (their execs stop, their files go).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        // Drop deletes the pods.
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
        let pods = std::mem::take(&mut *self.state.pods.lock().unwrap_or_else(|e| e.into_inner()));
        for p in pods.into_values() {
            remove_pod_files(&self.state, &p);
        }
        for s in &self.state.all_slots {
            let _ = nix::mount::umount2(s, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The state directories: `$TMPDIR/llm-sandbox-fake-apiserver-ls-<pid>-<start time>-…`.
const ROOT_PREFIX: &str = "llm-sandbox-fake-apiserver-";

/// Removes what servers that were killed (SIGKILL) left: their tmpfs slots and files.
fn sweep_stale_roots() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let host = llm_sandbox::owner::hostname();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.strip_prefix(ROOT_PREFIX) else {
            continue;
        };
        if llm_sandbox::owner::stale_owner_pid(owner, &host).is_none() {
            continue;
        }
        if let Ok(slots) = std::fs::read_dir(e.path()) {
            for s in slots.flatten() {
                if s.file_name().to_string_lossy().starts_with("slot-") {
                    let _ = nix::mount::umount2(&s.path(), nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// How many pods at once get a size-limited `/sandbox`.
const SLOTS: usize = 64;

/// Mounts the tmpfs slots (root only; none otherwise).
fn tmpfs_slots(root: &Path) -> Vec<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        return vec![];
    }
    let mut v = Vec::new();
    for i in 0..SLOTS {
        let d = root.join(format!("slot-{i}"));
        let ok = std::fs::create_dir_all(&d).is_ok()
            && nix::mount::mount(
                Some("tmpfs"),
                &d,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some("size=4k,mode=0755"),
            )
            .is_ok();
        if !ok {
            break;
        }
        v.push(d);
    }
    v
}

/// Empties a directory without following symlinks (the sandbox may have planted some).
fn empty_dir(d: &Path) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    let _ = std::fs::remove_dir_all(&p);
                }
                _ => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// The read-only binds and PATH entries of every toolchain the host has: each pod is a
/// "universal image".
fn toolchains() -> (Vec<PathBuf>, Vec<String>) {
    let mut binds: Vec<PathBuf> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    for lang in llm_sandbox::Lang::ALL {
        if let Ok(tc) = llm_sandbox::lang::probe_cached(lang) {
            for b in tc.binds {
                if !binds.contains(&b) {
                    binds.push(b);
                }
            }
            for p in tc.path {
                let p = p.display().to_string();
                if !path.contains(&p) {
                    path.push(p);
                }
            }
        }
    }
    for p in llm_sandbox::backend::native::BASE_PATH {
        if !path.iter().any(|x| x == p) {
            path.push(p.to_string());
        }
    }
    (binds, path)
}

fn remove_pod_files(st: &State, p: &Pod) {
    p.cancel.cancel();
    if let Some(slot) = &p.slot {
        empty_dir(slot);
        st.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
    }
    let _ = std::fs::remove_dir_all(&p.dir);
}

// ---- HTTP ------------------------------------------------------------------------------

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// A `Status` error object, as the API server sends.
fn status_error(code: StatusCode, reason: &str, message: impl Into<String>) -> Response<Body> {
    respond(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message.into(),
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

fn not_found(kind: &str, name: &str) -> Response<Body> {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{kind} \"{name}\" not found"),
    )
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) => out.push(b' '),
            (_, Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, None) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(kv), String::new()),
        })
        .collect()
}

/// One requirement of a label selector.
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

fn parse_selector(s: &str) -> Result<Vec<Req>, String> {
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((k, val)) = part.split_once("!=") {
            v.push(Req::Ne(k.trim().into(), val.trim().into()));
        } else if let Some((k, val)) = part.split_once("==").or_else(|| part.split_once('=')) {
            v.push(Req::Eq(k.trim().into(), val.trim().into()));
        } else if let Some(k) = part.strip_prefix('!') {
            v.push(Req::Absent(k.trim().into()));
        } else if part.contains(' ') || part.contains('(') {
            return Err(format!(
                "unsupported label selector {part:?} (this fake API server knows k=v, k==v, k!=v, k and !k)"
            ));
        } else {
            v.push(Req::Exists(part.into()));
        }
    }
    Ok(v)
}

fn matches(obj: &Value, sel: &[Req]) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    sel.iter().all(|r| match r {
        Req::Eq(k, v) => get(k) == Some(v.as_str()),
        Req::Ne(k, v) => get(k) != Some(v.as_str()),
        Req::Exists(k) => get(k).is_some(),
        Req::Absent(k) => get(k).is_none(),
    })
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = query_pairs(req.uri().query());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["version"]) => respond(
            StatusCode::OK,
            &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-llm-sandbox-fake",
                    "platform": "linux/amd64"}),
        ),
        (Method::GET, ["api"]) => respond(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": []}),
        ),
        (Method::GET, ["apis"]) => respond(
            StatusCode::OK,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
                "name": "networking.k8s.io",
                "versions": [{"groupVersion": "networking.k8s.io/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "networking.k8s.io/v1", "version": "v1"}}]}),
        ),
        (Method::GET, ["api", "v1"]) => respond(
            StatusCode::OK,
            &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                 "verbs": ["create", "delete", "deletecollection", "get", "list"],
                 "shortNames": ["po"]},
                {"name": "pods/exec", "singularName": "", "namespaced": true,
                 "kind": "PodExecOptions", "verbs": ["create", "get"]}]}),
        ),
        (Method::GET, ["apis", "networking.k8s.io", "v1"]) => respond(
            StatusCode::OK,
            &json!({"kind": "APIResourceList", "groupVersion": "networking.k8s.io/v1",
                    "resources": [{"name": "networkpolicies", "singularName": "networkpolicy",
                                   "namespaced": true, "kind": "NetworkPolicy",
                                   "verbs": ["create", "delete", "get"], "shortNames": ["netpol"]}]}),
        ),
        (Method::GET, ["api", "v1", "pods"]) => list_pods(&st, None, &query),
        (_, ["api", "v1", "namespaces", ns, "pods"]) => {
            let ns = ns.to_string();
            match method {
                Method::POST => create_pod(&st, &ns, req).await,
                Method::GET => list_pods(&st, Some(&ns), &query),
                Method::DELETE => delete_collection(&st, &ns, &query),
                _ => method_not_allowed(&method, &path),
            }
        }
        (_, ["api", "v1", "namespaces", ns, "pods", name]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            match method {
                Method::GET => get_pod(&st, &ns, &name),
                Method::DELETE => delete_pod(&st, &ns, &name),
                _ => method_not_allowed(&method, &path),
            }
        }
        (Method::GET | Method::POST, ["api", "v1", "namespaces", ns, "pods", name, "exec"]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            exec(st, &ns, &name, &query, req)
        }
        (_, ["apis", "networking.k8s.io", "v1", "namespaces", ns, "networkpolicies", rest @ ..]) => {
            let ns = ns.to_string();
            let name = rest.first().map(|s| s.to_string());
            policies(&st, &method, &ns, name, req).await
        }
        _ => status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "the server could not find the requested resource ({method} {path}): this fake API server serves pods, pods/exec and networkpolicies only"
            ),
        ),
    }
}

fn method_not_allowed(m: &Method, path: &str) -> Response<Body> {
    status_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{m} is not supported on {path} by this fake API server"),
    )
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric()
}

fn quantity_of(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn host_cpus() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

async fn create_pod(st: &Arc<State>, ns: &str, req: Request<Incoming>) -> Response<Body> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let mut obj: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the pod is not JSON: {e}"),
            )
        }
    };
    if obj["kind"] != "Pod" && !obj["kind"].is_null() {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("expected kind Pod, got {}", obj["kind"]),
        );
    }
    let containers = obj["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if containers.is_empty() {
        return status_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "Pod is invalid: spec.containers: Required value",
        );
    }
    for (i, c) in containers.iter().enumerate() {
        if c["image"].as_str().is_none_or(str::is_empty) {
            return status_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("Pod is invalid: spec.containers[{i}].image: Required value"),
            );
        }
    }
    let seq = st.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name =
        match (
            obj["metadata"]["name"].as_str(),
            obj["metadata"]["generateName"].as_str(),
        ) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) => format!("{g}{seq:05x}"),
            _ => return status_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "Pod is invalid: metadata.name: Required value: name or generateName is required",
            ),
        };
    if !valid_name(&name) {
        return status_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("Pod {name:?} is invalid: metadata.name: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"),
        );
    }
    let key = (ns.to_string(), name.clone());
    if st
        .pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&key)
    {
        return status_error(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("pods \"{name}\" already exists"),
        );
    }
    let meta = obj["metadata"].as_object_mut();
    let Some(meta) = meta else {
        return status_error(StatusCode::BAD_REQUEST, "BadRequest", "metadata is missing");
    };
    meta.insert("name".into(), json!(name));
    meta.insert("namespace".into(), json!(ns));
    meta.insert(
        "uid".into(),
        json!(format!("00000000-0000-4000-8000-{seq:012x}")),
    );
    meta.insert("resourceVersion".into(), json!(seq.to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));

    // Why it would not start.
    let image = containers[0]["image"].as_str().unwrap_or("").to_string();
    let cpu_req: f64 = containers
        .iter()
        .filter_map(|c| quantity_of(&c["resources"]["requests"]["cpu"]))
        .sum();
    let not_ready = if containers
        .iter()
        .any(|c| c["image"].as_str().unwrap_or("").contains("unpullable"))
    {
        Some(NotReady::ImagePull(format!(
            "rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found (the fake API server treats images named *unpullable* as missing)"
        )))
    } else if cpu_req > host_cpus() {
        Some(NotReady::Unschedulable(format!(
            "0/1 nodes are available: 1 Insufficient cpu (requested {cpu_req}, the node has {})",
            host_cpus()
        )))
    } else {
        None
    };

    let dir = st.root.path().join(format!("{ns}--{name}"));
    let sandbox = dir.join("sandbox");
    let made = std::fs::create_dir_all(&sandbox).and_then(|_| write_counters(&dir, 0, 0));
    if let Err(e) = made {
        return status_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("cannot create the pod's directory: {e}"),
        );
    }
    let _ = set_mode(&dir, 0o755);
    // /sandbox: a size-limited tmpfs like the pod's memory-backed emptyDir, when there is
    // a free slot.
    let mut slot = None;
    if let Some(size) = sandbox_size_limit(&obj) {
        let s = st.slots.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(s) = s {
            empty_dir(&s);
            let resized = nix::mount::mount(
                None::<&str>,
                &s,
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT
                    | nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV,
                Some(format!("size={},mode=0755", size.max(4096)).as_str()),
            );
            if resized.is_ok() {
                slot = Some(s);
            } else {
                st.slots.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            }
        }
    }
    let workdir = slot.clone().unwrap_or_else(|| sandbox.clone());
    if nix::unistd::geteuid().is_root() {
        let id = llm_sandbox::sandbox::helper::UNPRIVILEGED_HOST_ID;
        let _ = std::os::unix::fs::chown(&workdir, Some(id), Some(id));
    } else {
        let _ = set_mode(&workdir, 0o777);
    }
    let pod = Pod {
        obj,
        dir,
        slot,
        not_ready,
        created: std::time::Instant::now(),
        cancel: CancellationToken::new(),
    };
    let out = pod_json(&pod);
    st.pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, pod);
    respond(StatusCode::CREATED, &out)
}

/// The pod's cgroup counters as cgroup v2 shows them in a container's
/// `/sys/fs/cgroup` (`memory.events`, `pids.events`; `memory.peak` is kept by each exec's
/// end): the fake counts the OOM kills and pids-limit hits of the pod's execs there.
fn write_counters(dir: &Path, oom_kills: u64, pids_max: u64) -> std::io::Result<()> {
    let cg = dir.join("cgroup");
    std::fs::create_dir_all(&cg)?;
    set_mode(&cg, 0o755)?;
    std::fs::write(
        cg.join("memory.events"),
        format!("low 0\nhigh 0\nmax {oom_kills}\noom {oom_kills}\noom_kill {oom_kills}\n"),
    )?;
    std::fs::write(cg.join("pids.events"), format!("max {pids_max}\n"))
}

fn read_counter(file: &Path, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The `sizeLimit` of the emptyDir volume mounted at `/sandbox`, in bytes.
fn sandbox_size_limit(obj: &Value) -> Option<u64> {
    let c = &obj["spec"]["containers"][0];
    let mount = c["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["mountPath"] == "/sandbox")?;
    let vol = obj["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])?;
    quantity_of(&vol["emptyDir"]["sizeLimit"]).map(|b| b as u64)
}

/// The pod with its current status.
fn pod_json(p: &Pod) -> Value {
    let mut obj = p.obj.clone();
    let started = obj["metadata"]["creationTimestamp"].clone();
    let containers = obj["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let waited = p.created.elapsed() > std::time::Duration::from_secs(2);
    let status = match &p.not_ready {
        None => {
            let cs: Vec<Value> = containers
                .iter()
                .map(|c| {
                    json!({"name": c["name"], "image": c["image"], "imageID": "",
                           "containerID": "fake://" , "ready": true, "started": true,
                           "restartCount": 0, "state": {"running": {"startedAt": started}}})
                })
                .collect();
            json!({
                "phase": "Running",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": started,
                "qosClass": "Burstable",
                "containerStatuses": cs,
            })
        }
        Some(NotReady::ImagePull(msg)) => {
            let reason = if waited {
                "ImagePullBackOff"
            } else {
                "ErrImagePull"
            };
            let cs: Vec<Value> = containers
                .iter()
                .map(|c| {
                    json!({"name": c["name"], "image": c["image"], "imageID": "",
                           "ready": false, "started": false, "restartCount": 0,
                           "state": {"waiting": {"reason": reason, "message": msg}}})
                })
                .collect();
            json!({
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                ],
                "hostIP": "127.0.0.1",
                "startTime": started,
                "containerStatuses": cs,
            })
        }
        Some(NotReady::Unschedulable(msg)) => json!({
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": msg},
            ],
        }),
    };
    obj["status"] = status;
    obj["kind"] = json!("Pod");
    obj["apiVersion"] = json!("v1");
    obj
}

fn get_pod(st: &Arc<State>, ns: &str, name: &str) -> Response<Body> {
    let pods = st.pods.lock().unwrap_or_else(|e| e.into_inner());
    match pods.get(&(ns.to_string(), name.to_string())) {
        Some(p) => respond(StatusCode::OK, &pod_json(p)),
        None => not_found("pods", name),
    }
}

fn selector_of(query: &[(String, String)]) -> Result<Vec<Req>, Box<Response<Body>>> {
    if query
        .iter()
        .any(|(k, v)| k == "watch" && v != "false" && v != "0")
    {
        return Err(Box::new(status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "watch is not supported by this fake API server: poll instead",
        )));
    }
    if let Some((_, f)) = query
        .iter()
        .find(|(k, v)| k == "fieldSelector" && !v.is_empty())
    {
        return Err(Box::new(status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("fieldSelector {f:?} is not supported by this fake API server"),
        )));
    }
    let raw = query
        .iter()
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    parse_selector(raw)
        .map_err(|e| Box::new(status_error(StatusCode::BAD_REQUEST, "BadRequest", e)))
}

fn list_pods(st: &Arc<State>, ns: Option<&str>, query: &[(String, String)]) -> Response<Body> {
    let sel = match selector_of(query) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let pods = st.pods.lock().unwrap_or_else(|e| e.into_inner());
    let items: Vec<Value> = pods
        .iter()
        .filter(|((pns, _), _)| ns.is_none_or(|n| n == pns))
        .map(|(_, p)| pod_json(p))
        .filter(|o| matches(o, &sel))
        .collect();
    respond(
        StatusCode::OK,
        &json!({"kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": st.seq.load(std::sync::atomic::Ordering::Relaxed).to_string()},
                "items": items}),
    )
}

fn delete_pod(st: &Arc<State>, ns: &str, name: &str) -> Response<Body> {
    let p = st
        .pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(ns.to_string(), name.to_string()));
    match p {
        Some(p) => {
            let out = pod_json(&p);
            remove_pod_files(st, &p);
            respond(StatusCode::OK, &out)
        }
        None => not_found("pods", name),
    }
}

fn delete_collection(st: &Arc<State>, ns: &str, query: &[(String, String)]) -> Response<Body> {
    let sel = match selector_of(query) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut pods = st.pods.lock().unwrap_or_else(|e| e.into_inner());
    let keys: Vec<_> = pods
        .iter()
        .filter(|((pns, _), p)| pns == ns && matches(&p.obj, &sel))
        .map(|(k, _)| k.clone())
        .collect();
    let mut items = Vec::new();
    for k in keys {
        if let Some(p) = pods.remove(&k) {
            items.push(pod_json(&p));
            remove_pod_files(st, &p);
        }
    }
    respond(
        StatusCode::OK,
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
    )
}

async fn policies(
    st: &Arc<State>,
    method: &Method,
    ns: &str,
    name: Option<String>,
    req: Request<Incoming>,
) -> Response<Body> {
    match (method, name) {
        (&Method::POST, None) => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let Ok(mut obj) = body
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
            else {
                return status_error(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
            };
            let Some(name) = obj["metadata"]["name"].as_str().map(String::from) else {
                return status_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value",
                );
            };
            obj["metadata"]["namespace"] = json!(ns);
            obj["metadata"]["creationTimestamp"] = json!(now());
            obj["kind"] = json!("NetworkPolicy");
            obj["apiVersion"] = json!("networking.k8s.io/v1");
            let mut all = st.policies.lock().unwrap_or_else(|e| e.into_inner());
            let key = (ns.to_string(), name.clone());
            if all.contains_key(&key) {
                return status_error(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("networkpolicies.networking.k8s.io \"{name}\" already exists"),
                );
            }
            all.insert(key, obj.clone());
            respond(StatusCode::CREATED, &obj)
        }
        (&Method::GET, Some(name)) => {
            let all = st.policies.lock().unwrap_or_else(|e| e.into_inner());
            match all.get(&(ns.to_string(), name.clone())) {
                Some(o) => respond(StatusCode::OK, o),
                None => not_found("networkpolicies.networking.k8s.io", &name),
            }
        }
        (&Method::DELETE, Some(name)) => {
            let mut all = st.policies.lock().unwrap_or_else(|e| e.into_inner());
            match all.remove(&(ns.to_string(), name.clone())) {
                Some(o) => respond(StatusCode::OK, &o),
                None => not_found("networkpolicies.networking.k8s.io", &name),
            }
        }
        (m, _) => method_not_allowed(m, "networkpolicies"),
    }
}

// ---- exec ------------------------------------------------------------------------------

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

fn flag(query: &[(String, String)], key: &str) -> bool {
    query
        .iter()
        .any(|(k, v)| k == key && matches!(v.as_str(), "true" | "1" | "True"))
}

fn exec(
    st: Arc<State>,
    ns: &str,
    name: &str,
    query: &[(String, String)],
    mut req: Request<Incoming>,
) -> Response<Body> {
    let command: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
        );
    }
    if flag(query, "tty") {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "tty is not supported by this fake API server",
        );
    }
    let (cfg_base, cancel) = {
        let pods = st.pods.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = pods.get(&(ns.to_string(), name.to_string())) else {
            return not_found("pods", name);
        };
        if let Some(c) = query.iter().find(|(k, _)| k == "container").map(|(_, v)| v) {
            let known = p.obj["spec"]["containers"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|x| x["name"] == c.as_str()));
            if !known {
                return status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("container {c} is not valid for pod {name}"),
                );
            }
        }
        if p.not_ready.is_some() {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("pod {name} is not running: its container has not started"),
            );
        }
        (
            exec_config(&st, p, name, command.clone()),
            p.cancel.child_token(),
        )
    };
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "exec needs a WebSocket upgrade (this fake API server speaks v5.channel.k8s.io and v4.channel.k8s.io, not SPDY)",
        );
    };
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(',').map(|s| s.trim().to_string()))
        .collect();
    let proto = if offered.iter().any(|p| p == V5) {
        V5
    } else if offered.iter().any(|p| p == V4) {
        V4
    } else {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("no supported WebSocket subprotocol in {offered:?} (want {V5} or {V4})"),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let (want_in, want_out, want_err) = (
        flag(query, "stdin"),
        flag(query, "stdout"),
        flag(query, "stderr"),
    );
    let servers = st.servers.clone();
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(up),
            Role::Server,
            None,
        )
        .await;
        run_exec(
            ws,
            &servers,
            cfg_base,
            command,
            proto == V5,
            (want_in, want_out, want_err),
            cancel,
        )
        .await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(header::SEC_WEBSOCKET_PROTOCOL, proto)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// The native sandbox of one exec in pod `p`.
fn exec_config(st: &State, p: &Pod, name: &str, argv: Vec<String>) -> SandboxConfig {
    let c = &p.obj["spec"]["containers"][0];
    let (binds, path) = &st.toolchains;
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), path.join(":")),
        ("HOSTNAME".into(), name.to_string()),
        ("HOME".into(), "/".into()),
    ];
    for e in c["env"].as_array().into_iter().flatten() {
        if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
            env.retain(|(x, _)| x != k);
            env.push((k.to_string(), v.to_string()));
        }
    }
    let limits = &c["resources"]["limits"];
    let ann = &p.obj["metadata"]["annotations"];
    let ann_num = |k: &str| ann[k].as_str().and_then(|s| s.parse::<u64>().ok());
    let id = llm_sandbox::backend::native::sandbox_id();
    let dir = p.dir.join("execs").join(&id);
    let network = p.obj["metadata"]["labels"][LABEL_NETWORK] != "off";
    SandboxConfig {
        id,
        root_mount: dir.join("root"),
        inputs_dir: None,
        out_dir: dir.join("out"),
        persistent_workdir: Some(p.slot.clone().unwrap_or_else(|| p.dir.join("sandbox"))),
        binds: binds
            .iter()
            .map(|b| Bind {
                src: b.clone(),
                dest: b.clone(),
                writable: false,
            })
            .chain(std::iter::once(Bind {
                src: p.dir.join("cgroup"),
                dest: PathBuf::from("/sys/fs/cgroup"),
                writable: false,
            }))
            .collect(),
        rootfs: None,
        path: path.clone(),
        env,
        steps: vec![Step {
            kind: StepKind::Run,
            argv,
            // The client decides when to stop (it closes the WebSocket); this is a backstop.
            timeout_ms: 6 * 3600 * 1000,
            capture_cap: u64::MAX,
            as_root: false,
            limited: true,
            // As a real exec: only the limits the command sets itself (`ulimit -t`).
            cpu_seconds: None,
        }],
        limits: SandboxLimits {
            memory: quantity_of(&limits["memory"])
                .map(|b| b as u64)
                .unwrap_or(4 << 30),
            cpus: quantity_of(&limits["cpu"]).unwrap_or(host_cpus()),
            pids: ann_num(ANNOTATION_PIDS).unwrap_or(1024),
            disk: sandbox_size_limit(&p.obj).unwrap_or(1 << 30),
            open_files: ann_num(ANNOTATION_OPEN_FILES).unwrap_or(1024),
            address_space_fallback: false,
        },
        network,
        user_net: llm_sandbox::sandbox::usernet::for_sandbox(network),
        collect_globs: vec![],
        collect_paths: vec![],
        collect_cap: 0,
        preload: false,
        preload_modules: vec![],
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// The final `Status` of an exec, as the API server sends it on channel 3.
fn exit_status(code: i64, argv: &[String]) -> Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure",
               "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
               "reason": "NonZeroExitCode",
               "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    }
}

fn failure_status(message: String) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
           "code": 500})
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::binary(v)
}

async fn run_exec<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    servers: &host::Servers,
    cfg: SandboxConfig,
    argv: Vec<String>,
    v5: bool,
    (want_in, want_out, want_err): (bool, bool, bool),
    cancel: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    let fail = |m: String| frame(3, failure_status(m).to_string().as_bytes());
    let dirs = std::fs::create_dir_all(&cfg.root_mount)
        .and_then(|_| std::fs::create_dir_all(&cfg.out_dir));
    let exec_dir = cfg
        .root_mount
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let pipes = (|| -> std::io::Result<_> {
        dirs?;
        Ok((pipe()?, pipe()?, pipe()?))
    })();
    let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => {
            let _ = tx.send(fail(format!("cannot prepare the exec: {e}"))).await;
            let _ = tx.close().await;
            return;
        }
    };
    let in_w = want_in.then_some(in_w);
    // Frames to the client, from the output readers and the end of the exec.
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if tx.send(m).await.is_err() {
                return;
            }
        }
        let bye = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        };
        let _ = tx.send(Message::Close(Some(bye))).await;
        let _ = tx.close().await;
    });
    let reader = |fd: OwnedFd, channel: u8, wanted: bool| {
        let out_tx = out_tx.clone();
        tokio::spawn(async move {
            let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
                return;
            };
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if wanted => {
                        if out_tx.send(frame(channel, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                }
            }
        })
    };
    let out_task = reader(out_r, 1, want_out);
    let err_task = reader(err_r, 2, want_err);
    // Stdin from the client: channel 0; v5 closes it with [255, 0]; a closed WebSocket
    // stops the program.
    let gone = CancellationToken::new();
    let gone2 = gone.clone();
    let stdin_task = tokio::spawn(async move {
        let mut w = in_w.and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok());
        while let Some(m) = rx.next().await {
            match m {
                Ok(Message::Binary(b)) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some(pw) = w.as_mut() {
                            if pw.write_all(&b[1..]).await.is_err() {
                                w = None;
                            }
                        }
                    }
                    255 if v5 && b.get(1) == Some(&0) => w = None,
                    _ => {}
                },
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        drop(w);
        gone2.cancel();
    });
    let stdin_fd: OwnedFd = if want_in {
        in_r
    } else {
        drop(in_r);
        match std::fs::File::open("/dev/null") {
            Ok(f) => f.into(),
            Err(_) => return,
        }
    };
    let run_cancel = cancel.clone();
    let io = Io::Fds {
        stdin: stdin_fd,
        stdout: out_w,
        stderr: err_w,
    };
    let run = async { host::run_with(servers, &cfg, io, &run_cancel).await };
    tokio::pin!(run);
    let outcome = tokio::select! {
        o = &mut run => o,
        _ = gone.cancelled() => {
            // The client went away: stop the program.
            run_cancel.cancel();
            run.await
        }
    };
    let _ = out_task.await;
    let _ = err_task.await;
    if let Ok(o) = &outcome {
        let ev = o.msgs.iter().find_map(|m| match m {
            Msg::Limits(l) => Some(l.clone()),
            _ => None,
        });
        if let (Some(ev), Some(pod_dir)) = (ev, exec_dir.parent().and_then(Path::parent)) {
            // The pod's memory peak: the largest of its execs' (their peak resident memory,
            // as the sandbox measured it), as a container cgroup's `memory.peak` grows.
            let exec_peak = o
                .msgs
                .iter()
                .find_map(|m| match m {
                    Msg::Step(s) => s.usage.map(|u| u.peak_memory_bytes),
                    _ => None,
                })
                .unwrap_or(0);
            let cg = pod_dir.join("cgroup");
            let peak = read_counter(&cg.join("memory.peak"), "");
            if exec_peak > peak {
                let _ = std::fs::write(cg.join("memory.peak"), format!("{exec_peak}\n"));
            }
            if ev.oom_killed || ev.pids_limit_hit {
                let oom = read_counter(&cg.join("memory.events"), "oom_kill ");
                let pids = read_counter(&cg.join("pids.events"), "max ");
                let _ = write_counters(
                    pod_dir,
                    oom + u64::from(ev.oom_killed),
                    pids + u64::from(ev.pids_limit_hit),
                );
            }
        }
    }
    let status = match outcome {
        Ok(o) if o.cancelled => {
            // No status, as a real API server whose exec was torn down: say why (what a
            // test that sees "ended without an exit status" needs to know).
            eprintln!(
                "fake-apiserver: the exec {argv:?} was stopped before it ended: {}",
                if gone.is_cancelled() {
                    "the client's WebSocket stream ended"
                } else {
                    "its pod was deleted"
                }
            );
            None
        }
        Ok(o) => {
            let step = o.msgs.iter().find_map(|m| match m {
                Msg::Step(s) => Some(s.clone()),
                _ => None,
            });
            Some(match step {
                Some(s) if s.spawn_error.is_some() && s.exit_code.is_none() => failure_status(format!(
                    "OCI runtime exec failed: exec failed: unable to start container process: {}: unknown",
                    s.spawn_error.unwrap_or_default()
                )),
                Some(s) => {
                    let code = match (s.exit_code, s.signal) {
                        (Some(c), _) => i64::from(c),
                        (None, Some(sig)) => 128 + i64::from(sig),
                        _ => 137,
                    };
                    exit_status(code, &argv)
                }
                None => {
                    let why = o
                        .msgs
                        .iter()
                        .find_map(|m| match m {
                            Msg::Error { message, .. } => Some(message.clone()),
                            _ => None,
                        })
                        .unwrap_or_else(|| "the sandbox ended without a result".into());
                    failure_status(why)
                }
            })
        }
        Err(e) => Some(failure_status(format!("cannot start the sandbox: {e}"))),
    };
    if let Some(s) = status {
        let _ = out_tx.send(frame(3, s.to_string().as_bytes())).await;
    }
    drop(out_tx);
    let _ = writer.await;
    // The close handshake: the status and our Close frame are out; the connection stays
    // open until the client answers with its own Close (a client may still be sending the
    // end of its stdin: cut off, it can fail on that send before it reads the status, as
    // kube-rs's exec loop does). Bounded, for a client that never answers.
    let mut stdin_task = stdin_task;
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut stdin_task)
        .await
        .is_err()
    {
        stdin_task.abort();
    }
    let _ = std::fs::remove_dir_all(&exec_dir);
}
