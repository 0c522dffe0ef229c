//! The supervisor against real probes: ones that fail, panic or run until stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::imdb::TableMeta;
use crate::probes::ProbeFuture;
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails `fail_first` times, then runs until stopped.
struct Flaky {
    runs: Arc<AtomicU32>,
    fail_first: u32,
}

impl Probe for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn tables(&self) -> Vec<TableMeta> {
        Vec::new()
    }
    fn run(&self, mut ctx: ProbeContext) -> ProbeFuture {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = n <= self.fail_first;
        Box::pin(async move {
            if fail {
                anyhow::bail!("boom {n}");
            }
            ctx.state.running();
            let _ = ctx.stop.wait_for(|s| *s).await;
            Ok(())
        })
    }
}

fn manager(policy: Policy) -> (Manager, Arc<SelfMetrics>, mpsc::Receiver<Batch>) {
    let (tx, rx) = mpsc::channel(1);
    let metrics = Arc::new(SelfMetrics::new());
    (
        Manager::with_policy(tx, Arc::clone(&metrics), Duration::ZERO, policy),
        metrics,
        rx,
    )
}

fn fast(max: u32) -> Policy {
    Policy {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        max_quick_failures: max,
        stable_after: Duration::from_mins(1),
        stop_timeout: Duration::from_secs(5),
    }
}

async fn until(m: &Manager, want: State) -> String {
    for _ in 0..500 {
        if let Some((s, why)) = m.state("flaky")
            && s == want
        {
            return why;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never reached {want:?}: {:?}", m.state("flaky"));
}

#[tokio::test]
async fn restarts_with_backoff_then_runs() {
    let (m, metrics, _rx) = manager(fast(5));
    let runs = Arc::new(AtomicU32::new(0));
    m.add(
        Arc::new(Flaky {
            runs: Arc::clone(&runs),
            fail_first: 3,
        }),
        Duration::from_secs(1),
    );
    m.start("flaky").unwrap();
    until(&m, State::Running).await;
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert_eq!(
        metrics.counter(PROBE_RESTARTS, &[("probe", "flaky")]).get(),
        3
    );
    m.stop("flaky").await.unwrap();
    assert_eq!(m.state("flaky").unwrap().0, State::Stopped);
}

#[tokio::test]
async fn gives_up_after_quick_failures_with_the_reason() {
    let (m, metrics, _rx) = manager(fast(3));
    let runs = Arc::new(AtomicU32::new(0));
    m.add(
        Arc::new(Flaky {
            runs: Arc::clone(&runs),
            fail_first: 100,
        }),
        Duration::from_secs(1),
    );
    m.start("flaky").unwrap();
    assert_eq!(until(&m, State::Failed).await, "boom 3");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let mut out = String::new();
    metrics.render(&mut out);
    assert!(
        out.contains("gopher_probe_restarts_total{probe=\"flaky\"} 2\n"),
        "{out}"
    );
    assert!(out.contains("gopher_probe_last_failure_info{probe=\"flaky\",reason=\"boom 3\"} 1\n"));
    assert!(out.contains("gopher_probe_state{probe=\"flaky\",state=\"failed\"} 1\n"));
    // Starting again gives it a fresh set of attempts.
    m.start("flaky").unwrap();
    until(&m, State::Failed).await;
    assert_eq!(runs.load(Ordering::SeqCst), 6);
    m.stop("flaky").await.unwrap();
    assert_eq!(m.state("flaky").unwrap().0, State::Stopped);
}

#[tokio::test]
async fn stop_during_backoff_is_prompt() {
    let mut policy = fast(5);
    policy.backoff_initial = Duration::from_secs(30);
    let (m, _metrics, _rx) = manager(policy);
    m.add(
        Arc::new(Flaky {
            runs: Arc::new(AtomicU32::new(0)),
            fail_first: 100,
        }),
        Duration::from_secs(1),
    );
    m.start("flaky").unwrap();
    while m.state("flaky").unwrap().1.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        m.state("flaky").unwrap(),
        (State::Starting, "boom 1".into())
    );
    let t = Instant::now();
    m.stop("flaky").await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(m.state("flaky").unwrap().0, State::Stopped);
}

/// Panics in its future on the first run, while building its future on the second, then runs
/// until stopped.
struct Panicky {
    runs: Arc<AtomicU32>,
}

impl Probe for Panicky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn tables(&self) -> Vec<TableMeta> {
        Vec::new()
    }
    fn run(&self, mut ctx: ProbeContext) -> ProbeFuture {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(n != 2, "no future for run {n}");
        Box::pin(async move {
            tokio::task::yield_now().await;
            if n == 1 {
                let v: Vec<u32> = Vec::new();
                // An index out of bounds, as a bug would: the probe's task unwinds.
                let _ = v[n as usize];
            }
            ctx.state.running();
            let _ = ctx.stop.wait_for(|s| *s).await;
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_panicking_probe_is_restarted_and_counted() {
    let (m, metrics, _rx) = manager(fast(5));
    let runs = Arc::new(AtomicU32::new(0));
    m.add(
        Arc::new(Panicky {
            runs: Arc::clone(&runs),
        }),
        Duration::from_secs(1),
    );
    let mut out = String::new();
    metrics.render(&mut out);
    assert!(
        out.contains("gopher_probe_panics_total{probe=\"flaky\"} 0\n"),
        "{out}"
    );
    m.start("flaky").unwrap();
    until(&m, State::Running).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(
        metrics.counter(PROBE_PANICS, &[("probe", "flaky")]).get(),
        2
    );
    assert_eq!(
        metrics.counter(PROBE_RESTARTS, &[("probe", "flaky")]).get(),
        2
    );
    let status = m.status("flaky").unwrap();
    assert_eq!(status.last_error, "panicked: no future for run 2");
    let mut out = String::new();
    metrics.render(&mut out);
    assert!(
        out.contains(
            "gopher_probe_last_failure_info{probe=\"flaky\",reason=\"panicked: no future for run 2\"} 1\n"
        ),
        "{out}"
    );
    // The supervisor is alive and registered with the watchdog while the probe runs.
    assert_eq!(m.liveness().names(), ["probe flaky"]);
    assert!(m.liveness().stuck().is_empty());
    m.stop("flaky").await.unwrap();
    assert_eq!(m.state("flaky").unwrap().0, State::Stopped);
    // A stopped probe is not a stuck loop: it left the watchdog's list.
    assert!(m.liveness().names().is_empty());
}
