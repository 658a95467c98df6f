//! Warm containers: per prepared environment (engine, image, limits, network) a pool of
//! hardened containers started ahead of demand. A container runs one job at a time; after
//! each job every process of the sandbox user is killed, `/sandbox`, `/tmp`, `/dev/shm`
//! and `/dev/mqueue` are emptied and System V IPC objects removed, and the container goes
//! back to the pool only when a check proves all of that (else it is destroyed). It is
//! replaced after `recycle_after` jobs, and every container is removed at the end of the
//! run (on Ctrl-C too; after a SIGKILL of the runner they stop by themselves).

use super::container::{Container, ContainerSpec};
use super::engine::Engine;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// An idle container older than this is checked (one inspect) before it gets a job.
const HEALTH_CHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Jobs a warm container runs before it is replaced, unless `recycle_after` says otherwise.
pub const DEFAULT_RECYCLE_AFTER: u32 = 50;

/// What makes two jobs' containers interchangeable.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    endpoint: String,
    image: String,
    memory: u64,
    cpus: u64,
    pids: u64,
    disk: u64,
    open_files: u64,
    network: bool,
}

pub struct Pool {
    engine: Arc<Engine>,
    spec: ContainerSpec,
    idle: Mutex<Vec<Container>>,
    /// Containers of this pool that exist (idle, busy or starting).
    live: AtomicUsize,
    /// Background starts not finished yet (waited for at the end of the run, so that no
    /// container comes up after the last cleanup).
    starting: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

static POOLS: Mutex<Vec<(Key, Arc<Pool>)>> = Mutex::new(Vec::new());

/// The pool for containers made from `spec` on `engine`.
pub fn pool(engine: &Arc<Engine>, spec: &ContainerSpec) -> Arc<Pool> {
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
    };
    let mut all = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = all.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let p = Arc::new(Pool {
        engine: engine.clone(),
        spec: spec.clone(),
        idle: Mutex::new(Vec::new()),
        live: AtomicUsize::new(0),
        starting: Mutex::new(Vec::new()),
    });
    all.push((key, p.clone()));
    p
}

impl Pool {
    fn spec(&self) -> ContainerSpec {
        let mut s = self.spec.clone();
        s.name = crate::backend::native::sandbox_id();
        s
    }

    /// A clean container: an idle one, else a new one. Starts more in the background so
    /// that `ahead` containers are there when the next jobs come.
    pub async fn acquire(self: &Arc<Self>, ahead: usize) -> Result<Container, String> {
        let c = loop {
            let got = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match got {
                // Health check of a container that sat idle: one that died meanwhile (the
                // engine restarted, someone removed it, the OOM killer) is replaced, not
                // handed to a job.
                Some(c) => {
                    let check = c.idle_for() > HEALTH_CHECK_AFTER;
                    if !check || is_running(&c.engine, &c.id).await {
                        break c;
                    }
                    tracing::info!("warm container {} died while idle; replacing it", c.id);
                    self.live.fetch_sub(1, Ordering::SeqCst);
                    c.remove().await;
                }
                None => break self.start_one().await?,
            }
        };
        self.prewarm(ahead);
        Ok(c)
    }

    async fn start_one(&self) -> Result<Container, String> {
        self.live.fetch_add(1, Ordering::SeqCst);
        let r = Container::start(self.engine.clone(), &self.spec()).await;
        if r.is_err() {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        r
    }

    /// Starts containers in the background until `want` exist.
    pub fn prewarm(self: &Arc<Self>, want: usize) {
        let Ok(h) = tokio::runtime::Handle::try_current() else {
            return;
        };
        while self.live.load(Ordering::SeqCst) < want {
            self.live.fetch_add(1, Ordering::SeqCst);
            let me = self.clone();
            let task = h.spawn(async move {
                match Container::start(me.engine.clone(), &me.spec()).await {
                    Ok(c) => me.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c),
                    Err(e) => {
                        tracing::debug!("starting a warm container failed: {e}");
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
    pub async fn release(&self, mut c: Container, reusable: bool, recycle_after: u32) {
        if reusable && !c.dead && c.uses < recycle_after {
            c.idle_since = Some(std::time::Instant::now());
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        } else {
            self.live.fetch_sub(1, Ordering::SeqCst);
            c.remove().await;
        }
    }

    async fn drain(&self) {
        let starting: Vec<_> =
            std::mem::take(&mut *self.starting.lock().unwrap_or_else(|e| e.into_inner()));
        for t in starting {
            let _ = t.await;
        }
        let idle: Vec<Container> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for c in idle {
            self.live.fetch_sub(1, Ordering::SeqCst);
            c.remove().await;
        }
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

/// The end of a run: every warm container is removed.
pub async fn drain_all() {
    let pools: Vec<Arc<Pool>> = POOLS
        .lock()
        .map(|mut all| all.drain(..).map(|(_, p)| p).collect())
        .unwrap_or_default();
    for p in pools {
        p.drain().await;
    }
}
