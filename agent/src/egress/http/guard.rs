//! What keeps one client from holding the endpoint: a connection whose writes stop making
//! progress is cut ([`WriteTimeout`]), and a `/metrics` body has a deadline and holds one of the
//! concurrent-scrape slots until it ends ([`ScrapeBody`]).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Sleep;
use tokio_stream::Stream;

use crate::egress::scrape::Chunk;
use crate::telemetry::Counter;

/// A connection whose writes fail with `TimedOut` once they have been blocked (the client
/// reads nothing) for `timeout`; reads pass through (hyper times the request headers itself).
pub(super) struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    cut: Counter,
}

impl<S> WriteTimeout<S> {
    pub(super) fn new(inner: S, timeout: Duration, cut: Counter) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            cut,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.cut.inc();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for the write timeout",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A `/metrics` body: the render's chunks until the deadline, then an error (the connection
/// is cut, so a client never takes a cut body for a whole one). Holds its scrape slot.
pub(super) struct ScrapeBody {
    rx: mpsc::Receiver<Chunk>,
    deadline: Pin<Box<Sleep>>,
    cut: Counter,
    _slot: OwnedSemaphorePermit,
}

impl ScrapeBody {
    pub(super) fn new(
        rx: mpsc::Receiver<Chunk>,
        deadline: Duration,
        cut: Counter,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            rx,
            deadline: Box::pin(tokio::time::sleep(deadline)),
            cut,
            _slot: slot,
        }
    }
}

impl Stream for ScrapeBody {
    type Item = Result<Frame<Bytes>, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Poll::Ready(chunk) = this.rx.poll_recv(cx) {
            return Poll::Ready(chunk.map(|c| c.map(Frame::data)));
        }
        if this.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.cut.inc();
        // The render stops at its next piece.
        this.rx.close();
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the scrape took longer than the response deadline",
        ))))
    }
}
