//! Warm containers: per prepared environment (engine, image, limits, network) a pool of
//! hardened containers started ahead of demand. A container runs one job at a time; after
//! each job every process of the sandbox user is killed, `/sandbox`, `/tmp`, `/dev/shm`
//! and `/dev/mqueue` are emptied and System V IPC objects removed, and the container goes
//! back to the pool only when a check proves all of that (else it is destroyed). It is
//! replaced after `recycle_after` jobs, and every container is removed at the end of the
//! run (on Ctrl-C too; after a SIGKILL of the runner they stop by themselves).
//!
//! The pool itself is generic ([`Warm`]): the kubernetes backend keeps its warm pods in
//! the same kind of pool.

use super::container::{Container, ContainerSpec};
use super::engine::Engine;
use crate::backend::Error;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A sandbox a warm pool holds: started from a spec, running one job at a time, removed
/// when it was not proven clean or has run its share of jobs.
pub trait Warm: Send + Sized + 'static {
    /// What a new one is started from.
    type Spec: Send + Sync + 'static;
    fn start(spec: &Self::Spec) -> impl Future<Output = Result<Self, Error>> + Send;
    /// Whether it may run another job (alive, fewer than `recycle_after` jobs so far).
    fn can_reuse(&self, recycle_after: u32) -> bool;
    fn remove(self) -> impl Future<Output = ()> + Send;
    /// Whether it still runs (checked before a sandbox that sat idle gets a job).
    fn is_alive(&self) -> impl Future<Output = bool> + Send {
        async { true }
    }
}

/// A container of a docker pool: its engine and spec (each gets a new name).
pub struct DockerWarm {
    pub engine: Arc<Engine>,
    pub spec: ContainerSpec,
}

impl Warm for Container {
    type Spec = DockerWarm;

    fn start(spec: &DockerWarm) -> impl Future<Output = Result<Self, Error>> + Send {
        let mut s = spec.spec.clone();
        s.name = crate::backend::native::sandbox_id();
        let engine = spec.engine.clone();
        async move {
            let mut c = Container::start(engine.clone(), &s).await?;
            if !c.has_agent() && !is_running(&engine, &c.id).await {
                // Seen once under a full test suite's load: a container whose keep-alive
                // process ended right after its start (its agent could not start either).
                // One new container instead; a second one that dies says why.
                tracing::warn!(
                    "container {} ended right after its start; starting another",
                    c.id
                );
                c.remove().await;
                s.name = crate::backend::native::sandbox_id();
                c = Container::start(engine, &s).await?;
            }
            if !c.has_agent() {
                // The roots of its writable places as made: what the clean proof compares
                // with after every job (the agent takes its own snapshot).
                c.reuse.fresh = Some(c.snapshot_roots().await?);
            }
            Ok(c)
        }
    }

    fn can_reuse(&self, recycle_after: u32) -> bool {
        !self.dead && self.reuse.uses < recycle_after
    }

    fn remove(self) -> impl Future<Output = ()> + Send {
        Container::remove(self)
    }

    fn is_alive(&self) -> impl Future<Output = bool> + Send {
        let (engine, id) = (self.engine.clone(), self.id.clone());
        async move { is_running(&engine, &id).await }
    }
}

/// Whether the engine says the container is running (its keep-alive process alive).
async fn is_running(engine: &Engine, id: &str) -> bool {
    engine
        .docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok()
        .and_then(|i| i.state)
        .and_then(|s| s.running)
        .unwrap_or(false)
}

/// An idle sandbox older than this is checked ([`Warm::is_alive`]) before it gets a job.
const HEALTH_CHECK_AFTER: Duration = Duration::from_secs(2);

/// Jobs a warm container runs before it is replaced, unless `recycle_after` says otherwise.
pub const DEFAULT_RECYCLE_AFTER: u32 = 50;

/// What makes two jobs' containers interchangeable.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    endpoint: String,
    image: String,
    memory: u64,
    cpus: u64,
    pids: u64,
    disk: u64,
    open_files: u64,
    network: bool,
    preload: bool,
}

pub struct Pool<T: Warm> {
    spec: T::Spec,
    /// Idle sandboxes, with since when (None: just started, never ran a job).
    idle: Mutex<Vec<(T, Option<Instant>)>>,
    /// Sandboxes of this pool that exist (idle, busy or starting).
    live: AtomicUsize,
    /// Background starts not finished yet (waited for at the end of the run, so that no
    /// sandbox comes up after the last cleanup).
    starting: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A warm pool of a [`crate::backend::Scope`], by what its containers are made from.
pub type KeyedPool = (Key, Arc<Pool<Container>>);

/// The pool of the scope for containers made from `spec` on `engine`.
pub fn pool(
    scope: &crate::backend::Scope,
    engine: &Arc<Engine>,
    spec: &ContainerSpec,
) -> Arc<Pool<Container>> {
    let l = &spec.limits;
    let key = Key {
        endpoint: engine.endpoint.clone(),
        image: spec.image.clone(),
        memory: l.memory,
        cpus: l.cpus.to_bits(),
        pids: l.pids,
        disk: l.disk,
        open_files: l.open_files,
        network: spec.network,
        preload: spec.preload.is_some(),
    };
    let mut all = scope.docker_pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = all.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let p = Pool::new(DockerWarm {
        engine: engine.clone(),
        spec: spec.clone(),
    });
    all.push((key, p.clone()));
    p
}

impl<T: Warm> Pool<T> {
    pub fn new(spec: T::Spec) -> Arc<Self> {
        Arc::new(Pool {
            spec,
            idle: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            starting: Mutex::new(Vec::new()),
        })
    }

    /// A clean sandbox: an idle one, else a new one. Starts more in the background so
    /// that `ahead` sandboxes are there when the next jobs come.
    pub async fn acquire(self: &Arc<Self>, ahead: usize) -> Result<T, Error> {
        let c = loop {
            let got = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match got {
                // Health check of a sandbox that sat idle: one that died meanwhile (the
                // engine restarted, someone removed it, the OOM killer) is replaced, not
                // handed to a job.
                Some((c, since)) => {
                    let check = since.is_some_and(|t| t.elapsed() > HEALTH_CHECK_AFTER);
                    if !check || c.is_alive().await {
                        break c;
                    }
                    tracing::info!("a warm sandbox died while idle; replacing it");
                    self.live.fetch_sub(1, Ordering::SeqCst);
                    c.remove().await;
                }
                None => {
                    self.live.fetch_add(1, Ordering::SeqCst);
                    match T::start(&self.spec).await {
                        Ok(c) => break c,
                        Err(e) => {
                            self.live.fetch_sub(1, Ordering::SeqCst);
                            return Err(e);
                        }
                    }
                }
            }
        };
        self.prewarm(ahead);
        Ok(c)
    }

    /// Starts sandboxes in the background until `want` exist.
    pub fn prewarm(self: &Arc<Self>, want: usize) {
        let Ok(h) = tokio::runtime::Handle::try_current() else {
            return;
        };
        while self.live.load(Ordering::SeqCst) < want {
            self.live.fetch_add(1, Ordering::SeqCst);
            let me = self.clone();
            let task = h.spawn(async move {
                match T::start(&me.spec).await {
                    Ok(c) => me
                        .idle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((c, None)),
                    Err(e) => {
                        tracing::debug!("starting a warm sandbox failed: {e}");
                        me.live.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            });
            let mut starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
            starting.retain(|t| !t.is_finished());
            starting.push(task);
        }
    }

    /// Back to the pool when it was proven clean and has uses left; else removed.
    pub async fn release(&self, c: T, reusable: bool, recycle_after: u32) {
        if reusable && c.can_reuse(recycle_after) {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((c, Some(Instant::now())));
        } else {
            self.live.fetch_sub(1, Ordering::SeqCst);
            c.remove().await;
        }
    }

    /// How many sandboxes of this pool exist (idle, busy or starting).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Takes an idle sandbox out of the pool (to remove it: room for another pool's).
    pub fn take_idle(&self) -> Option<T> {
        let c = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if c.is_some() {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        c.map(|(c, _)| c)
    }

    /// Removes the idle sandboxes (the end of a run).
    pub async fn drain(&self) {
        let starting: Vec<_> =
            std::mem::take(&mut *self.starting.lock().unwrap_or_else(|e| e.into_inner()));
        for t in starting {
            let _ = t.await;
        }
        let idle: Vec<(T, Option<Instant>)> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for (c, _) in idle {
            self.live.fetch_sub(1, Ordering::SeqCst);
            c.remove().await;
        }
    }
}

/// The end of a scope: every warm container of it is removed.
pub async fn drain_all(scope: &crate::backend::Scope) {
    let pools: Vec<Arc<Pool<Container>>> = scope
        .docker_pools
        .lock()
        .map(|mut all| all.drain(..).map(|(_, p)| p).collect())
        .unwrap_or_default();
    for p in pools {
        p.drain().await;
    }
}
