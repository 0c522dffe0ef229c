//! One `/metrics` render, shared by the scrapes that arrive together, streamed in bounded
//! pieces.
//!
//! A render starts *pending*: it takes the store lock just long enough to age out stale
//! records, mirror the store's counters into the self-metrics and take a snapshot (shared
//! record bytes, no copy), and every scrape that arrives meanwhile joins it. Once the snapshot
//! is taken the render picks how to stream, from who joined:
//!
//! - **direct**: one scrape alone, while no other direct render runs (the usual Prometheus
//!   scrape) gets the body straight from the renderer (gzip-compressed on the way if it asked),
//!   32 KiB at a time, with the client's own pace as back-pressure; nothing is kept. The render
//!   is not joinable from then on: a scrape that arrives during it starts the next render,
//!   which is shared, so that a burst of scrapes costs at most two renders at once.
//! - **shared**: anything else (several scrapes, or one during a direct render). The text is
//!   gzip-compressed as it comes (level 1) and the compressed pieces are kept until the render
//!   ends, so a scrape arriving at any point of it joins and streams the same pieces from the
//!   start. Only compressed bytes are kept (800 k samples: ~8 MB of ~150 MB of text). Plain
//!   scrapes that were there from the start get the text directly, as long as they keep up;
//!   one that falls behind (its queue is full) is not waited for: it goes on from the kept
//!   pieces, inflating them on its own blocking thread and skipping what it already had, so
//!   no client can stall the render for the others. Late plain joiners inflate the same way.
//!
//! In both, gzip is deflated on a second thread while the text is rendered (`pipe`): deflate
//! costs about what the render does, so a gzip scrape takes about the longer of the two, not
//! their sum.
//!
//! Scrapes join only a render of the exposition format they negotiated (text or OpenMetrics:
//! one joinable render per format).
//!
//! No cache: every scrape sees records at least as fresh as its arrival.
//! `gopher_scrape_renders_total` counts renders, `gopher_scrapes_total{encoding}` the answers.
//! A body that cannot be completed ends with an error, so that the client sees a cut
//! connection rather than a short body that looks whole.

use std::io::{self, Write as _};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::{GzDecoder, GzEncoder};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::prometheus::{self, Format};
use super::store_counts::sync_from_store;

mod direct;
mod pipe;

use direct::Direct;
use tokio::sync::Semaphore;

use crate::imdb::Store;
use crate::telemetry::{
    HTTP_REFUSED, HTTP_REFUSED_REASONS, SCRAPE_DURATION, SCRAPE_RENDERS, SelfMetrics,
};

/// `/metrics` bodies streaming at once (each holds a snapshot and a blocking thread); one
/// more is answered 503. Scrapers need one each; the rest is headroom for abuse.
pub const MAX_SCRAPES: usize = 40;

/// What the endpoint reads from.
pub struct WebState {
    pub store: Arc<Mutex<Store>>,
    pub metrics: Arc<SelfMetrics>,
    /// Milliseconds on the same clock the store's records are stamped with (the agent's
    /// monotonic clock, `crate::clock::mono_ms`); used to age records out at scrape time.
    pub clock: fn() -> u64,
    /// The render scrapes can join, if any (single flight).
    pub(super) current: Current,
    /// Slots of the `/metrics` bodies streaming ([`MAX_SCRAPES`]).
    pub(super) scrapes: Arc<Semaphore>,
    /// TLS and basic auth (web_config_file); none by default.
    pub(super) security: super::http::Security,
    /// Family and label names (`[web_server] metric_names`).
    pub naming: prometheus::Naming,
}

impl WebState {
    pub fn new(store: Arc<Mutex<Store>>, metrics: Arc<SelfMetrics>, clock: fn() -> u64) -> Self {
        // Every reason exists from the start, at 0, so that increase() sees the first one.
        for reason in HTTP_REFUSED_REASONS {
            metrics.counter(HTTP_REFUSED, &[("reason", reason)]);
        }
        Self {
            store,
            metrics,
            clock,
            current: Current::default(),
            scrapes: Arc::new(Semaphore::new(MAX_SCRAPES)),
            security: super::http::Security::default(),
            naming: prometheus::Naming::Gopher,
        }
    }

    /// Serves with TLS and/or basic auth.
    #[must_use]
    pub fn secured(mut self, security: super::http::Security) -> Self {
        self.security = security;
        self
    }

    /// The same state, naming families and labels `naming`'s way.
    #[must_use]
    pub fn with_naming(mut self, naming: prometheus::Naming) -> Self {
        self.naming = naming;
        self
    }

    pub(super) fn refused(&self, reason: &str) -> crate::telemetry::Counter {
        self.metrics.counter(HTTP_REFUSED, &[("reason", reason)])
    }
}

/// Compressed bytes gathered before they are published to the scrapes streaming them.
const PIECE_BYTES: usize = 32 * 1024;
/// Pieces a scrape's connection may have queued ahead of the client.
pub(super) const STREAM_AHEAD: usize = 4;
/// Piece size of a lone plain scrape's body: larger, because its text is ~20× the compressed
/// bytes and each piece costs a hand-off to the connection's task and a write (at 800 k
/// samples, 32 KiB pieces meant ~4,700 of each); `STREAM_AHEAD` of them is still ~1 MiB.
const DIRECT_PLAIN_PIECE: usize = 256 * 1024;
/// How long a shared render waits for a plain scrape it feeds directly to take the next piece
/// before that scrape goes on from the kept pieces instead.
const KEEP_UP: Duration = Duration::from_millis(200);

/// What a scrape's body is made of; an error cuts the connection.
pub(super) type Chunk = Result<Bytes, io::Error>;

/// The render scrapes can join, if any (single flight), and how many direct renders run.
#[derive(Default)]
pub(super) struct Current(Mutex<Renders>);

#[derive(Default)]
pub(super) struct Renders {
    /// Per format ([`slot`]).
    joinable: [Option<Arc<Render>>; 2],
    direct: usize,
}

/// The index of a format's joinable render.
fn slot(format: Format) -> usize {
    match format {
        Format::Text => 0,
        Format::OpenMetrics => 1,
    }
}

impl Renders {
    /// Makes `render` no longer joinable, if it still was.
    fn unjoin(&mut self, render: &Arc<Render>) {
        let joinable = &mut self.joinable[slot(render.format)];
        if joinable.as_ref().is_some_and(|r| Arc::ptr_eq(r, render)) {
            *joinable = None;
        }
    }
}

impl Current {
    fn lock(&self) -> MutexGuard<'_, Renders> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Subscriber {
    gzip: bool,
    tx: mpsc::Sender<Chunk>,
}

/// One render: who waits for it while it is pending, and its compressed pieces once shared.
#[derive(Default)]
pub(super) struct Render {
    state: Mutex<RenderState>,
    grew: Condvar,
    format: Format,
}

#[derive(Default)]
struct RenderState {
    pending: Vec<Subscriber>,
    shared: bool,
    pieces: Vec<Bytes>,
    done: bool,
    failed: bool,
}

impl Render {
    fn lock(&self) -> MutexGuard<'_, RenderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, piece: Option<Bytes>, done: bool, failed: bool) {
        let mut s = self.lock();
        s.pieces.extend(piece);
        s.done |= done;
        s.failed |= failed;
        self.grew.notify_all();
    }

    /// Piece `i`, waiting for it; `Err(failed)` once the render ended without it.
    fn piece(&self, i: usize) -> Result<Bytes, bool> {
        let mut s = self.lock();
        loop {
            if let Some(b) = s.pieces.get(i) {
                return Ok(b.clone());
            }
            if s.done {
                return Err(s.failed);
            }
            s = self.grew.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Whether the render has ended (pieces or not).
    #[cfg(test)]
    pub(super) fn wait_done(&self) -> usize {
        let mut i = 0;
        while self.piece(i).is_ok() {
            i += 1;
        }
        i
    }
}

/// Joins the render in progress, or starts one on the blocking pool; the body arrives on the
/// returned channel. Call on the runtime. (Text format: the tests' shorthand.)
#[cfg(test)]
pub(super) fn join_or_start(
    state: &Arc<WebState>,
    gzip: bool,
) -> (Arc<Render>, mpsc::Receiver<Chunk>) {
    join_or_start_as(state, gzip, Format::Text)
}

/// [`join_or_start`] for a scrape that negotiated `format`: it joins only a render of it.
pub(super) fn join_or_start_as(
    state: &Arc<WebState>,
    gzip: bool,
    format: Format,
) -> (Arc<Render>, mpsc::Receiver<Chunk>) {
    let (tx, rx) = mpsc::channel(STREAM_AHEAD);
    let mut current = state.current.lock();
    if let Some(render) = current.joinable[slot(format)].as_ref() {
        let render = Arc::clone(render);
        let mut s = render.lock();
        if !s.shared {
            s.pending.push(Subscriber { gzip, tx });
            drop(s);
            return (Arc::clone(&render), rx);
        }
        drop(s);
        drop(current);
        let replaying = Arc::clone(&render);
        tokio::task::spawn_blocking(move || replay(&replaying, gzip, &tx, 0));
        return (render, rx);
    }
    let render = Arc::new(Render {
        format,
        ..Render::default()
    });
    render.lock().pending.push(Subscriber { gzip, tx });
    current.joinable[slot(format)] = Some(Arc::clone(&render));
    drop(current);
    let (state, producing) = (Arc::clone(state), Arc::clone(&render));
    tokio::task::spawn_blocking(move || produce(&state, &producing));
    (render, rx)
}

/// Snapshot, then render to the scrapes that joined meanwhile (and later ones, if shared).
/// Blocking.
fn produce(state: &WebState, render: &Arc<Render>) {
    let started = Instant::now();
    let mut ending = Ending {
        state,
        render,
        direct: false,
    };
    let snapshot = {
        // A probe thread that panicked mid-upsert leaves a store that is still well-formed
        // (every mutation is a single map operation), so keep serving it.
        let mut store = state.store.lock().unwrap_or_else(PoisonError::into_inner);
        store.expire((state.clock)());
        sync_from_store(&store, &state.metrics);
        store.snapshot()
    };
    // Outside the store's lock: /proc reads, once per render.
    crate::telemetry::process::refresh(&state.metrics);
    state.metrics.counter(SCRAPE_RENDERS, &[]).inc();
    let (subscribers, direct) = {
        let mut current = state.current.lock();
        let mut s = render.lock();
        let subscribers = std::mem::take(&mut s.pending);
        // Direct only while no other render runs: a scrape arriving meanwhile starts a shared
        // render that all later ones join, so at most two run at once.
        let direct = subscribers.len() == 1 && current.direct == 0;
        if direct {
            // No one can join any more.
            current.direct += 1;
            ending.direct = true;
            current.unjoin(render);
        } else {
            s.shared = true;
        }
        (subscribers, direct)
    };
    match subscribers.as_slice() {
        [Subscriber { gzip, tx }] if direct => {
            let piece = if *gzip {
                PIECE_BYTES
            } else {
                DIRECT_PLAIN_PIECE
            };
            let mut out = Direct {
                tx,
                piece,
                buf: Vec::with_capacity(piece + PIECE_BYTES),
            };
            let result = if *gzip {
                pipe::compress_alongside(GzEncoder::new(out, Compression::fast()), |pipe| {
                    prometheus::render_format_to(
                        &snapshot,
                        &state.metrics,
                        &state.naming,
                        render.format,
                        pipe,
                    )
                })
                .and_then(Direct::finish)
            } else {
                prometheus::render_format_to(
                    &snapshot,
                    &state.metrics,
                    &state.naming,
                    render.format,
                    &mut out,
                )
                .and_then(|()| out.finish())
            };
            if let Err(err) = result
                && err.kind() != io::ErrorKind::BrokenPipe
            {
                tracing::error!(%err, "rendering metrics failed");
                let _ = tx.blocking_send(Err(err));
            }
        }
        _ => shared(state, render, &snapshot, subscribers),
    }
    state
        .metrics
        .gauge(SCRAPE_DURATION, &[])
        .set(started.elapsed().as_secs_f64());
}

/// Ends a render however [`produce`] ends, a panic included: it can no longer be joined, a
/// direct one no longer counts, and the scrapes waiting for it see it end (with an error if it
/// panicked) rather than wait forever.
struct Ending<'a> {
    state: &'a WebState,
    render: &'a Arc<Render>,
    direct: bool,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        {
            let mut current = self.state.current.lock();
            current.unjoin(self.render);
            if self.direct {
                current.direct = current.direct.saturating_sub(1);
            }
        }
        let pending = std::mem::take(&mut self.render.lock().pending);
        for sub in pending {
            let _ = sub
                .tx
                .try_send(Err(io::Error::other("rendering metrics failed")));
        }
        self.render.publish(None, true, failed);
        trim_heap();
    }
}

/// Gives the pages a render freed back to the system. A render's pieces are allocated on a
/// blocking-pool thread and freed on the runtime's, so glibc keeps them in that thread's arena,
/// pinned by whatever else lands there meanwhile: at 100 k links the agent's RSS then stays
/// ~30 MB above where it was before the scrape. Measured at 100 k links (bench/scale.sh): RSS
/// after the quiet window 155 MB without the trim, 66 MB with it, scrape times within noise.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Renders once for several scrapes (see the module doc). Blocking.
fn shared(
    state: &WebState,
    render: &Arc<Render>,
    snapshot: &crate::imdb::Snapshot,
    subscribers: Vec<Subscriber>,
) {
    let mut plain = Vec::new();
    for sub in subscribers {
        if sub.gzip {
            let replaying = Arc::clone(render);
            // On the blocking pool of the runtime the producer runs on.
            tokio::task::spawn_blocking(move || replay(&replaying, true, &sub.tx, 0));
        } else {
            plain.push((sub.tx, 0));
        }
    }
    let gz = GzEncoder::new(
        Publisher {
            render,
            buf: Vec::with_capacity(PIECE_BYTES * 2),
        },
        Compression::fast(),
    );
    let mut left = Vec::new();
    let result = pipe::compress_alongside(gz, |pipe| {
        let mut fanout = Fanout {
            render,
            plain,
            gz: pipe,
        };
        let rendered = prometheus::render_format_to(
            snapshot,
            &state.metrics,
            &state.naming,
            render.format,
            &mut fanout,
        );
        left = fanout.plain;
        rendered
    });
    let plain = left;
    let (last, failed) = match result {
        Ok(mut publisher) => {
            let rest = std::mem::take(&mut publisher.buf);
            ((!rest.is_empty()).then(|| Bytes::from(rest)), false)
        }
        Err(err) => {
            // Writing into memory does not fail; if it ever did, the clients get a cut body.
            tracing::error!(%err, "rendering metrics failed");
            (None, true)
        }
    };
    // No longer joinable before it is complete: a scrape arriving from now on renders anew.
    state.current.lock().unjoin(render);
    render.publish(last, true, failed);
    if failed {
        for (tx, _) in plain {
            let _ = tx.blocking_send(Err(io::Error::other("rendering metrics failed")));
        }
    }
}

/// A shared render's sink: the text to the plain scrapes that keep up, and to `gz`, which
/// compresses it for the rest.
struct Fanout<'a, G> {
    render: &'a Arc<Render>,
    /// Plain scrapes fed directly, with the text bytes each has had.
    plain: Vec<(mpsc::Sender<Chunk>, usize)>,
    gz: G,
}

impl<G: io::Write> io::Write for Fanout<'_, G> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.gz.write_all(data)?;
        if !self.plain.is_empty() {
            let text = Bytes::copy_from_slice(data);
            let render = self.render;
            self.plain.retain_mut(|(tx, sent)| {
                let kept = match tx.try_send(Ok(text.clone())) {
                    Ok(()) => true,
                    Err(TrySendError::Closed(_)) => return false,
                    Err(TrySendError::Full(chunk)) => send_within(tx, chunk, KEEP_UP),
                };
                if kept {
                    *sent += text.len();
                } else if !tx.is_closed() {
                    // Falls behind: it goes on from the kept pieces, at its own pace.
                    let (replaying, tx, skip) = (Arc::clone(render), tx.clone(), *sent);
                    tokio::task::spawn_blocking(move || replay(&replaying, false, &tx, skip));
                }
                kept
            });
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends within `wait`; false if the queue stayed full (or the client went away). Blocking, on
/// the runtime's blocking pool.
fn send_within(tx: &mpsc::Sender<Chunk>, chunk: Chunk, wait: Duration) -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    matches!(rt.block_on(tx.send_timeout(chunk, wait)), Ok(()))
}

/// The gzip stream's sink: cuts it into pieces and publishes them.
struct Publisher<'a> {
    render: &'a Render,
    buf: Vec<u8>,
}

impl io::Write for Publisher<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE_BYTES {
            let piece = Bytes::from(std::mem::take(&mut self.buf));
            self.render.publish(Some(piece), false, false);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends a shared render's pieces to one scrape, from the start, inflated unless it takes gzip
/// and without the first `skip` bytes of text. Blocking; ends early when the client goes away.
fn replay(render: &Render, gzip: bool, tx: &mpsc::Sender<Chunk>, mut skip: usize) {
    let mut inflate = (!gzip).then(|| GzDecoder::new(Vec::with_capacity(PIECE_BYTES * 4)));
    let mut i = 0;
    let failed = loop {
        let piece = match render.piece(i) {
            Ok(piece) => piece,
            Err(failed) => break failed,
        };
        i += 1;
        let out = match inflate.as_mut() {
            None => piece,
            Some(d) => {
                if d.write_all(&piece).is_err() {
                    break true;
                }
                let mut text = Bytes::from(std::mem::take(d.get_mut()));
                let cut = skip.min(text.len());
                skip -= cut;
                text.split_off(cut)
            }
        };
        if !out.is_empty() && tx.blocking_send(Ok(out)).is_err() {
            return;
        }
    };
    let rest = match inflate.map(GzDecoder::finish) {
        _ if failed => Err(io::Error::other("rendering metrics failed")),
        None => Ok(Vec::new()),
        Some(rest) => rest,
    };
    match rest {
        Ok(rest) if rest.len() > skip => {
            let _ = tx.blocking_send(Ok(Bytes::from(rest).split_off(skip)));
        }
        Ok(_) => {}
        Err(err) => {
            let _ = tx.blocking_send(Err(err));
        }
    }
}

#[cfg(test)]
mod tests;
