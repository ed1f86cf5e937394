//! The work queue: which router to reconcile next, and when.
//!
//! Modelled on kube-runtime's controller: a scheduler keyed by object (one pending entry per
//! router, so memory is constant per router however chatty Neutron is), a runner that never
//! runs one key twice at once, and an error policy that decides when to retry.
//!
//! - **Coalescing**: a router's pending intents merge to the strongest one,
//!   delete > create > update > poll (Astara's CalcAction, reduced to a max).
//! - **Debounce with a maximum wait**: each mark pushes the run back by `debounce`, but never
//!   beyond `max_debounce` after the first unserved mark, so a chatty router still runs.
//! - **One reconcile per router at a time**; marks that arrive meanwhile wait for the next run.
//! - **Global concurrency cap** on reconciles.
//! - **Backoff**: a failed run retries after an exponential delay with jitter, which resets on
//!   success. Marks during a backoff wait for it to end and are not failures. After
//!   `error_threshold` consecutive failures the router is *in error* and each retry waits
//!   `error_cooldown` instead. A delete does not wait for a backoff: nothing is gained by keeping
//!   a deleted router's appliance alive.
//!
//! [`WorkQueue`] is the pure part (time is passed in); [`run`] drives it on tokio.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a router needs, in increasing strength. The derive order is the precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Intent {
    /// Periodic check (resync).
    Poll,
    /// Something in Neutron changed.
    Update,
    /// The router was created.
    Create,
    /// The router was deleted.
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueSettings {
    pub debounce: Duration,
    pub max_debounce: Duration,
    pub concurrency: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub error_threshold: u32,
    pub error_cooldown: Duration,
}

/// One reconcile to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub router_id: String,
    pub intent: Intent,
}

/// How a reconcile ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Converged or progressing. `requeue_after` asks for another look (e.g. while a server
    /// boots); the resync covers the rest.
    Done { requeue_after: Option<Duration> },
    /// Failed; retried after a backoff.
    Failed { error: String },
    /// The router is gone and everything of it is deleted: forget it.
    Deleted,
}

#[derive(Debug, Default)]
struct Entry {
    pending: Option<Intent>,
    /// When the pending intent may run.
    due: Option<Instant>,
    /// Start of the current debounce window (the first unserved mark).
    window_start: Option<Instant>,
    running: bool,
    failures: u32,
    /// No run before this (backoff or error cooldown), deletes excepted.
    not_before: Option<Instant>,
}

/// The retry state of one router.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetryState {
    pub failures: u32,
    pub in_error: bool,
    pub not_before: Option<Instant>,
}

pub(crate) struct WorkQueue {
    settings: QueueSettings,
    entries: HashMap<String, Entry>,
    running: usize,
    rng: fastrand::Rng,
}

impl WorkQueue {
    pub(crate) fn new(settings: QueueSettings, rng: fastrand::Rng) -> Self {
        WorkQueue {
            settings,
            entries: HashMap::new(),
            running: 0,
            rng,
        }
    }

    /// An event or resync says the router may need work.
    pub(crate) fn mark(&mut self, router_id: &str, intent: Intent, now: Instant) {
        let s = &self.settings;
        let (debounce, max_debounce) = (s.debounce, s.max_debounce);
        let e = self.entries.entry(router_id.to_string()).or_default();
        e.pending = Some(e.pending.map_or(intent, |p| p.max(intent)));
        let start = *e.window_start.get_or_insert(now);
        let debounced = (now + debounce).min(start + max_debounce);
        e.due = Some(gate(e, debounced));
    }

    /// Asks for a run no earlier than `at` (startup jitter, requeue after a boot step). An
    /// earlier pending run is kept.
    pub(crate) fn mark_at(&mut self, router_id: &str, intent: Intent, at: Instant) {
        let e = self.entries.entry(router_id.to_string()).or_default();
        e.pending = Some(e.pending.map_or(intent, |p| p.max(intent)));
        let at = gate(e, at);
        e.due = Some(e.due.map_or(at, |d| d.min(at)));
    }

    /// The next job whose time has come, if the concurrency cap allows one more.
    pub(crate) fn pop_ready(&mut self, now: Instant) -> Option<Job> {
        if self.running >= self.settings.concurrency {
            return None;
        }
        let (id, _) = self
            .entries
            .iter()
            .filter(|(_, e)| !e.running && e.pending.is_some())
            .filter_map(|(id, e)| e.due.filter(|d| *d <= now).map(|d| (id, d)))
            .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)))?;
        let id = id.clone();
        let e = self.entries.get_mut(&id).expect("just found");
        let intent = e.pending.take().expect("filtered on pending");
        e.due = None;
        e.window_start = None;
        e.running = true;
        self.running += 1;
        Some(Job {
            router_id: id,
            intent,
        })
    }

    /// Records how a job ended and schedules what follows.
    pub(crate) fn finish(&mut self, job: &Job, outcome: &Outcome, now: Instant) {
        let Some(e) = self.entries.get_mut(&job.router_id) else {
            return;
        };
        if e.running {
            e.running = false;
            self.running -= 1;
        }
        match outcome {
            Outcome::Done { requeue_after } => {
                e.failures = 0;
                e.not_before = None;
                if let Some(after) = requeue_after {
                    self.mark_at(&job.router_id, Intent::Poll, now + *after);
                }
            }
            Outcome::Deleted => {
                if e.pending.is_none() {
                    self.entries.remove(&job.router_id);
                } else {
                    e.failures = 0;
                    e.not_before = None;
                }
            }
            Outcome::Failed { .. } => {
                e.failures += 1;
                let delay = if e.failures >= self.settings.error_threshold {
                    self.settings.error_cooldown
                } else {
                    backoff(&self.settings, e.failures, &mut self.rng)
                };
                let retry_at = now + delay;
                e.not_before = Some(retry_at);
                // Retry what failed; marks that came during the run keep their (stronger) intent.
                e.pending = Some(e.pending.map_or(job.intent, |p| p.max(job.intent)));
                e.due = Some(gate(e, e.due.unwrap_or(retry_at).max(now)));
            }
        }
    }

    /// When the next pending job becomes due (the driver sleeps until then). None while the
    /// concurrency cap is reached: only a finishing job can make room then.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        if self.running >= self.settings.concurrency {
            return None;
        }
        self.entries
            .values()
            .filter(|e| !e.running && e.pending.is_some())
            .filter_map(|e| e.due)
            .min()
    }
}

impl WorkQueue {
    /// Consecutive failures of a router's reconciles (0 after a success), and whether it is
    /// *in error* (at least `error_threshold` of them: retries wait `error_cooldown`).
    pub(crate) fn failures(&self, router_id: &str) -> (u32, bool) {
        let failures = self.entries.get(router_id).map_or(0, |e| e.failures);
        (failures, failures >= self.settings.error_threshold)
    }
}

/// Introspection for tests.
#[cfg(test)]
impl WorkQueue {
    pub(crate) fn retry_state(&self, router_id: &str) -> Option<RetryState> {
        self.entries.get(router_id).map(|e| RetryState {
            failures: e.failures,
            in_error: e.failures >= self.settings.error_threshold,
            not_before: e.not_before,
        })
    }

    pub(crate) fn running(&self) -> usize {
        self.running
    }
}

/// Holds a run back until the backoff or cooldown ends; deletes do not wait.
fn gate(e: &Entry, at: Instant) -> Instant {
    match (e.pending, e.not_before) {
        (Some(Intent::Delete), _) | (_, None) => at,
        (_, Some(nb)) => at.max(nb),
    }
}

/// `base · 2^(failures-1)`, capped, with "equal jitter": half fixed, half random, so retries of
/// routers that failed together spread out but never come sooner than half the delay.
fn backoff(s: &QueueSettings, failures: u32, rng: &mut fastrand::Rng) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let full = s
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(s.backoff_max);
    let half = full / 2;
    let jitter_ns = rng.u64(0..=half.as_nanos().min(u64::MAX as u128) as u64);
    half + Duration::from_nanos(jitter_ns)
}

/// Runs one reconcile.
pub(crate) trait Reconcile: Send + Sync + 'static {
    fn reconcile(&self, job: Job) -> impl Future<Output = Outcome> + Send;
}

/// A request to mark a router.
#[derive(Debug, Clone)]
pub(crate) struct Mark {
    pub router_id: String,
    pub intent: Intent,
    /// Run no earlier than this (None: debounce from now).
    pub at: Option<Instant>,
}

/// Cloneable sender side of the queue.
#[derive(Clone)]
pub(crate) struct QueueHandle {
    tx: mpsc::UnboundedSender<Mark>,
}

impl QueueHandle {
    pub(crate) fn channel() -> (QueueHandle, mpsc::UnboundedReceiver<Mark>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (QueueHandle { tx }, rx)
    }

    /// Returns false once the queue has stopped taking work.
    pub(crate) fn mark(&self, router_id: &str, intent: Intent) -> bool {
        self.send(router_id, intent, None)
    }

    pub(crate) fn mark_at(&self, router_id: &str, intent: Intent, at: Instant) -> bool {
        self.send(router_id, intent, Some(at))
    }

    fn send(&self, router_id: &str, intent: Intent, at: Option<Instant>) -> bool {
        self.tx
            .send(Mark {
                router_id: router_id.to_string(),
                intent,
                at,
            })
            .is_ok()
    }
}

/// Drives the queue until `shutdown` resolves (or every sender is gone): then it takes no new
/// work, lets running reconciles finish, and abandons those still running at `deadline` after
/// shutdown. `on_finish` sees every outcome (status reporting).
pub(crate) async fn run<R: Reconcile>(
    mut queue: WorkQueue,
    reconciler: Arc<R>,
    mut marks: mpsc::UnboundedReceiver<Mark>,
    shutdown: impl Future<Output = ()>,
    deadline: Duration,
    mut on_finish: impl FnMut(&Job, &Outcome, &WorkQueue),
) {
    tokio::pin!(shutdown);
    let mut inflight: JoinSet<(Job, Outcome)> = JoinSet::new();
    let mut stop_by: Option<Instant> = None;
    loop {
        if stop_by.is_none() {
            while let Some(job) = queue.pop_ready(Instant::now()) {
                let r = Arc::clone(&reconciler);
                inflight.spawn(async move {
                    let outcome = r.reconcile(job.clone()).await;
                    (job, outcome)
                });
            }
        } else if inflight.is_empty() {
            return;
        }
        let next_due = queue.next_due();
        tokio::select! {
            () = &mut shutdown, if stop_by.is_none() => {
                tracing::info!(running = inflight.len(), "stopping intake; finishing running reconciles");
                stop_by = Some(Instant::now() + deadline);
            }
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                match joined {
                    Ok((job, outcome)) => {
                        queue.finish(&job, &outcome, Instant::now());
                        on_finish(&job, &outcome, &queue);
                    }
                    // A panicking reconcile is a bug; its router stays marked running, so it
                    // is never run twice at once, and the panic is reported loudly.
                    Err(e) => tracing::error!(error = %e, "a reconcile task panicked"),
                }
            }
            mark = marks.recv(), if stop_by.is_none() => match mark {
                Some(m) => match m.at {
                    None => queue.mark(&m.router_id, m.intent, Instant::now()),
                    Some(at) => queue.mark_at(&m.router_id, m.intent, at),
                },
                None => stop_by = Some(Instant::now() + deadline),
            },
            () = sleep_until_opt(next_due), if stop_by.is_none() && next_due.is_some() => {}
            () = sleep_until_opt(stop_by), if stop_by.is_some() => {
                tracing::warn!(abandoned = inflight.len(), "shutdown deadline reached");
                inflight.abort_all();
                return;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn settings() -> QueueSettings {
        QueueSettings {
            debounce: Duration::from_secs(1),
            max_debounce: Duration::from_secs(5),
            concurrency: 3,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            error_threshold: 5,
            error_cooldown: Duration::from_secs(120),
        }
    }

    fn queue() -> WorkQueue {
        WorkQueue::new(settings(), fastrand::Rng::with_seed(7))
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn intents_coalesce_to_the_strongest() {
        let t0 = Instant::now();
        for (marks, want) in [
            (vec![Intent::Poll, Intent::Update], Intent::Update),
            (
                vec![Intent::Update, Intent::Create, Intent::Poll],
                Intent::Create,
            ),
            (
                vec![Intent::Create, Intent::Delete, Intent::Update],
                Intent::Delete,
            ),
            (vec![Intent::Poll, Intent::Poll], Intent::Poll),
        ] {
            let mut q = queue();
            for i in marks {
                q.mark("r", i, t0);
            }
            assert_eq!(q.pop_ready(t0 + secs(1.0)).unwrap().intent, want);
            assert!(q.pop_ready(t0 + secs(10.0)).is_none(), "one job per router");
        }
    }

    #[test]
    fn debounce_slides_but_never_past_the_maximum_wait() {
        let t0 = Instant::now();
        let mut q = queue();
        q.mark("r", Intent::Update, t0);
        assert!(q.pop_ready(t0 + secs(0.9)).is_none());
        // A mark every 0.5 s keeps sliding the debounce...
        let mut t = t0;
        while t < t0 + secs(4.5) {
            t += secs(0.5);
            q.mark("r", Intent::Update, t);
            if t < t0 + secs(5.0) {
                assert!(q.pop_ready(t).is_none(), "ran at {:?}", t - t0);
            }
        }
        // ...but the run comes at the maximum wait, 5 s after the first mark.
        assert_eq!(q.next_due(), Some(t0 + secs(5.0)));
        assert!(q.pop_ready(t0 + secs(5.0)).is_some());
    }

    #[test]
    fn one_run_per_router_at_a_time_and_marks_during_a_run_wait() {
        let t0 = Instant::now();
        let mut q = queue();
        q.mark("r", Intent::Update, t0);
        let job = q.pop_ready(t0 + secs(1.0)).unwrap();
        q.mark("r", Intent::Create, t0 + secs(1.5));
        assert!(q.pop_ready(t0 + secs(30.0)).is_none(), "ran twice at once");
        q.finish(
            &job,
            &Outcome::Done {
                requeue_after: None,
            },
            t0 + secs(31.0),
        );
        assert_eq!(q.pop_ready(t0 + secs(31.0)).unwrap().intent, Intent::Create);
    }

    #[test]
    fn concurrency_cap_holds_across_routers() {
        let t0 = Instant::now();
        let mut q = queue();
        for i in 0..5 {
            q.mark(&format!("r{i}"), Intent::Update, t0);
        }
        let t = t0 + secs(1.0);
        let jobs: Vec<Job> = std::iter::from_fn(|| q.pop_ready(t)).collect();
        assert_eq!(jobs.len(), 3);
        assert_eq!(q.running(), 3);
        // Two are due, but at the cap the driver must wait for a finish, not spin on them.
        assert_eq!(q.next_due(), None);
        q.finish(
            &jobs[0],
            &Outcome::Done {
                requeue_after: None,
            },
            t,
        );
        assert!(q.pop_ready(t).is_some());
        assert!(q.pop_ready(t).is_none());
    }

    #[test]
    fn backoff_grows_with_jitter_then_resets_on_success() {
        let s = settings();
        let mut rng = fastrand::Rng::with_seed(1);
        for failures in 1..=8u32 {
            let full = (s.backoff_base * 2u32.pow(failures - 1)).min(s.backoff_max);
            for _ in 0..50 {
                let d = backoff(&s, failures, &mut rng);
                assert!(d >= full / 2 && d <= full, "{failures}: {d:?} vs {full:?}");
            }
        }
        // Jitter actually varies.
        let samples: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff(&s, 4, &mut rng)).collect();
        assert!(samples.len() > 10);

        let t0 = Instant::now();
        let mut q = queue();
        q.mark("r", Intent::Update, t0);
        let mut t = t0 + secs(1.0);
        for n in 1..=3u32 {
            let job = q.pop_ready(t).expect("due");
            q.finish(&job, &Outcome::Failed { error: "x".into() }, t);
            let nb = q.retry_state("r").unwrap().not_before.unwrap();
            let full = settings().backoff_base * 2u32.pow(n - 1);
            assert!(nb - t >= full / 2 && nb - t <= full);
            assert!(q.pop_ready(nb - secs(0.001)).is_none());
            t = nb;
        }
        let job = q.pop_ready(t).unwrap();
        q.finish(
            &job,
            &Outcome::Done {
                requeue_after: None,
            },
            t,
        );
        assert_eq!(q.retry_state("r").unwrap().failures, 0);
        q.mark("r", Intent::Update, t);
        let job = q.pop_ready(t + secs(1.0)).unwrap();
        q.finish(&job, &Outcome::Failed { error: "x".into() }, t + secs(1.0));
        let nb = q.retry_state("r").unwrap().not_before.unwrap();
        assert!(
            nb - (t + secs(1.0)) <= settings().backoff_base,
            "reset to the base"
        );
    }

    #[test]
    fn marks_during_a_backoff_wait_and_are_not_failures() {
        let t0 = Instant::now();
        let mut q = queue();
        q.mark("r", Intent::Poll, t0);
        let job = q.pop_ready(t0 + secs(1.0)).unwrap();
        q.finish(&job, &Outcome::Failed { error: "x".into() }, t0 + secs(1.0));
        let nb = q.retry_state("r").unwrap().not_before.unwrap();
        for k in 0..10 {
            q.mark("r", Intent::Update, t0 + secs(1.0 + k as f64 * 0.05));
        }
        assert_eq!(q.retry_state("r").unwrap().failures, 1);
        assert!(q.pop_ready(nb - secs(0.001)).is_none());
        assert_eq!(q.pop_ready(nb).unwrap().intent, Intent::Update);
    }

    #[test]
    fn after_the_threshold_a_router_in_error_waits_the_cooldown() {
        let t0 = Instant::now();
        let mut q = queue();
        q.mark("r", Intent::Create, t0);
        let mut t = t0 + secs(1.0);
        for _ in 0..settings().error_threshold {
            let job = q.pop_ready(t).unwrap();
            q.finish(
                &job,
                &Outcome::Failed {
                    error: "boot".into(),
                },
                t,
            );
            t = q.retry_state("r").unwrap().not_before.unwrap();
        }
        let state = q.retry_state("r").unwrap();
        assert!(state.in_error);
        // The last wait was the cooldown, and polls do not cut it short.
        let last_fail = state.not_before.unwrap() - settings().error_cooldown;
        q.mark("r", Intent::Poll, last_fail + secs(1.0));
        assert!(q
            .pop_ready(state.not_before.unwrap() - secs(0.001))
            .is_none());
        assert_eq!(
            q.pop_ready(state.not_before.unwrap()).unwrap().intent,
            Intent::Create
        );
    }

    #[test]
    fn a_delete_does_not_wait_for_the_backoff() {
        let t0 = Instant::now();
        let mut q = queue();
        q.mark("r", Intent::Update, t0);
        let job = q.pop_ready(t0 + secs(1.0)).unwrap();
        for _ in 0..5 {
            q.finish(&job, &Outcome::Failed { error: "x".into() }, t0 + secs(1.0));
        }
        q.mark("r", Intent::Delete, t0 + secs(2.0));
        let job = q.pop_ready(t0 + secs(3.0)).unwrap();
        assert_eq!(job.intent, Intent::Delete);
        q.finish(&job, &Outcome::Deleted, t0 + secs(3.0));
        assert!(q.retry_state("r").is_none(), "forgotten after delete");
    }

    #[test]
    fn requeue_after_schedules_a_poll() {
        let t0 = Instant::now();
        let mut q = queue();
        q.mark("r", Intent::Create, t0);
        let job = q.pop_ready(t0 + secs(1.0)).unwrap();
        q.finish(
            &job,
            &Outcome::Done {
                requeue_after: Some(secs(10.0)),
            },
            t0 + secs(1.0),
        );
        assert_eq!(q.next_due(), Some(t0 + secs(11.0)));
        assert!(q.pop_ready(t0 + secs(10.9)).is_none());
        assert_eq!(q.pop_ready(t0 + secs(11.0)).unwrap().intent, Intent::Poll);
    }

    // --- the driver, on tokio's paused clock -------------------------------------------------

    /// Test stand-in for the reconciler: records each run (router, intent, start, end), takes
    /// `work` of virtual time, and fails a router's first `fail_first` runs.
    struct RecordingReconciler {
        work: Duration,
        fail_first: u32,
        runs: Mutex<Vec<(String, Intent, Instant, Instant)>>,
        active: Mutex<HashMap<String, u32>>,
        max_active_total: Mutex<usize>,
    }

    impl RecordingReconciler {
        fn new(work: Duration, fail_first: u32) -> Arc<Self> {
            Arc::new(RecordingReconciler {
                work,
                fail_first,
                runs: Mutex::new(Vec::new()),
                active: Mutex::new(HashMap::new()),
                max_active_total: Mutex::new(0),
            })
        }
    }

    impl Reconcile for RecordingReconciler {
        async fn reconcile(&self, job: Job) -> Outcome {
            let start = Instant::now();
            {
                let mut active = self.active.lock().unwrap();
                let n = active.entry(job.router_id.clone()).or_default();
                *n += 1;
                assert_eq!(*n, 1, "two reconciles of {} at once", job.router_id);
                let total: u32 = active.values().sum();
                let mut max = self.max_active_total.lock().unwrap();
                *max = (*max).max(total as usize);
            }
            tokio::time::sleep(self.work).await;
            *self.active.lock().unwrap().get_mut(&job.router_id).unwrap() -= 1;
            let mut runs = self.runs.lock().unwrap();
            let previous = runs.iter().filter(|r| r.0 == job.router_id).count() as u32;
            runs.push((job.router_id.clone(), job.intent, start, Instant::now()));
            if previous < self.fail_first {
                Outcome::Failed {
                    error: "test failure".into(),
                }
            } else {
                Outcome::Done {
                    requeue_after: None,
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn driver_coalesces_a_burst_caps_concurrency_and_retries() {
        let reconciler = RecordingReconciler::new(secs(2.0), 2);
        let (handle, rx) = QueueHandle::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let t0 = Instant::now();
        let driver = tokio::spawn(run(
            queue(),
            Arc::clone(&reconciler),
            rx,
            async {
                let _ = stop_rx.await;
            },
            secs(30.0),
            |_, _, _| {},
        ));
        // A burst on 6 routers: each router's marks collapse to one run.
        for _ in 0..20 {
            for i in 0..6 {
                handle.mark(&format!("r{i}"), Intent::Update);
            }
            handle.mark("r0", Intent::Create);
        }
        tokio::time::sleep(secs(120.0)).await;
        let runs = reconciler.runs.lock().unwrap().clone();
        // Each router: 2 failures then a success = 3 runs; no run was concurrent per router
        // (asserted inside), and never more than 3 at once overall.
        for i in 0..6 {
            let mine: Vec<_> = runs.iter().filter(|r| r.0 == format!("r{i}")).collect();
            assert_eq!(mine.len(), 3, "r{i}: {mine:?}");
            // Backoff between attempts: at least half the base, then half of twice the base.
            assert!(mine[1].2 - mine[0].3 >= secs(1.0));
            assert!(mine[2].2 - mine[1].3 >= secs(2.0));
            let want = if i == 0 {
                Intent::Create
            } else {
                Intent::Update
            };
            assert!(mine.iter().all(|r| r.1 == want), "retries keep the intent");
        }
        assert_eq!(*reconciler.max_active_total.lock().unwrap(), 3);
        // The first run starts after the debounce, not at the first mark.
        let first = runs.iter().map(|r| r.2).min().unwrap();
        assert_eq!(first - t0, secs(1.0));
        stop_tx.send(()).unwrap();
        driver.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_finishes_running_work_and_takes_no_more() {
        let reconciler = RecordingReconciler::new(secs(10.0), 0);
        let (handle, rx) = QueueHandle::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let outcomes = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&outcomes);
        let driver = tokio::spawn(run(
            queue(),
            Arc::clone(&reconciler),
            rx,
            async {
                let _ = stop_rx.await;
            },
            secs(30.0),
            move |_, _, _| *counted.lock().unwrap() += 1,
        ));
        handle.mark("a", Intent::Update);
        tokio::time::sleep(secs(2.0)).await; // "a" is running now
        handle.mark("b", Intent::Update); // due at 3 s, after the stop
        stop_tx.send(()).unwrap();
        driver.await.unwrap();
        let runs = reconciler.runs.lock().unwrap().clone();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0].0, "a");
        assert_eq!(*outcomes.lock().unwrap(), 1);
        assert!(!handle.mark("c", Intent::Update), "intake closed");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_deadline_abandons_a_hung_reconcile() {
        let reconciler = RecordingReconciler::new(secs(3600.0), 0);
        let (handle, rx) = QueueHandle::channel();
        let t0 = Instant::now();
        let driver = tokio::spawn(run(
            queue(),
            Arc::clone(&reconciler),
            rx,
            tokio::time::sleep(secs(5.0)),
            secs(30.0),
            |_, _, _| {},
        ));
        handle.mark("a", Intent::Update);
        driver.await.unwrap();
        assert_eq!(Instant::now() - t0, secs(35.0));
        assert!(reconciler.runs.lock().unwrap().is_empty());
    }
}
