//! Keeping the agent's long-running tasks alive, and knowing when they are not.
//!
//! Three pieces, used by the probe manager and by `main` for the /metrics server, the ingest
//! task (probe rows into the store) and the Kafka sink:
//!
//! - [`CatchUnwind`]: a panic inside a task's future becomes an `Err` with the panic message,
//!   seen by whoever supervises the task, instead of silently ending the tokio task. This relies
//!   on the release profile unwinding on panic (Cargo's default; the workspace does not set
//!   `panic = "abort"`).
//! - [`Liveness`] and [`Heartbeat`]: each main loop registers a heartbeat with a bound and beats
//!   it while it makes progress; the systemd watchdog (`service::notify`) pings only while every
//!   registered heartbeat is fresh, so a stuck loop gets the agent restarted. A heartbeat that is
//!   dropped unregisters itself (a stopped probe is not "stuck").
//! - [`Beating`]: beats a heartbeat each time the wrapped future's poll returns, and wakes itself
//!   on its own tick so that an idle loop (no rows because no probes) still counts as alive. A
//!   poll that never returns (a thread blocked on a lock, an endless computation) stops the
//!   beats. That is the failure a loop whose only awaits are "wait for work" can have; a loop
//!   that can also wait on work it started (the Kafka pass) beats after each pass instead.
//!
//! [`Restarts`] is the back-off and quick-failure budget of a supervised task, shared by the
//! tasks the agent restarts; the probe manager has its own (probes have states to publish). Both
//! follow one [`Policy`].
//!
//! A room of its own below probes, egress and the service glue: everything that supervises uses
//! it, and it uses nothing of theirs.

use std::{
    any::Any,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

use crate::telemetry::{Counter, SelfMetrics, TASK_RESTARTS};

/// How a supervisor restarts what ends on its own: probes (the probe manager) and the agent's
/// own tasks ([`Restarts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Quick failures in a row after which the probe is left `failed`; 1 = never restart.
    pub max_quick_failures: u32,
    /// A run at least this long is not a quick failure: it resets the count and the back-off.
    pub stable_after: Duration,
    /// How long [`Manager::stop`] waits for a probe to let go before aborting its task.
    pub stop_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_mins(1),
            max_quick_failures: 5,
            stable_after: Duration::from_mins(1),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// What a panic carried, as text (`panic!` with a literal or a format string gives one of the
/// two string types; anything else has no readable message).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// Runs a future, turning a panic in any of its polls into `Err(message)`. The future is
/// dropped at the panic (its resources are released by unwinding), so the caller restarts it
/// from scratch; state it shares behind `std` mutexes may be poisoned, which every lock in the
/// agent tolerates (`PoisonError::into_inner`).
pub struct CatchUnwind<F> {
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> CatchUnwind<F> {
    pub fn new(future: F) -> Self {
        Self {
            inner: Some(Box::pin(future)),
        }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err("polled after completion".to_owned()));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                self.inner = None;
                Poll::Ready(Ok(v))
            }
            Err(payload) => {
                self.inner = None;
                Poll::Ready(Err(panic_message(payload.as_ref())))
            }
        }
    }
}

/// One loop's proof of life: the last time it made progress, and how long it may go without.
#[derive(Debug)]
struct Beat {
    name: String,
    bound: Duration,
    /// Milliseconds since the registry's origin.
    last_ms: AtomicU64,
    origin: Instant,
}

/// A loop's handle on its heartbeat; cheap to clone. When the last clone is dropped the loop
/// leaves the registry.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<Beat>);

impl Heartbeat {
    /// The loop made progress now.
    pub fn beat(&self) {
        let ms = self.0.origin.elapsed().as_millis() as u64;
        self.0.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }
}

/// The registry of heartbeats the watchdog checks; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Liveness {
    origin: Instant,
    beats: Arc<Mutex<Vec<Weak<Beat>>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

/// A loop that has not made progress within its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub name: String,
    /// Time since its last beat.
    pub since: Duration,
}

impl Liveness {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            beats: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Registers a loop, alive as of now, that must beat at least every `bound`.
    pub fn register(&self, name: impl Into<String>, bound: Duration) -> Heartbeat {
        let beat = Arc::new(Beat {
            name: name.into(),
            bound,
            last_ms: AtomicU64::new(0),
            origin: self.origin,
        });
        let hb = Heartbeat(beat);
        hb.beat();
        self.beats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&hb.0));
        hb
    }

    /// Every registered loop that is past its bound, forgetting loops that went away.
    pub fn stuck(&self) -> Vec<Stuck> {
        let now_ms = self.origin.elapsed().as_millis() as u64;
        let mut beats = self.beats.lock().unwrap_or_else(PoisonError::into_inner);
        beats.retain(|w| w.strong_count() > 0);
        beats
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|b| {
                let since =
                    Duration::from_millis(now_ms.saturating_sub(b.last_ms.load(Ordering::Relaxed)));
                (since > b.bound).then(|| Stuck {
                    name: b.name.clone(),
                    since,
                })
            })
            .collect()
    }

    /// Names of the registered loops (sorted), for logs and tests.
    pub fn names(&self) -> Vec<String> {
        let beats = self.beats.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = beats
            .iter()
            .filter_map(Weak::upgrade)
            .map(|b| b.name.clone())
            .collect();
        names.sort();
        names
    }
}

/// How often a [`Beating`] future wakes itself to beat while idle. Bounds are many ticks long.
pub const TICK: Duration = Duration::from_secs(1);

/// How long a loop beaten by [`Beating`] may go without a completed poll before the watchdog
/// stops pinging. Far above any poll the agent makes (a sock_diag dump of 100 k sockets, a
/// scrape's snapshot under the store lock take well under a second), far below "stuck for good".
pub const STALL_BOUND: Duration = Duration::from_mins(1);

/// A future that beats `heartbeat` every time its poll returns (see the module doc).
pub struct Beating<F> {
    inner: Pin<Box<F>>,
    heartbeat: Heartbeat,
    tick: Duration,
    /// Made at the first poll, so that the future can be built outside a runtime.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<F: Future> Beating<F> {
    pub fn new(future: F, heartbeat: Heartbeat, tick: Duration) -> Self {
        Self {
            inner: Box::pin(future),
            heartbeat,
            tick,
            sleep: None,
        }
    }
}

impl<F: Future> Future for Beating<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if let Poll::Ready(v) = this.inner.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        // The poll returned: the task is not blocked. Idle or busy, it is alive.
        this.heartbeat.beat();
        // Re-arm until the timer is pending, which registers this task's waker with it.
        let tick = this.tick;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(tick)));
        while sleep.as_mut().poll(cx).is_ready() {
            sleep.as_mut().reset(Instant::now() + tick);
        }
        Poll::Pending
    }
}

/// The restart budget of one supervised task: back-off doubling from
/// `policy.backoff_initial` to `policy.backoff_max`, reset by a run of `policy.stable_after`;
/// `policy.max_quick_failures` quick failures in a row and the task is given up (the caller
/// then stops the agent with a failure status, for systemd to restart it whole).
pub struct Restarts {
    task: &'static str,
    policy: Policy,
    counter: Counter,
    backoff: Duration,
    quick: u32,
    began: Instant,
    heartbeat: Option<Heartbeat>,
}

impl Restarts {
    pub fn new(task: &'static str, policy: Policy, metrics: &SelfMetrics) -> Self {
        Self {
            task,
            policy,
            // Created at 0 so that the first restart shows in increase().
            counter: metrics.counter(TASK_RESTARTS, &[("task", task)]),
            backoff: policy.backoff_initial,
            quick: 0,
            began: Instant::now(),
            heartbeat: None,
        }
    }

    /// Beats `heartbeat` during the back-off (waiting to restart is not being stuck); for a
    /// task whose heartbeat is beaten by its loop rather than by [`Beating`].
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// A run begins.
    pub fn started(&mut self) {
        self.began = Instant::now();
    }

    /// The run ended without being asked to (`why`: a panic's message, an error). Logs it,
    /// waits out the back-off and returns `Ok` to restart, or `Err` with the reason when the
    /// budget is spent.
    pub async fn failed(&mut self, why: &str) -> Result<(), String> {
        if self.began.elapsed() >= self.policy.stable_after {
            self.quick = 0;
            self.backoff = self.policy.backoff_initial;
        }
        self.quick += 1;
        let task = self.task;
        if self.quick >= self.policy.max_quick_failures {
            tracing::error!(
                task,
                "{task} task failed {} times in a row; giving up: {why}",
                self.quick
            );
            return Err(format!(
                "{task} task failed {} times in a row: {why}",
                self.quick
            ));
        }
        tracing::error!(
            task,
            "{task} task ended: {why}; restarting in {:?}",
            self.backoff
        );
        let until = Instant::now() + self.backoff;
        while Instant::now() < until {
            if let Some(hb) = &self.heartbeat {
                hb.beat();
            }
            tokio::time::sleep_until(until.min(Instant::now() + TICK)).await;
        }
        self.backoff = (self.backoff * 2).min(self.policy.backoff_max);
        self.counter.inc();
        self.started();
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_message() {
        let n = 7;
        let r = CatchUnwind::new(async move {
            tokio::task::yield_now().await;
            assert!(n != 7, "probe blew up at {n}");
            1
        })
        .await;
        assert_eq!(r, Err("probe blew up at 7".to_owned()));
        assert_eq!(CatchUnwind::new(async { 5 }).await, Ok(5));
        let r: Result<(), String> = CatchUnwind::new(async { std::panic::panic_any(42_u8) }).await;
        assert_eq!(r, Err("panic with a non-text payload".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_go_stale_after_their_bound_and_leave_when_dropped() {
        let live = Liveness::new();
        let a = live.register("a", Duration::from_secs(3));
        let b = live.register("b", Duration::from_secs(10));
        assert_eq!(live.names(), ["a", "b"]);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let stuck = live.stuck();
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!(stuck[0].name, "a");
        assert!(stuck[0].since >= Duration::from_secs(4));
        a.beat();
        assert!(live.stuck().is_empty());
        drop(b);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(live.names(), ["a"]);
        assert_eq!(live.stuck().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_beating_future_stays_alive_on_its_own_tick() {
        let live = Liveness::new();
        let hb = live.register("idle", Duration::from_secs(3));
        // Waits for something that never comes, like ingest with no probes.
        let (_tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let idle = tokio::spawn(Beating::new(async move { rx.recv().await }, hb, TICK));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(live.stuck().is_empty(), "{:?}", live.stuck());
        }
        idle.abort();
    }

    /// The loop runs on a runtime of its own thread: a worker blocked in a poll can also stall
    /// the timers of the runtime it is on, and the test needs its own clock to go on.
    #[test]
    fn a_blocked_poll_stops_the_beats() {
        let live = Liveness::new();
        let hb = live.register("blocked", Duration::from_millis(300));
        let lock = Arc::new(std::sync::Mutex::new(()));
        let held = lock.lock().unwrap();
        let l = Arc::clone(&lock);
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(Beating::new(
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // A std lock held elsewhere: this poll does not return until it is released.
                    drop(l.lock().unwrap());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                },
                hb,
                Duration::from_millis(50),
            ));
        });
        std::thread::sleep(Duration::from_millis(700));
        let stuck = live.stuck();
        assert_eq!(stuck.len(), 1, "a blocked loop must show as stuck");
        assert!(stuck[0].since >= Duration::from_millis(500), "{stuck:?}");
        drop(held);
        std::thread::sleep(Duration::from_millis(150));
        assert!(live.stuck().is_empty(), "{:?}", live.stuck());
        worker.join().unwrap();
    }
}
