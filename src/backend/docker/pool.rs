//! Warm containers: per prepared environment (engine, image, limits, network) a pool of
//! hardened containers started ahead of demand. A container runs one job at a time; after
//! each job every process of the sandbox user is killed, `/sandbox`, `/tmp`, `/dev/shm`
//! and `/dev/mqueue` are emptied and System V IPC objects removed, and the container goes
//! back to the pool only when a check proves all of that (else it is destroyed). It is
//! replaced after `recycle_after` jobs, removed as soon as no job of the run is left for it
//! ([`Pool::expect`]), and every container is removed by the end of the run (on Ctrl-C too;
//! after a SIGKILL of the runner they stop by themselves).
//!
//! The pool itself is generic ([`crate::backend::pool`]): the kubernetes backend keeps its
//! warm pods in the same kind of pool.

use super::container::{Container, ContainerSpec};
use super::engine::Engine;
use crate::backend::pool::{Pool, Warm};
use crate::backend::Error;
use std::future::Future;
use std::sync::Arc;

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
    /// Preloaded: the modules imported ahead.
    preload: Option<Vec<String>>,
    /// Its jobs go through the agent (else one exec per step).
    agent: bool,
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
        preload: spec.preload.as_ref().map(|p| p.modules.clone()),
        agent: spec.agent.is_some(),
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

/// The end of a scope: every warm container of it is removed.
pub async fn drain_all(scope: &crate::backend::Scope) {
    let pools: Vec<Arc<Pool<Container>>> = scope
        .docker_pools
        .lock()
        .map(|mut all| all.drain(..).map(|(_, p)| p).collect())
        .unwrap_or_default();
    futures_util::future::join_all(pools.iter().map(|p| p.drain())).await;
}
