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

/// Jobs a warm container or pod runs before it is replaced, unless `recycle_after` says
/// otherwise. The clean proof after every job is what keeps one job from the next; the
/// replacement only bounds what the kernel keeps for a sandbox beyond any proof (memory it
/// charged to the sandbox's cgroup, the next pid of its pid namespace). A replacement costs
/// the engine about 0.3 s of CPU on a 2-core machine (a Docker container's start and
/// removal, the agent's interpreter), which at 50 jobs was about as much as the jobs'
/// own; at 500 it is under 1 ms a job (README, "Warm containers").
pub const DEFAULT_RECYCLE_AFTER: u32 = 500;

/// An idle sandbox older than this is checked ([`Warm::is_alive`]) before it gets a job.
const HEALTH_CHECK_AFTER: Duration = Duration::from_secs(2);

/// The warm sandboxes of one prepared environment.
pub struct Pool<T: Warm> {
    spec: T::Spec,
    /// Idle sandboxes, with since when (None: just started, never ran a job).
    idle: Mutex<Vec<(T, Option<Instant>)>>,
    /// Sandboxes of this pool that exist (idle, busy or starting).
    live: AtomicUsize,
    /// Background starts and removals not finished yet (waited for at the end of the run,
    /// so that no sandbox comes up or stays after the last cleanup).
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// How many background starts are under way, how many jobs wait for one, and the
    /// signal that one ended (its sandbox idle, or failed).
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    ended: tokio::sync::Notify,
    /// How many jobs start a sandbox of their own (none idle, none starting for them).
    starting_own: AtomicUsize,
    /// How many sandboxes the jobs want ready (the last `ahead` of [`Pool::acquire`]): a
    /// sandbox that leaves the pool is replaced up to this many.
    want: AtomicUsize,
    /// The jobs the run announced for this pool, and how many have taken a sandbox.
    demand: Mutex<Demand>,
}

/// What a run said of the jobs that will take sandboxes from a pool ([`Pool::expect`]).
/// With it, a pool starts no more sandboxes than jobs are left to take them, and removes
/// a sandbox as soon as no job is left for it, while the other slots still run their last
/// jobs (the end of a run then waits for one removal, not for all of them at once). It is
/// a hint only: a job beyond it starts a sandbox as when nothing was announced.
#[derive(Debug, Default)]
struct Demand {
    /// Jobs announced (0: nothing announced, e.g. a library session or the MCP server).
    announced: usize,
    /// Jobs that were handed a sandbox so far (counted before any announcement too: the
    /// announcement may come after the first jobs).
    taken: usize,
    /// A job that may take more than one sandbox (test cases, retries) was announced:
    /// no bound.
    unbounded: bool,
}

impl Demand {
    /// How many jobs are still to take a sandbox, when that is known.
    fn left(&self) -> Option<usize> {
        (self.announced > 0 && !self.unbounded).then(|| self.announced.saturating_sub(self.taken))
    }
}

/// What [`Pool::acquire`] knows of the sandbox it hands out, for [`Pool::release`].
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// This is the sandbox's last job (`recycle_after` reached with it): it no longer
    /// counts as one of the pool's, and its replacement started when the job got it.
    retiring: bool,
    /// The jobs a sandbox of this pool may run (the `recycle_after` it was acquired with).
    recycle_after: u32,
}

/// Counts a job in a counter while it waits for a background start, or starts a sandbox
/// of its own (also when that is cancelled).
struct Counting<'a>(&'a AtomicUsize);

impl Drop for Counting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A background start of a pool's sandbox: when it ends (done, failed, panicked or
/// aborted) it is no longer in flight, a failed one no longer live, and waiting jobs look
/// again.
struct Starting<'a, T: Warm> {
    pool: &'a Pool<T>,
    /// The sandbox is in the pool's idle list.
    ok: bool,
}

impl<T: Warm> Drop for Starting<'_, T> {
    fn drop(&mut self) {
        if !self.ok {
            self.pool.live.fetch_sub(1, Ordering::SeqCst);
        }
        self.pool.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.pool.ended.notify_waiters();
    }
}

impl<T: Warm> Pool<T> {
    pub fn new(spec: T::Spec) -> Arc<Self> {
        Arc::new(Pool {
            spec,
            idle: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            background: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            ended: tokio::sync::Notify::new(),
            starting_own: AtomicUsize::new(0),
            want: AtomicUsize::new(0),
            demand: Mutex::new(Demand::default()),
        })
    }

    /// Announces `jobs` more jobs that will each take one sandbox of this pool (None: jobs
    /// that may take more than one each; the pool then keeps its sandboxes to the end).
    pub fn expect(&self, jobs: Option<usize>) {
        let mut d = self.demand.lock().unwrap_or_else(|e| e.into_inner());
        match jobs {
            Some(n) => d.announced += n,
            None => d.unbounded = true,
        }
    }

    /// Jobs still to take a sandbox, when the run said.
    fn left(&self) -> Option<usize> {
        self.demand.lock().unwrap_or_else(|e| e.into_inner()).left()
    }

    /// A clean sandbox: an idle one, else a new one. Starts more in the background so
    /// that `ahead` sandboxes are there when the next jobs come. A sandbox whose job will be
    /// its last (`recycle_after`, [`Warm::can_reuse`]) is replaced now, while that job runs,
    /// not when the next job finds the pool short of one.
    /// A cancelled run (`cancel`) stops waiting for a start in flight: `Error::Interrupted`.
    pub async fn acquire(
        self: &Arc<Self>,
        ahead: usize,
        recycle_after: u32,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(T, Lease), Error> {
        self.want.store(ahead, Ordering::SeqCst);
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
                    let waiting = Counting(&self.waiting);
                    if waiters <= self.in_flight.load(Ordering::SeqCst) {
                        let none_idle = self
                            .idle
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .is_empty();
                        if none_idle {
                            // Looked at again every second (a start has its own bounds);
                            // a cancelled run stops waiting (this holds nothing yet).
                            tokio::select! {
                                _ = tokio::time::timeout(Duration::from_secs(1), ended) => {}
                                _ = cancel.cancelled() => return Err(Error::Interrupted),
                            }
                        }
                        drop(waiting);
                        continue;
                    }
                    drop(waiting);
                    self.live.fetch_add(1, Ordering::SeqCst);
                    self.starting_own.fetch_add(1, Ordering::SeqCst);
                    let _own = Counting(&self.starting_own);
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
        // Counted when served, not when asked for: a sandbox released while this job was
        // still looking stays for it.
        self.demand.lock().unwrap_or_else(|e| e.into_inner()).taken += 1;
        // After this job it will have run one more: reusable then only if it could run
        // one more than that now.
        let retiring = !c.can_reuse(recycle_after.saturating_sub(1));
        if retiring {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        self.prewarm(ahead);
        Ok((
            c,
            Lease {
                retiring,
                recycle_after,
            },
        ))
    }

    /// Starts sandboxes in the background until `want` exist, or as many as the jobs left
    /// (announced, [`Pool::expect`]) and the busy ones can use.
    pub fn prewarm(self: &Arc<Self>, want: usize) {
        let Ok(h) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let want = match self.left() {
            Some(left) => want.min(left + self.busy()),
            None => want,
        };
        while self.live.load(Ordering::SeqCst) < want {
            self.live.fetch_add(1, Ordering::SeqCst);
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let me = self.clone();
            let task = h.spawn(async move {
                // Counted out however the start ends (a panic or an abort too): jobs wait
                // for starts in flight, and would wait for ever for one that is gone.
                let mut start = Starting {
                    pool: &me,
                    ok: false,
                };
                start.ok = match T::start(&me.spec).await {
                    Ok(c) => {
                        me.idle
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((c, None));
                        true
                    }
                    Err(e) => {
                        tracing::debug!("starting a warm sandbox failed: {e}");
                        false
                    }
                };
                drop(start);
            });
            self.track(task);
        }
    }

    /// Back to the pool when it was proven clean and has uses left; else removed in the
    /// background (the job's slot does not wait for the engine; [`Pool::drain`] does) and
    /// replaced.
    pub async fn release(self: &Arc<Self>, c: T, lease: Lease, reusable: bool) {
        // (`can_reuse` again: the sandbox may have died or aged during the job.) One no job
        // is left to take (and none waits for) is removed now, while the other slots run
        // their last jobs.
        let wanted = self.left() != Some(0) || self.waiting.load(Ordering::SeqCst) > 0;
        if !lease.retiring && reusable && c.can_reuse(lease.recycle_after) && wanted {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((c, Some(Instant::now())));
            return;
        }
        if !lease.retiring {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => self.track(h.spawn(c.remove())),
            Err(_) => c.remove().await,
        }
        self.prewarm(self.want.load(Ordering::SeqCst));
    }

    /// Keeps a background start or removal for [`Pool::drain`] (dropping finished ones).
    fn track(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self.background.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// How many sandboxes of this pool exist (idle, busy or starting).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// How many of them run a job (and will be back for another). A sandbox a job starts
    /// for itself is not one yet: that job still counts among those left to be served.
    fn busy(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).len();
        self.live.load(Ordering::SeqCst).saturating_sub(
            idle + self.in_flight.load(Ordering::SeqCst) + self.starting_own.load(Ordering::SeqCst),
        )
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
        let background: Vec<_> =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|e| e.into_inner()));
        for t in background {
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

    /// A cancel token nobody cancels.
    fn never() -> &'static tokio_util::sync::CancellationToken {
        static NEVER: std::sync::OnceLock<tokio_util::sync::CancellationToken> =
            std::sync::OnceLock::new();
        NEVER.get_or_init(tokio_util::sync::CancellationToken::new)
    }

    /// A sandbox whose start never ends.
    struct Stuck;

    impl Warm for Stuck {
        type Spec = ();
        async fn start(_: &()) -> Result<Stuck, Error> {
            std::future::pending().await
        }
        fn can_reuse(&self, _: u32) -> bool {
            true
        }
        async fn remove(self) {}
    }

    /// A job waiting for a start in flight stops waiting when the run is cancelled (Ctrl-C,
    /// `--fail-fast`), instead of until the start's own timeouts.
    #[tokio::test]
    async fn a_cancelled_run_stops_waiting_for_a_start() {
        let pool = Pool::<Stuck>::new(());
        pool.prewarm(1);
        let cancel = tokio_util::sync::CancellationToken::new();
        let canceller = {
            let c = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.cancel();
            })
        };
        let got = tokio::time::timeout(Duration::from_secs(5), pool.acquire(1, 50, &cancel))
            .await
            .expect("still waiting 5 s after the cancel");
        assert!(matches!(got, Err(Error::Interrupted)), "{:?}", got.err());
        canceller.await.unwrap();
    }

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
        let (a, b) = tokio::join!(pool.acquire(2, 50, never()), pool.acquire(2, 50, never()));
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
        let (a, b, c) = tokio::join!(
            pool.acquire(1, 50, never()),
            pool.acquire(1, 50, never()),
            pool.acquire(1, 50, never())
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        pool.drain().await;
    }

    /// A sandbox that counts its jobs, and the pool's starts and finished removals.
    struct Counted {
        uses: u32,
        log: Arc<Log>,
    }

    #[derive(Default)]
    struct Log {
        starts: AtomicUsize,
        /// Removals begun, and finished.
        removing: AtomicUsize,
        removed: AtomicUsize,
    }

    impl Warm for Counted {
        type Spec = Arc<Log>;
        async fn start(log: &Arc<Log>) -> Result<Counted, Error> {
            log.starts.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Counted {
                uses: 0,
                log: log.clone(),
            })
        }
        fn can_reuse(&self, recycle_after: u32) -> bool {
            self.uses < recycle_after
        }
        async fn remove(self) {
            self.log.removing.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.log.removed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A sandbox handed out for its last job (`recycle_after`) is replaced while that job
    /// runs, and its removal does not hold up the job's release; the end of the scope
    /// waits for both.
    #[tokio::test]
    async fn a_sandbox_on_its_last_job_is_replaced_while_the_job_runs() {
        let log = Arc::new(Log::default());
        let pool = Pool::<Counted>::new(log.clone());
        // Two jobs per sandbox, one sandbox wanted.
        let (mut c, lease) = pool.acquire(1, 2, never()).await.unwrap();
        c.uses += 1;
        pool.release(c, lease, true).await;
        assert_eq!(log.starts.load(Ordering::SeqCst), 1);
        let (mut c, lease) = pool.acquire(1, 2, never()).await.unwrap();
        tokio::task::yield_now().await;
        // Its second job is its last: the replacement is starting already.
        assert_eq!(
            log.starts.load(Ordering::SeqCst),
            2,
            "no replacement started"
        );
        c.uses += 1;
        pool.release(c, lease, true).await;
        assert_eq!(
            log.removed.load(Ordering::SeqCst),
            0,
            "the release waited for the removal"
        );
        // The next job takes the replacement: no third start, none beside it.
        let (c, lease) = pool.acquire(1, 2, never()).await.unwrap();
        assert_eq!(c.uses, 0);
        assert_eq!(log.starts.load(Ordering::SeqCst), 2);
        assert_eq!(pool.live(), 1);
        pool.release(c, lease, true).await;
        pool.drain().await;
        assert_eq!(log.removed.load(Ordering::SeqCst), 2);
        assert_eq!(pool.live(), 0);
    }

    /// A sandbox that was not proven clean is removed and replaced at once.
    #[tokio::test]
    async fn a_sandbox_not_proven_clean_is_replaced() {
        let log = Arc::new(Log::default());
        let pool = Pool::<Counted>::new(log.clone());
        let (c, lease) = pool.acquire(1, 50, never()).await.unwrap();
        pool.release(c, lease, false).await;
        tokio::task::yield_now().await;
        assert_eq!(
            log.starts.load(Ordering::SeqCst),
            2,
            "no replacement started"
        );
        assert_eq!(pool.live(), 1);
        pool.drain().await;
        assert_eq!(log.removed.load(Ordering::SeqCst), 2);
        assert_eq!(pool.live(), 0);
    }

    /// Told of one job, a pool starts one sandbox however many slots there are, and
    /// removes it when the job is done, not at the end of the run.
    #[tokio::test]
    async fn a_pool_told_of_one_job_starts_one_sandbox_and_frees_it_after() {
        let log = Arc::new(Log::default());
        let pool = Pool::<Counted>::new(log.clone());
        pool.expect(Some(1));
        pool.prewarm(2);
        let (c, lease) = pool.acquire(2, 50, never()).await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            log.starts.load(Ordering::SeqCst),
            1,
            "a sandbox no job takes"
        );
        pool.release(c, lease, true).await;
        tokio::task::yield_now().await;
        assert_eq!(log.removing.load(Ordering::SeqCst), 1, "kept for no job");
        assert_eq!(pool.live(), 0);
        pool.drain().await;
        assert_eq!(log.removed.load(Ordering::SeqCst), 1);
    }

    /// Three jobs on two slots: the first sandbox goes back to the pool for the third job;
    /// the second is removed as its job ends (no job is left for it) while the third runs.
    #[tokio::test]
    async fn a_sandbox_no_job_is_left_for_is_removed_while_the_last_jobs_run() {
        let log = Arc::new(Log::default());
        let pool = Pool::<Counted>::new(log.clone());
        pool.expect(Some(3));
        pool.prewarm(2);
        let (a, la) = pool.acquire(2, 50, never()).await.unwrap();
        let (b, lb) = pool.acquire(2, 50, never()).await.unwrap();
        pool.release(a, la, true).await;
        let (c, lc) = pool.acquire(2, 50, never()).await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(log.removing.load(Ordering::SeqCst), 0, "one left for job 3");
        pool.release(b, lb, true).await;
        tokio::task::yield_now().await;
        assert_eq!(log.removing.load(Ordering::SeqCst), 1, "kept for no job");
        pool.release(c, lc, true).await;
        tokio::task::yield_now().await;
        assert_eq!(log.removing.load(Ordering::SeqCst), 2);
        assert_eq!(log.starts.load(Ordering::SeqCst), 2);
        pool.drain().await;
        assert_eq!(log.removed.load(Ordering::SeqCst), 2);
        assert_eq!(pool.live(), 0);
    }

    /// Jobs that may take more than one sandbox each (None) leave the pool as without an
    /// announcement: `ahead` started, kept to the end of the run.
    #[tokio::test]
    async fn a_pool_told_of_unbounded_jobs_keeps_its_sandboxes() {
        let log = Arc::new(Log::default());
        let pool = Pool::<Counted>::new(log.clone());
        pool.expect(Some(1));
        pool.expect(None);
        pool.prewarm(2);
        let (c, lease) = pool.acquire(2, 50, never()).await.unwrap();
        pool.release(c, lease, true).await;
        tokio::task::yield_now().await;
        assert_eq!(log.starts.load(Ordering::SeqCst), 2);
        assert_eq!(log.removing.load(Ordering::SeqCst), 0);
        pool.drain().await;
        assert_eq!(log.removed.load(Ordering::SeqCst), 2);
    }

    /// A sandbox on its last job (`recycle_after`) is replaced only when a job is left to
    /// take the replacement: the run's last job starts none.
    #[tokio::test]
    async fn the_last_job_starts_no_replacement() {
        let log = Arc::new(Log::default());
        let pool = Pool::<Counted>::new(log.clone());
        pool.expect(Some(2));
        let (mut c, lease) = pool.acquire(1, 1, never()).await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            log.starts.load(Ordering::SeqCst),
            2,
            "one job left: replaced"
        );
        c.uses += 1;
        pool.release(c, lease, true).await;
        let (mut c, lease) = pool.acquire(1, 1, never()).await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            log.starts.load(Ordering::SeqCst),
            2,
            "a replacement no job takes"
        );
        c.uses += 1;
        pool.release(c, lease, true).await;
        pool.drain().await;
        assert_eq!(log.removed.load(Ordering::SeqCst), 2);
        assert_eq!(pool.live(), 0);
    }

    /// The run's announcement may come while its first job starts a sandbox of its own:
    /// that job is not counted twice (as busy and as left), so no second sandbox starts.
    #[tokio::test]
    async fn a_job_starting_its_own_sandbox_is_counted_once() {
        let log = Arc::new(Log::default());
        let pool = Pool::<Counted>::new(log.clone());
        let p = pool.clone();
        let job = tokio::spawn(async move { p.acquire(3, 50, never()).await });
        tokio::task::yield_now().await;
        assert_eq!(log.starts.load(Ordering::SeqCst), 1, "the job's own start");
        pool.expect(Some(1));
        pool.prewarm(3);
        let (c, lease) = job.await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            log.starts.load(Ordering::SeqCst),
            1,
            "a sandbox no job takes"
        );
        pool.release(c, lease, true).await;
        pool.drain().await;
        assert_eq!(log.removed.load(Ordering::SeqCst), 1);
    }
}
