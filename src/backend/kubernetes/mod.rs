//! The Kubernetes backend (kube): a hardened pod per job (pod.rs), scheduled by the
//! cluster — a warm one from the container backends' pool (docker/pool.rs), proven clean
//! after each job, or a fresh one. The program and input files go in as a tar stream over
//! exec, each step is an
//! exec over WebSocket (stdin, separate stdout and stderr, the exit code from the final
//! `Status`), the files to check and the artifacts come out as a tar stream, unpacked on
//! the host without following symlinks. The job flow and the mapping of results onto
//! reports are the Docker backend's, so a job gets the same statuses and messages.
//!
//! The cluster: `backends.kubernetes` (`kubeconfig`, `context`, `namespace`), else
//! `$KUBECONFIG` / `~/.kube/config`, else the in-cluster configuration; or a caller's
//! `kube::Client` (library sessions). Pods carry owner labels: every pod of a run is
//! deleted at its end (Ctrl-C too), and pods of runners that are gone (SIGKILL) are deleted
//! by the next run on the same host; `activeDeadlineSeconds` stops them meanwhile.

pub mod pod;

use super::container_job::{ExecResult, Live};
use super::step_shell::StepShell;
use super::{error_report, RunCtx};
use crate::backend::Error;
use crate::lang;
use crate::plan::PlannedJob;
use crate::report::model::{JobReport, Phase};
use crate::sandbox::StepKind;
use crate::spec::types::KubernetesConfig;
use crate::stream::StdStream;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, DeleteParams, ListParams, PostParams};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// How long a pod may take to become ready unless `start_timeout` says otherwise.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one API request (not an exec) may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// The NetworkPolicy that cuts the network of pods labelled `llm-sandbox.network=off`.
pub const NETWORK_POLICY: &str = "llm-sandbox-no-network";

/// A cluster and the namespace sandbox pods go to.
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
    /// What identifies it (kubeconfig, context) among the clusters of its scope.
    pub key: String,
    /// The id of the [`crate::backend::Scope`] that connected it (a label of its pods).
    pub scope: String,
    /// Namespaces whose deny-all NetworkPolicy exists (or could not be made).
    policies: Mutex<Vec<String>>,
}

fn pods_api(c: &Cluster, ns: &str) -> Api<Pod> {
    Api::namespaced(c.client.clone(), ns)
}

/// The owner labels of the pods of this runner's scope `c.scope`.
pub fn owner_labels(c: &Cluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (pod::LABEL_OWNER.to_string(), crate::owner::prefix()),
        (pod::LABEL_SCOPE.to_string(), c.scope.clone()),
        (
            pod::LABEL_HOST.to_string(),
            pod::label_value(&crate::owner::hostname()),
        ),
    ])
}

async fn with_timeout<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(API_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Engine(format!("{what}: {}", describe_error(&e)))),
        Err(_) => Err(Error::Engine(format!(
            "{what}: the API server did not answer within {}s",
            API_TIMEOUT.as_secs()
        ))),
    }
}

/// A kube error with its causes.
pub fn describe_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(r) => format!("{} ({}, HTTP {})", r.message, r.reason, r.code),
        other => crate::backend::error::error_chain(other),
    }
}

/// The cluster of `cfg` (paths relative to `base`): connected once per scope.
pub async fn connect(
    scope: &crate::backend::Scope,
    cfg: Option<&KubernetesConfig>,
    base: &Path,
) -> Result<Arc<Cluster>, Error> {
    let kubeconfig = cfg
        .and_then(|c| c.kubeconfig.as_deref())
        .map(|p| base.join(p));
    let context = cfg.and_then(|c| c.context.clone());
    let key = format!(
        "{:?}|{:?}|{:?}|{:?}",
        kubeconfig,
        context,
        std::env::var_os("KUBECONFIG"),
        cfg.and_then(|c| c.namespace.as_deref())
    );
    let mut clusters = scope.clusters.lock().await;
    if let Some(c) = clusters.iter().find(|c| c.key == key) {
        return Ok(c.clone());
    }
    let config = config_of(kubeconfig.as_deref(), context.clone()).await?;
    let cluster = Arc::new(cluster_of(
        config,
        cfg.and_then(|c| c.namespace.clone()),
        key,
        scope.id.clone(),
    )?);
    sweep_stale(&cluster).await;
    clusters.push(cluster.clone());
    Ok(cluster)
}

/// The client configuration: `kubeconfig` (a file), else `context` of $KUBECONFIG or
/// ~/.kube/config, else whatever kube infers (those files, then in-cluster).
async fn config_of(
    kubeconfig: Option<&Path>,
    context: Option<String>,
) -> Result<kube::Config, Error> {
    let opts = kube::config::KubeConfigOptions {
        context: context.clone(),
        cluster: None,
        user: None,
    };
    Ok(if let Some(path) = kubeconfig {
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
            Error::Unavailable(format!(
                "backends.kubernetes.kubeconfig: cannot read {}: {e}",
                path.display()
            ))
        })?;
        kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "backends.kubernetes.kubeconfig {}: {}",
                    path.display(),
                    crate::backend::error::error_chain(&e)
                ))
            })?
    } else if context.is_some() {
        kube::Config::from_kubeconfig(&opts).await.map_err(|e| {
            Error::Unavailable(format!(
                "backends.kubernetes.context {:?}: {} (the kubeconfig is $KUBECONFIG or ~/.kube/config)",
                context.as_deref().unwrap_or(""),
                crate::backend::error::error_chain(&e)
            ))
        })?
    } else {
        kube::Config::infer().await.map_err(|e| {
            Error::Unavailable(format!(
                "no Kubernetes cluster configured: set `backends.kubernetes.kubeconfig`, $KUBECONFIG or ~/.kube/config, or run inside a cluster ({})",
                crate::backend::error::error_chain(&e)
            ))
        })?
    })
}

/// `doctor`: the cluster of $KUBECONFIG / ~/.kube/config / in-cluster and its version,
/// touching nothing. `Ok(None)`: no cluster is configured.
pub async fn probe() -> Result<Option<String>, Error> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let configured = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
        || home.is_some_and(|h| h.join(".kube/config").is_file())
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if !configured {
        return Ok(None);
    }
    let config = config_of(None, None).await?;
    let url = config.cluster_url.to_string();
    let c = cluster_of(config, None, String::new(), String::new())?;
    let v = with_timeout("the API server", c.client.apiserver_version()).await?;
    Ok(Some(format!(
        "{url} (Kubernetes {}, namespace {})",
        v.git_version, c.namespace
    )))
}

fn cluster_of(
    mut config: kube::Config,
    namespace: Option<String>,
    key: String,
    scope: String,
) -> Result<Cluster, Error> {
    config.connect_timeout = Some(Duration::from_secs(10));
    // Execs stream as long as their program runs: requests get their own timeouts.
    config.read_timeout = None;
    config.write_timeout = Some(API_TIMEOUT);
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| {
        Error::Unavailable(format!(
            "cannot make a Kubernetes client: {}",
            describe_error(&e)
        ))
    })?;
    Ok(Cluster {
        client,
        namespace,
        key,
        scope,
        policies: Mutex::new(Vec::new()),
    })
}

/// A cluster from a caller's client (library sessions); `namespace` defaults to the
/// client's own default namespace.
pub fn from_client(
    client: kube::Client,
    namespace: Option<String>,
    scope: &crate::backend::Scope,
) -> Arc<Cluster> {
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    Arc::new(Cluster {
        client,
        key: format!("client|{namespace}"),
        scope: scope.id.clone(),
        namespace,
        policies: Mutex::new(Vec::new()),
    })
}

/// Deletes the pods that runners which are gone left on this host (by label only).
async fn sweep_stale(c: &Cluster) {
    let host = crate::owner::hostname();
    let sel = format!(
        "{}=1,{}={}",
        pod::LABEL,
        pod::LABEL_HOST,
        pod::label_value(&host)
    );
    let api: Api<Pod> = Api::all(c.client.clone());
    let Ok(list) = with_timeout(
        "listing pods",
        api.list(&ListParams::default().labels(&sel)),
    )
    .await
    else {
        return;
    };
    for p in list.items {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let Some(owner) = labels.get(pod::LABEL_OWNER) else {
            continue;
        };
        if crate::owner::stale_owner_pid(owner, &host).is_none() {
            continue;
        }
        if let (Some(name), Some(ns)) = (&p.metadata.name, &p.metadata.namespace) {
            tracing::info!("deleting pod {ns}/{name} left by a run that is gone");
            delete_pod(c, ns, name).await;
        }
    }
}

/// Deletes a pod now (no grace period); errors are ignored (it may be gone already).
pub async fn delete_pod(c: &Cluster, ns: &str, name: &str) {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let _ = with_timeout("deleting a pod", pods_api(c, ns).delete(name, &dp)).await;
}

/// The end of a scope (a run): deletes every pod of it on every cluster it used, and again
/// those that runners which are gone left (the cluster may have created a pod a killed
/// runner asked for after this run's sweep at its start).
pub async fn finish(scope: &crate::backend::Scope) {
    let pools: Vec<Arc<PodPool>> = scope
        .pod_pools
        .lock()
        .map(|mut all| all.drain(..).map(|(_, p)| p).collect())
        .unwrap_or_default();
    for p in pools {
        p.drain().await;
    }
    let clusters: Vec<Arc<Cluster>> = scope.clusters.lock().await.clone();
    for c in clusters {
        delete_owned(&c).await;
        sweep_stale(&c).await;
    }
}

/// Deletes every pod of the cluster's scope (all namespaces it can list, else its
/// namespace).
pub async fn delete_owned(c: &Cluster) {
    let sel = format!("{}={}", pod::LABEL_SCOPE, c.scope);
    let lp = ListParams::default().labels(&sel);
    let all: Api<Pod> = Api::all(c.client.clone());
    let list = match with_timeout("listing pods", all.list(&lp)).await {
        Ok(l) => l,
        Err(_) => match with_timeout("listing pods", pods_api(c, &c.namespace).list(&lp)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("cannot list this run's pods to delete them: {e}");
                return;
            }
        },
    };
    for p in list.items {
        if let (Some(name), Some(ns)) = (&p.metadata.name, &p.metadata.namespace) {
            delete_pod(c, ns, name).await;
        }
    }
}

/// Makes sure the namespace has the NetworkPolicy denying all traffic to and from pods
/// labelled `llm-sandbox.network=off` (once per namespace per process). Clusters whose
/// network plugin does not enforce policies ignore it; when it cannot be created (RBAC)
/// a warning says so.
async fn ensure_network_policy(c: &Cluster, ns: &str) {
    {
        let mut done = c.policies.lock().unwrap_or_else(|e| e.into_inner());
        if done.iter().any(|n| n == ns) {
            return;
        }
        done.push(ns.to_string());
    }
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let np: NetworkPolicy = match serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NETWORK_POLICY, "labels": {pod::LABEL: "1"}},
        "spec": {
            "podSelector": {"matchLabels": {pod::LABEL_NETWORK: "off"}},
            "policyTypes": ["Ingress", "Egress"],
        }
    })) {
        Ok(n) => n,
        Err(_) => return,
    };
    let api: Api<NetworkPolicy> = Api::namespaced(c.client.clone(), ns);
    match tokio::time::timeout(API_TIMEOUT, api.create(&PostParams::default(), &np)).await {
        Ok(Ok(_)) => {}
        Ok(Err(kube::Error::Api(r))) if r.code == 409 => {}
        Ok(Err(e)) => tracing::warn!(
            "cannot create the NetworkPolicy {NETWORK_POLICY} in namespace {ns} ({}): jobs without network may reach the network",
            describe_error(&e)
        ),
        Err(_) => tracing::warn!("creating the NetworkPolicy {NETWORK_POLICY} timed out"),
    }
}

/// The job's Pod manifest: the job's `pod_manifest`, else `backends.kubernetes.pod_manifest`
/// (inline, or a YAML/JSON file relative to the job file).
pub fn manifest_of(job: &PlannedJob) -> Result<Option<Value>, Error> {
    if let Some(m) = &job.pod_manifest {
        return Ok(Some(m.clone()));
    }
    use crate::spec::types::PodManifest;
    match job
        .backends
        .kubernetes
        .as_ref()
        .and_then(|k| k.pod_manifest.as_ref())
    {
        None => Ok(None),
        Some(PodManifest::Inline(m)) => Ok(Some(Value::Object(m.clone()))),
        Some(PodManifest::Path(p)) => {
            let path = job.file.parent().unwrap_or(Path::new(".")).join(p);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Prepare {
                log: None,
                message: format!(
                    "backends.kubernetes.pod_manifest: cannot read {}: {e}",
                    path.display()
                ),
            })?;
            serde_saphyr::from_str_with_options::<Value>(&text, crate::spec::load::yaml_options())
                .map(Some)
                .map_err(|e| Error::Prepare {
                    log: None,
                    message: format!(
                        "backends.kubernetes.pod_manifest: {} does not parse: {e}",
                        path.display()
                    ),
                })
        }
    }
}

/// The image of a job's pod: the job's `image`, else the manifest's container image,
/// else the language's default.
pub fn image_of(job: &PlannedJob, manifest: Option<&Value>) -> String {
    job.image
        .clone()
        .or_else(|| {
            manifest
                .and_then(|m| m["spec"]["containers"][0]["image"].as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| lang::spec(job.lang).default_image.to_string())
}

/// What a running sandbox pod is.
pub struct SandboxPod {
    pub cluster: Arc<Cluster>,
    pub namespace: String,
    pub name: String,
    /// An exec could not be stopped: nothing more runs in it.
    pub dead: bool,
    /// What it keeps between jobs (warm pods).
    pub reuse: crate::backend::container_job::Reuse,
    born: Instant,
}

impl SandboxPod {
    fn api(&self) -> Api<Pod> {
        pods_api(&self.cluster, &self.namespace)
    }

    /// Creates the pod and waits (at most `start_timeout`) until it is ready. A pod that
    /// does not get there is deleted and the error says why (image pull, scheduling).
    pub async fn start(
        cluster: Arc<Cluster>,
        namespace: &str,
        manifest: Value,
        start_timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<SandboxPod, Error> {
        let pod: Pod = serde_json::from_value(manifest).map_err(|e| Error::Prepare {
            message: format!("pod_manifest does not make a valid Pod: {e}"),
            log: None,
        })?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let network_on = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(pod::LABEL_NETWORK))
            .is_some_and(|v| v == "on");
        if !network_on {
            ensure_network_policy(&cluster, namespace).await;
        }
        let me = SandboxPod {
            cluster,
            namespace: namespace.to_string(),
            name,
            dead: false,
            reuse: Default::default(),
            born: Instant::now(),
        };
        with_timeout(
            &format!("cannot create the sandbox pod in namespace {namespace}"),
            me.api().create(&PostParams::default(), &pod),
        )
        .await?;
        match me.wait_ready(start_timeout, cancel).await {
            Ok(()) => Ok(me),
            Err(e) => {
                me.delete().await;
                Err(e)
            }
        }
    }

    async fn wait_ready(&self, bound: Duration, cancel: &CancellationToken) -> Result<(), Error> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut last: String;
        loop {
            match tokio::time::timeout(API_TIMEOUT, self.api().get(&self.name)).await {
                Ok(Ok(p)) => match readiness(&p) {
                    Ready::Yes => return Ok(()),
                    Ready::Never(why) => {
                        return Err(Error::Prepare {
                            message: format!(
                                "the sandbox pod {}/{} cannot start: {why}",
                                self.namespace, self.name
                            ),
                            log: None,
                        })
                    }
                    Ready::NotYet(why) => last = why,
                },
                Ok(Err(kube::Error::Api(r))) if r.code == 404 => {
                    return Err(Error::Sandbox(format!(
                        "the sandbox pod {}/{} was deleted before it started",
                        self.namespace, self.name
                    )))
                }
                Ok(Err(e)) => last = describe_error(&e),
                Err(_) => last = "the API server does not answer".into(),
            }
            if started.elapsed() >= bound {
                return Err(Error::Prepare {
                    message: format!(
                    "the sandbox pod {}/{} did not become ready within {} ({last}); raise `backends.kubernetes.start_timeout` if the cluster is just slow",
                    self.namespace,
                    self.name,
                    crate::spec::units::format_duration(bound)
                ),
                    log: None,
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return Err(Error::Interrupted),
            }
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Deletes the pod (no grace period).
    pub async fn delete(&self) {
        delete_pod(&self.cluster, &self.namespace, &self.name).await;
    }

    /// Runs `argv` in the sandbox container: stdin from `stdin` (else none), stdout and
    /// stderr captured up to `cap` each. On timeout, output limit or cancel the exec is
    /// abandoned and every process of the sandbox user killed (the pod is `dead` when
    /// that fails). `Err` when the exec cannot run at all.
    pub async fn exec(
        &mut self,
        argv: &[String],
        stdin: Option<&[u8]>,
        cap: u64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<ExecResult, Error> {
        let live = Live::default();
        self.exec_live(argv, stdin, cap, timeout, cancel, live)
            .await
    }

    /// Like [`SandboxPod::exec`], the output (and maybe stdin) streaming as `live` says.
    pub async fn exec_live(
        &mut self,
        argv: &[String],
        stdin: Option<&[u8]>,
        cap: u64,
        timeout: Duration,
        cancel: &CancellationToken,
        live: Live,
    ) -> Result<ExecResult, Error> {
        let r = self
            .exec_inner(argv, stdin, cap, timeout, cancel, live)
            .await?;
        if (r.timed_out || r.output_limit_hit) && !r.cancelled {
            self.kill_processes(cancel).await;
        }
        Ok(r)
    }

    async fn exec_inner(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        cap: u64,
        timeout: Duration,
        cancel: &CancellationToken,
        live: Live,
    ) -> Result<ExecResult, Error> {
        let started = Instant::now();
        let mut r = ExecResult::default();
        let Live {
            tx,
            discard,
            stdin: stdin_live,
        } = live;
        let ap = AttachParams::default()
            .container(pod::CONTAINER)
            .stdin(stdin.is_some() || stdin_live.is_some())
            .stdout(true)
            .stderr(true);
        let api = self.api();
        let connect = api.exec(&self.name, argv.to_vec(), &ap);
        let mut proc = tokio::select! {
            p = tokio::time::timeout(API_TIMEOUT, connect) => match p {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Err(Error::Engine(format!("cannot exec in pod {}/{}: {}", self.namespace, self.name, describe_error(&e)))),
                Err(_) => return Err(Error::Engine(format!("cannot exec in pod {}/{}: no answer within {}s", self.namespace, self.name, API_TIMEOUT.as_secs()))),
            },
            _ = cancel.cancelled() => {
                r.cancelled = true;
                return Ok(r);
            }
        };
        let writer = match (proc.stdin(), crate::stream::Feed::of(stdin, stdin_live)) {
            (Some(w), Some(feed)) => Some(feed.spawn(w)),
            _ => None,
        };
        let (Some(mut out), Some(mut err)) = (proc.stdout(), proc.stderr()) else {
            proc.abort();
            return Err(Error::Engine("the exec has no stdout or stderr".into()));
        };
        let status = proc.take_status();
        let deadline = tokio::time::sleep(timeout.saturating_sub(started.elapsed()));
        tokio::pin!(deadline);
        let (mut ob, mut eb) = (vec![0u8; 32 << 10], vec![0u8; 32 << 10]);
        let (mut out_done, mut err_done) = (false, false);
        let mut tap = crate::backend::container_job::OutputTap::new(cap, discard, tx);
        while !(out_done && err_done) {
            let (stream, data) = tokio::select! {
                n = out.read(&mut ob), if !out_done => match n {
                    Ok(0) | Err(_) => { out_done = true; continue; }
                    Ok(n) => (StdStream::Stdout, &ob[..n]),
                },
                n = err.read(&mut eb), if !err_done => match n {
                    Ok(0) | Err(_) => { err_done = true; continue; }
                    Ok(n) => (StdStream::Stderr, &eb[..n]),
                },
                _ = &mut deadline => { r.timed_out = true; break; }
                _ = cancel.cancelled() => { r.cancelled = true; break; }
            };
            if tap
                .pass(&mut r, stream, data, deadline.as_mut(), cancel)
                .await
            {
                break;
            }
        }
        if let Some(w) = writer {
            w.abort();
        }
        if r.timed_out || r.output_limit_hit || r.cancelled {
            proc.abort();
            r.duration = started.elapsed();
            return Ok(r);
        }
        let status = match status {
            Some(s) => tokio::time::timeout(Duration::from_secs(10), s)
                .await
                .ok()
                .flatten(),
            None => None,
        };
        proc.abort();
        r.duration = started.elapsed();
        let Some(s) = status else {
            return Err(Error::Sandbox(format!(
                "the exec in pod {}/{} ended without an exit status (the connection broke or the pod went away)",
                self.namespace, self.name
            )));
        };
        r.exit_code = Some(exit_code_of(&s).map_err(Error::Sandbox)?);
        Ok(r)
    }

    /// Kills every process of the sandbox user but the container's keep-alive.
    async fn kill_processes(&mut self, cancel: &CancellationToken) {
        let argv: Vec<String> = ["/bin/sh", "-c", "kill -9 -1 2>/dev/null; exit 0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ok = self
            .exec_inner(
                &argv,
                None,
                1 << 12,
                Duration::from_secs(20),
                cancel,
                Live::default(),
            )
            .await
            .is_ok_and(|r| r.exit_code == Some(0));
        if !ok {
            self.dead = true;
            self.delete().await;
        }
    }
}

/// The cluster stops a warm pod after this (`activeDeadlineSeconds`) even when the runner
/// is gone; the pool stops using it at half of it.
const WARM_DEADLINE: Duration = Duration::from_secs(2 * 3600);

/// What a warm pool's pods are made from.
pub struct WarmPod {
    cluster: Arc<Cluster>,
    namespace: String,
    /// The pod manifest; each pod gets its own name.
    template: Value,
    start_timeout: Duration,
}

impl crate::backend::pool::Warm for SandboxPod {
    type Spec = WarmPod;

    fn start(spec: &WarmPod) -> impl std::future::Future<Output = Result<Self, Error>> + Send {
        let mut m = spec.template.clone();
        m["metadata"]["name"] = Value::from(super::native::sandbox_id());
        let (cluster, ns, t) = (
            spec.cluster.clone(),
            spec.namespace.clone(),
            spec.start_timeout,
        );
        async move {
            let cancel = CancellationToken::new();
            let mut p = SandboxPod::start(cluster, &ns, m, t, &cancel).await?;
            // The roots of its writable places as made: what the clean proof compares with.
            let argv = crate::backend::clean::script_argv("snapshot", false);
            match p
                .exec(&argv, None, 1 << 16, Duration::from_secs(30), &cancel)
                .await
            {
                Ok(r) => {
                    let out = crate::backend::clean::parse(&String::from_utf8_lossy(&r.stderr));
                    p.reuse.fresh = Some(out.roots);
                    Ok(p)
                }
                Err(e) => {
                    p.delete().await;
                    Err(e)
                }
            }
        }
    }

    fn can_reuse(&self, recycle_after: u32) -> bool {
        !self.dead && self.reuse.uses < recycle_after && self.born.elapsed() < WARM_DEADLINE / 2
    }

    async fn remove(self) {
        self.delete().await
    }
}

type PodPool = crate::backend::pool::Pool<SandboxPod>;
/// A pod pool of a [`crate::backend::Scope`], by its cluster, namespace and template.
pub type KeyedPodPool = (String, Arc<PodPool>);

/// The scope's pool of the pods of a (warm) plan: its template, in its namespace.
fn pool(scope: &crate::backend::Scope, plan: &PodPlan) -> Arc<PodPool> {
    let (cluster, ns, template) = (&plan.cluster, &plan.namespace, &plan.spec);
    let key = format!("{}|{ns}|{template}", cluster.key);
    let mut all = scope.pod_pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = all.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let p = crate::backend::pool::Pool::new(WarmPod {
        cluster: cluster.clone(),
        namespace: ns.to_string(),
        template: template.clone(),
        start_timeout: plan.start_timeout,
    });
    all.push((key, p.clone()));
    p
}

/// Keeps the warm pods of all pools near `cap` (the backend's job slots): idle pods of
/// other pools are deleted to make room for one more of `pool`'s; returns how many of
/// `pool`'s may be started ahead. (A run of many languages would otherwise keep `cap` idle
/// pods per language until its end.) The deletions are awaited: the new pods are created
/// after the evicted ones are gone, never on top of them.
async fn make_room(scope: &crate::backend::Scope, pool: &Arc<PodPool>, cap: usize) -> usize {
    let pools: Vec<Arc<PodPool>> = scope
        .pod_pools
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, p)| p.clone())
        .filter(|p| !Arc::ptr_eq(p, pool))
        .collect();
    let mut others: usize = pools.iter().map(|p| p.live()).sum();
    let mut evicted = Vec::new();
    for p in &pools {
        while others + pool.live().max(1) > cap {
            match p.take_idle() {
                Some(pod) => {
                    others -= 1;
                    evicted.push(pod);
                }
                None => break,
            }
        }
    }
    for pod in evicted {
        pod.delete().await;
    }
    cap.saturating_sub(others).max(1)
}

fn warm_for(job: &PlannedJob, ctx: &RunCtx) -> bool {
    !ctx.fresh_containers
        && job
            .backends
            .kubernetes
            .as_ref()
            .and_then(|k| k.warm)
            .unwrap_or(true)
}

/// The exit code in an exec's final `Status`; `Err` for a failure without one (the
/// program could not start, the container is gone, ...).
pub fn exit_code_of(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
) -> Result<i64, String> {
    if s.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    if s.reason.as_deref() == Some("NonZeroExitCode") {
        let code = s
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
                    .and_then(|c| c.message.as_deref())
            })
            .and_then(|m| m.trim().parse().ok());
        if let Some(c) = code {
            return Ok(c);
        }
    }
    Err(format!(
        "the exec failed: {}",
        s.message.as_deref().unwrap_or("no message")
    ))
}

enum Ready {
    Yes,
    NotYet(String),
    Never(String),
}

/// Whether a pod is ready, may still get there, or never will (and why).
fn readiness(p: &Pod) -> Ready {
    let Some(st) = &p.status else {
        return Ready::NotYet("no status yet".into());
    };
    let phase = st.phase.as_deref().unwrap_or("Unknown");
    let cs = st
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == pod::CONTAINER));
    if phase == "Running" && cs.is_some_and(|c| c.ready) {
        return Ready::Yes;
    }
    if let Some(state) = cs.and_then(|c| c.state.as_ref()) {
        if let Some(w) = &state.waiting {
            let reason = w.reason.clone().unwrap_or_default();
            let msg = w.message.clone().unwrap_or_default();
            let why = if msg.is_empty() {
                reason.clone()
            } else {
                format!("{reason}: {msg}")
            };
            let lower = msg.to_ascii_lowercase();
            let hopeless = matches!(
                reason.as_str(),
                "ImagePullBackOff"
                    | "ErrImageNeverPull"
                    | "InvalidImageName"
                    | "CreateContainerConfigError"
                    | "CreateContainerError"
                    | "CrashLoopBackOff"
                    | "RunContainerError"
            ) || (reason == "ErrImagePull"
                && [
                    "not found",
                    "denied",
                    "unauthorized",
                    "manifest unknown",
                    "does not exist",
                ]
                .iter()
                .any(|s| lower.contains(s)));
            return if hopeless {
                Ready::Never(why)
            } else {
                Ready::NotYet(why)
            };
        }
        if let Some(t) = &state.terminated {
            return Ready::Never(format!(
                "its container exited ({}, exit code {}){}",
                t.reason.as_deref().unwrap_or("terminated"),
                t.exit_code,
                t.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    if matches!(phase, "Failed" | "Succeeded") {
        return Ready::Never(format!(
            "the pod is {phase}{}",
            st.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    let unscheduled = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        return Ready::NotYet(format!(
            "not scheduled: {}{}",
            c.reason.as_deref().unwrap_or("Unschedulable"),
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    Ready::NotYet(format!("phase {phase}"))
}

/// The argv of an exec running `step` with `env` in a pod: the job's environment only
/// (`env -i`, the image's PATH kept unless the job sets one), the workdir, the open-files
/// and CPU-time limits ([`StepShell`]); `measure`: the run step's figures.
pub fn step_argv(
    lang: crate::spec::types::Lang,
    step: &crate::sandbox::Step,
    env: &[(String, String)],
    open_files: u64,
    measure: Option<&crate::backend::step_shell::Measure>,
) -> Vec<String> {
    let shell = StepShell {
        workdir: true,
        open_files: Some(open_files),
        cpu_seconds: step.cpu_seconds,
        env: Some(env),
        measure,
        ..Default::default()
    };
    typescript_types(
        shell.argv(&step.argv),
        lang == crate::spec::types::Lang::Typescript && step.kind == StepKind::Compile,
    )
}

/// Where images keep the Node.js type definitions of a global TypeScript: llm-sandbox's
/// default images (npm's /usr/local prefix), Debian's npm.
const TYPE_ROOTS: &[&str] = &[
    "/usr/local/lib/node_modules/@types",
    "/usr/lib/node_modules/@types",
];

/// TypeScript's compile step looks its type definitions up in the image (pods run images
/// llm-sandbox did not build) instead of using the default images' fixed path.
fn typescript_types(mut argv: Vec<String>, ts_compile: bool) -> Vec<String> {
    if !ts_compile {
        return argv;
    }
    if let Some(i) = argv.iter().position(|a| a == "--typeRoots") {
        if i + 1 < argv.len() {
            argv.drain(i..i + 2);
        }
    }
    let find = format!(
        "for d in {}; do if [ -d \"$d/node\" ]; then set -- \"$@\" --typeRoots \"$d\"; break; fi; done; ",
        TYPE_ROOTS.join(" ")
    );
    argv[2] = format!("{find}{}", argv[2]);
    argv
}

/// Why a job cannot run on this backend, if it cannot.
fn unsupported(job: &PlannedJob) -> Option<String> {
    if job.dockerfile.is_some() {
        return Some("`dockerfile` is not supported on the kubernetes backend: build the image, push it to a registry the cluster can pull from (or load it into the nodes, e.g. `kind load docker-image`), and name it with `image`".into());
    }
    if !job.libraries.is_empty() || !job.setup.is_empty() {
        return Some("`libraries` and `setup` are not supported on the kubernetes backend (pods run as a non-root user with a read-only root filesystem): bake them into an image and name it with `image`".into());
    }
    None
}

/// The namespace of a job's pod: `backends.kubernetes.namespace`, else the manifest's,
/// else the kubeconfig context's.
fn namespace_of(job: &PlannedJob, cluster: &Cluster, manifest: Option<&Value>) -> String {
    job.backends
        .kubernetes
        .as_ref()
        .and_then(|k| k.namespace.clone())
        .or_else(|| {
            manifest
                .and_then(|m| m["metadata"]["namespace"].as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| cluster.namespace.clone())
}

/// What a job's pod is made from.
struct PodPlan {
    cluster: Arc<Cluster>,
    namespace: String,
    image: String,
    /// The pod (a warm one: its template, named "warm").
    spec: Value,
    start_timeout: Duration,
    warm: bool,
}

/// The cluster, namespace, image and pod of a job (errors: what it cannot run with).
async fn plan_pod(job: &PlannedJob, ctx: &RunCtx) -> Result<PodPlan, Error> {
    if let Some(why) = unsupported(job) {
        return Err(Error::Unavailable(why));
    }
    let manifest = manifest_of(job)?;
    let kcfg = job.backends.kubernetes.as_ref();
    let base = job.file.parent().unwrap_or(Path::new("."));
    let cluster = connect(&ctx.scope, kcfg, base).await?;
    let image = image_of(job, manifest.as_ref());
    let namespace = namespace_of(job, &cluster, manifest.as_ref());
    let warm = warm_for(job, ctx);
    let name = super::native::sandbox_id();
    let owner = owner_labels(&cluster);
    // The cluster stops the pod after this even when the runner is gone.
    let deadline = if warm {
        WARM_DEADLINE.as_secs()
    } else {
        (job.timeout.as_secs() + 1) * 2 + 600
    };
    let mut spec = pod::build(&pod::PodParams {
        name: &name,
        image: &image,
        limits: &job.limits,
        network: job.network,
        kind: if warm { "warm" } else { "job" },
        job_name: (!warm).then_some(job.name.as_str()),
        deadline_secs: Some(deadline),
        owner: &owner,
        manifest: manifest.as_ref(),
    })?;
    if warm {
        // Each pod of the pool gets its own name.
        spec["metadata"]["name"] = Value::from("warm");
    }
    let start_timeout = kcfg
        .and_then(|k| k.start_timeout)
        .map(|d| d.0)
        .unwrap_or(DEFAULT_START_TIMEOUT);
    Ok(PodPlan {
        cluster,
        namespace,
        image,
        spec,
        start_timeout,
        warm,
    })
}

/// The pools' key of a job's pods, without asking the cluster (jobs with the same key
/// share a pool; two keys may name one pool: their demands add up).
pub fn prepare_key(job: &PlannedJob) -> String {
    format!(
        "{:?}|{:?}|{:?}|{}|{:?}|{}",
        job.backends.kubernetes, job.pod_manifest, job.image, job.lang, job.limits, job.network
    )
}

/// Tells the warm pool of a job's pods how many jobs will take one (`demand`): it then
/// starts no pod no job takes, and deletes one as soon as no job is left for it.
pub async fn prepare_ahead(job: &PlannedJob, demand: Option<usize>, ctx: &RunCtx) {
    if let Ok(plan) = plan_pod(job, ctx).await {
        if plan.warm {
            pool(&ctx.scope, &plan).expect(demand);
        }
    }
}

/// Runs one job in a pod (a warm one of its pool, or its own); with `wire`, its run step's stdin and stdout
/// are connected through it ([`crate::backend::Wire`]: the exec streams both).
pub async fn run_job(
    job: &PlannedJob,
    ctx: &RunCtx,
    wire: Option<crate::backend::Wire>,
) -> JobReport {
    let started = Instant::now();
    let plan = match plan_pod(job, ctx).await {
        Ok(p) => p,
        Err(e) => return error_report(job, Phase::Prepare, e),
    };
    let image = plan.image.clone();
    let failed = |e: Error| {
        let mut r = match e {
            Error::Interrupted => crate::backend::container_job::interrupted(job),
            e => super::prepare_error_report(job, e),
        };
        r.image = Some(image.clone());
        r.duration_ms = started.elapsed().as_millis() as u64;
        r
    };
    let mut report = if plan.warm {
        let pool = pool(&ctx.scope, &plan);
        let ahead = make_room(&ctx.scope, &pool, ctx.parallelism).await;
        let recycle = job
            .backends
            .kubernetes
            .as_ref()
            .and_then(|k| k.recycle_after)
            .unwrap_or(crate::backend::pool::DEFAULT_RECYCLE_AFTER)
            .max(1);
        let (mut p, lease) = match pool.acquire(ahead, recycle, &ctx.cancel).await {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let mut reusable = false;
        let report =
            crate::backend::container_job::run(&mut p, job, ctx, &image, true, &mut reusable, wire)
                .await;
        pool.release(p, lease, reusable && !ctx.cancel.is_cancelled())
            .await;
        report
    } else {
        let started_pod = SandboxPod::start(
            plan.cluster,
            &plan.namespace,
            plan.spec,
            plan.start_timeout,
            &ctx.cancel,
        )
        .await;
        let mut p = match started_pod {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let report =
            crate::backend::container_job::run(&mut p, job, ctx, &image, false, &mut false, wire)
                .await;
        p.delete().await;
        report
    };
    report.image = Some(image);
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

impl crate::backend::container_job::ContainerSandbox for SandboxPod {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_dead(&self) -> bool {
        self.dead
    }

    fn reuse(&mut self) -> &mut crate::backend::container_job::Reuse {
        &mut self.reuse
    }

    fn enforcement(&self) -> &'static str {
        "pod cgroup"
    }

    async fn exec(
        &mut self,
        argv: &[String],
        stdin: Option<&[u8]>,
        cap: u64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<ExecResult, Error> {
        SandboxPod::exec(self, argv, stdin, cap, timeout, cancel).await
    }

    async fn remove(self) {
        self.delete().await
    }

    /// As the pod's user (its security context), with the job's environment only, the
    /// workdir and the limits set by [`step_argv`]'s prologue; output and stdin streamed
    /// as `io.live` says.
    async fn run_step(
        &mut self,
        step: &crate::sandbox::Step,
        io: crate::backend::container_job::StepIo<'_>,
        cancel: &CancellationToken,
    ) -> Result<ExecResult, Error> {
        if let Some(tar) = io.inputs.take() {
            self.put_tar(&tar, cancel).await?;
        }
        let argv = step_argv(io.lang, step, io.env, io.open_files, io.measure);
        let cap = step.capture_cap.saturating_add(
            io.measure
                .map_or(0, |_| crate::backend::step_shell::TRAILER_MAX),
        );
        let timeout = Duration::from_millis(step.timeout_ms);
        SandboxPod::exec_live(self, &argv, io.stdin, cap, timeout, cancel, io.live).await
    }

    async fn end_exec(
        &mut self,
        argv: &[String],
        _clean: bool,
        cap: u64,
        cancel: &CancellationToken,
    ) -> Result<ExecResult, Error> {
        let timeout = crate::backend::container_job::END_TIMEOUT;
        SandboxPod::exec(self, argv, None, cap, timeout, cancel).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typescript_finds_its_types_in_the_image() {
        let wrapped = |argv: &[String]| {
            StepShell {
                workdir: true,
                env: Some(&[]),
                ..Default::default()
            }
            .argv(argv)
        };
        let argv: Vec<String> = ["tsc", "--typeRoots", "/fixed", "main.ts"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let w = typescript_types(wrapped(&argv), true);
        assert_eq!(&w[4..], &["tsc", "main.ts"]);
        assert!(w[2].starts_with("for d in /usr/local/lib/node_modules/@types"));
        assert!(w[2].contains("set -- \"$@\" --typeRoots \"$d\""));
        let same = wrapped(&argv);
        assert_eq!(typescript_types(same.clone(), false), same);
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        let s = |v: Value| -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Status {
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(
            exit_code_of(&s(serde_json::json!({"metadata": {}, "status": "Success"}))),
            Ok(0)
        );
        let failed = serde_json::json!({"metadata": {}, "status": "Failure",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "42"}]}});
        assert_eq!(exit_code_of(&s(failed)), Ok(42));
        let e = exit_code_of(&s(serde_json::json!({"status": "Failure",
            "reason": "InternalError", "message": "container not found"})))
        .unwrap_err();
        assert!(e.contains("container not found"), "{e}");
    }

    #[test]
    fn readiness_says_why_not() {
        let pod = |status: Value| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": status}))
                .unwrap()
        };
        let waiting = |reason: &str, msg: &str| {
            pod(
                serde_json::json!({"phase": "Pending", "containerStatuses": [{
                "name": "sandbox", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": msg}}}]}),
            )
        };
        assert!(
            matches!(readiness(&waiting("ImagePullBackOff", "")), Ready::Never(w) if w.contains("ImagePullBackOff"))
        );
        assert!(matches!(
            readiness(&waiting("ErrImagePull", "x: not found")),
            Ready::Never(_)
        ));
        assert!(matches!(
            readiness(&waiting("ErrImagePull", "i/o timeout")),
            Ready::NotYet(_)
        ));
        assert!(matches!(
            readiness(&waiting("ContainerCreating", "")),
            Ready::NotYet(_)
        ));
        let unsched = pod(serde_json::json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu."}]}));
        assert!(matches!(readiness(&unsched), Ready::NotYet(w) if w.contains("Insufficient cpu")));
        let ready = pod(
            serde_json::json!({"phase": "Running", "containerStatuses": [{
            "name": "sandbox", "image": "x", "imageID": "", "ready": true, "restartCount": 0}]}),
        );
        assert!(matches!(readiness(&ready), Ready::Yes));
    }
}
