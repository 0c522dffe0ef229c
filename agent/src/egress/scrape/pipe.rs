//! Compressing a render's text on a second thread while it is rendered.
//!
//! gzip (level 1) of a render costs about as much CPU as the render itself (at 2 M samples,
//! ~1 s each on this project's 2-CPU VM), and done inline it came on top of it: a gzip scrape
//! took render + deflate. The render hands its text in pieces of about
//! `prometheus::CHUNK_BYTES` to a thread that deflates them,
//! so that a gzip scrape takes about the longer of the two. At most [`AHEAD`] pieces wait
//! between them (memory stays bounded, and a slow client slows the render through the
//! deflating thread's sink), and the pieces' buffers go back to the render to be reused.
//!
//! The stream is finished (gzip trailer) only when the render completed: a render that failed
//! leaves it unfinished, so that its client sees a cut body rather than a short one that looks
//! whole.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};

use flate2::write::GzEncoder;

/// Text pieces queued for the deflating thread.
const AHEAD: usize = 8;

enum Piece {
    Text(Vec<u8>),
    /// The render completed: finish the stream.
    End,
}

/// The render's sink: hands what is written to the deflating thread.
pub(super) struct Pipe {
    tx: SyncSender<Piece>,
    /// Buffers the deflating thread is done with.
    spare: Receiver<Vec<u8>>,
}

impl Write for Pipe {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        self.tx
            .send(Piece::Text(buf))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "compressing stopped"))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `render` with a [`Pipe`] whose bytes `gz` compresses on another thread meanwhile;
/// returns `gz`'s sink once the stream is finished. An error of the deflating side (its sink:
/// the client went away) is returned before the render's, which it explains.
pub(super) fn compress_alongside<W, R>(gz: GzEncoder<W>, render: R) -> io::Result<W>
where
    W: Write + Send,
    R: FnOnce(&mut Pipe) -> io::Result<()>,
{
    let (tx, rx) = sync_channel::<Piece>(AHEAD);
    let (spare_tx, spare) = channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let deflating = scope.spawn(move || -> io::Result<W> {
            let mut gz = gz;
            for piece in rx {
                match piece {
                    Piece::Text(text) => {
                        gz.write_all(&text)?;
                        let _ = spare_tx.send(text);
                    }
                    Piece::End => return gz.finish(),
                }
            }
            Err(io::Error::other("rendering metrics failed"))
        });
        let mut pipe = Pipe { tx, spare };
        let rendered = render(&mut pipe).and_then(|()| {
            pipe.tx
                .send(Piece::End)
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "compressing stopped"))
        });
        // Ends the deflating thread's input whatever happened.
        drop(pipe);
        let compressed = deflating
            .join()
            .map_err(|_| io::Error::other("compressing metrics panicked"))?;
        match (rendered, compressed) {
            (_, Err(err)) | (Err(err), Ok(_)) => Err(err),
            (Ok(()), Ok(w)) => Ok(w),
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::read::GzDecoder;
    use std::io::Read as _;

    #[test]
    fn what_is_rendered_is_compressed_whole_and_in_order() {
        let text: Vec<u8> = (0..200_000_u32)
            .flat_map(|i| format!("sample_{i} {i}\n").into_bytes())
            .collect();
        let gz = GzEncoder::new(Vec::new(), Compression::fast());
        let body = compress_alongside(gz, |pipe| {
            for piece in text.chunks(65_536) {
                pipe.write_all(piece)?;
            }
            Ok(())
        })
        .unwrap();
        let mut back = Vec::new();
        GzDecoder::new(&body[..]).read_to_end(&mut back).unwrap();
        assert!(back == text, "{} bytes back of {}", back.len(), text.len());
    }

    #[test]
    fn a_failed_render_leaves_the_stream_unfinished() {
        let gz = GzEncoder::new(Vec::new(), Compression::fast());
        let err = compress_alongside(gz, |pipe| {
            pipe.write_all(b"a 1\n")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "rendering metrics failed");
    }

    /// A sink that fails like a client that went away.
    struct Gone;

    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "scraper went away",
            ))
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_sink_that_fails_stops_the_render() {
        let gz = GzEncoder::new(Gone, Compression::fast());
        let mut written = 0_usize;
        let piece = vec![b'x'; 65_536];
        let err = compress_alongside(gz, |pipe| {
            for _ in 0..100_000 {
                pipe.write_all(&piece)?;
                written += 1;
            }
            Ok(())
        })
        .err()
        .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(written < 100_000, "the render went on to the end");
    }
}
