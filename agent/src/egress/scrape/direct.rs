//! A direct render's sink (`super`'s module doc): the body goes to its one client as it is
//! rendered, in pieces of a size the render picks, with the client's pace as back-pressure.

use std::io;

use bytes::Bytes;
use tokio::sync::mpsc;

/// A direct render's sink: the body goes to its one client in pieces as it comes.
pub(super) struct Direct<'a> {
    /// The scrape's body (`super::Chunk`s).
    pub(super) tx: &'a mpsc::Sender<Result<Bytes, io::Error>>,
    /// Bytes gathered before they are sent.
    pub(super) piece: usize,
    /// Allocated with room for a piece and the write that completes it.
    pub(super) buf: Vec<u8>,
}

impl Direct<'_> {
    fn send(&mut self) -> io::Result<()> {
        let room = self.buf.capacity().max(self.piece);
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(room));
        self.tx
            .blocking_send(Ok(Bytes::from(piece)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "scraper went away"))
    }

    /// Sends what is left.
    pub(super) fn finish(mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

impl io::Write for Direct<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.piece {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
