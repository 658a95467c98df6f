//! A pool of warm sandboxes, written once for every backend that keeps them (Docker and
//! Podman containers: `docker/pool.rs`; Kubernetes pods): started ahead of demand, one job
//! at a time each, back in the pool only when proven clean, replaced after their share of
//! jobs, all removed at the end of their scope.

use super::Error;
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

/// An idle sandbox older than this is checked ([`Warm::is_alive`]) before it gets a job.
const HEALTH_CHECK_AFTER: Duration = Duration::from_secs(2);

/// The warm sandboxes of one prepared environment.
pub struct Pool<T: Warm> {
    spec: T::Spec,
    /// Idle sandboxes, with since when (None: just started, never ran a job).
    idle: Mutex<Vec<(T, Option<Instant>)>>,
    /// Sandboxes of this pool that exist (idle, busy or starting).
    live: AtomicUsize,
    /// Background starts not finished yet (waited for at the end of the run, so that no
    /// sandbox comes up after the last cleanup).
    starting: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// How many background starts are under way, how many jobs wait for one, and the
    /// signal that one ended (its sandbox idle, or failed).
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    ended: tokio::sync::Notify,
}

/// Counts a job waiting for a background start while it waits (also when the wait is
/// cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T: Warm> Pool<T> {
    pub fn new(spec: T::Spec) -> Arc<Self> {
        Arc::new(Pool {
            spec,
            idle: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            starting: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            ended: tokio::sync::Notify::new(),
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
                    // Sandboxes starting in the background (a run's first ones, started
                    // ahead of its jobs): wait for one of them rather than start another
                    // beside it, as long as there are fewer waiting jobs than starts.
                    let ended = self.ended.notified();
                    tokio::pin!(ended);
                    ended.as_mut().enable();
                    let waiters = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
                    let waiting = Waiting(&self.waiting);
                    if waiters <= self.in_flight.load(Ordering::SeqCst) {
                        let none_idle = self
                            .idle
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .is_empty();
                        if none_idle {
                            // Looked at again every second (a start has its own bounds).
                            let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
                        }
                        drop(waiting);
                        continue;
                    }
                    drop(waiting);
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
            self.in_flight.fetch_add(1, Ordering::SeqCst);
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
                me.in_flight.fetch_sub(1, Ordering::SeqCst);
                me.ended.notify_waiters();
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

    /// Removes the idle sandboxes (the end of a run), all at once: an engine takes about
    /// 100 ms to remove a running container, and the run waits for the last.
    pub async fn drain(&self) {
        let starting: Vec<_> =
            std::mem::take(&mut *self.starting.lock().unwrap_or_else(|e| e.into_inner()));
        for t in starting {
            let _ = t.await;
        }
        let idle: Vec<(T, Option<Instant>)> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        futures_util::future::join_all(idle.into_iter().map(|(c, _)| {
            self.live.fetch_sub(1, Ordering::SeqCst);
            c.remove()
        }))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sandbox that takes a while to start and counts its starts.
    struct Slow;

    impl Warm for Slow {
        type Spec = Arc<AtomicUsize>;
        async fn start(starts: &Arc<AtomicUsize>) -> Result<Slow, Error> {
            starts.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(Slow)
        }
        fn can_reuse(&self, _: u32) -> bool {
            true
        }
        async fn remove(self) {}
    }

    /// The jobs that come while the sandboxes started ahead of them are still starting
    /// take those (a run's start: no second set beside them); more jobs than starts start
    /// their own.
    #[tokio::test]
    async fn jobs_take_the_sandboxes_started_ahead() {
        let starts = Arc::new(AtomicUsize::new(0));
        let pool = Pool::<Slow>::new(starts.clone());
        pool.prewarm(2);
        let (a, b) = tokio::join!(pool.acquire(2), pool.acquire(2));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(
            starts.load(Ordering::SeqCst),
            2,
            "started beside the prewarmed"
        );
        assert_eq!(pool.live(), 2);

        let starts = Arc::new(AtomicUsize::new(0));
        let pool = Pool::<Slow>::new(starts.clone());
        pool.prewarm(1);
        let (a, b, c) = tokio::join!(pool.acquire(1), pool.acquire(1), pool.acquire(1));
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        pool.drain().await;
    }
}
