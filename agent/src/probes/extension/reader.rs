//! Reads a pipe line by line with a bound on line length that also bounds memory: an over-long
//! line is skipped up to its newline without ever being held in full.

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

/// What [`LineReader::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// A line without its `\n` (the last line of the stream may lack one).
    Line(&'a [u8]),
    /// A line longer than the limit; its bytes were discarded (reported once per line).
    TooLong,
    Eof,
}

pub struct LineReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
    max: usize,
    /// Inside an over-long line: drop bytes until its newline.
    discarding: bool,
}

/// Read buffer size: big enough to batch many short rows per system call.
const BUFFER: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner: BufReader::with_capacity(BUFFER, inner),
            line: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// Whether a whole line is already buffered, so [`LineReader::next`] will not wait.
    pub fn line_ready(&self) -> bool {
        self.inner.buffer().contains(&b'\n')
    }

    pub async fn next(&mut self) -> std::io::Result<Next<'_>> {
        self.line.clear();
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                self.discarding = false;
                return Ok(if self.line.is_empty() {
                    Next::Eof
                } else {
                    Next::Line(&self.line)
                });
            }
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                if self.discarding {
                    self.discarding = false;
                    self.inner.consume(i + 1);
                    continue;
                }
                if self.line.len() + i > self.max {
                    self.inner.consume(i + 1);
                    self.line.clear();
                    return Ok(Next::TooLong);
                }
                self.line.extend_from_slice(&buf[..i]);
                self.inner.consume(i + 1);
                return Ok(Next::Line(&self.line));
            }
            let n = buf.len();
            if !self.discarding {
                if self.line.len() + n > self.max {
                    self.discarding = true;
                    self.line.clear();
                    self.inner.consume(n);
                    return Ok(Next::TooLong);
                }
                self.line.extend_from_slice(buf);
            }
            self.inner.consume(n);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::unnecessary_wraps)]
mod tests {
    use super::*;

    async fn all(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, ()>> {
        let mut r = LineReader::new(input, max);
        let mut out = Vec::new();
        loop {
            match r.next().await.unwrap() {
                Next::Line(l) => out.push(Ok(l.to_vec())),
                Next::TooLong => out.push(Err(())),
                Next::Eof => return out,
            }
        }
    }

    fn ok(s: &str) -> Result<Vec<u8>, ()> {
        Ok(s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_last_unterminated_one() {
        assert_eq!(
            all(b"a\n\nbc\nd", 10).await,
            [ok("a"), ok(""), ok("bc"), ok("d")]
        );
        assert_eq!(all(b"", 10).await, []);
    }

    #[tokio::test]
    async fn over_long_lines_are_skipped_once_each() {
        assert_eq!(
            all(b"12345\n123456\nok\n", 5).await,
            [ok("12345"), Err(()), ok("ok")]
        );
        // Longer than the read buffer: discarded across many reads, reported once.
        let mut big = vec![b'x'; 3 * BUFFER];
        big.extend_from_slice(b"\nafter\n");
        assert_eq!(all(&big, 100).await, [Err(()), ok("after")]);
        let big = vec![b'x'; 3 * BUFFER];
        assert_eq!(all(&big, 100).await, [Err(())]);
    }

    #[tokio::test]
    async fn lines_split_across_reads_are_joined() {
        let (mut tx, rx) = tokio::io::duplex(4);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            tx.write_all(b"hello world\nsecond").await.unwrap();
        });
        let mut r = LineReader::new(rx, 100);
        assert_eq!(r.next().await.unwrap(), Next::Line(b"hello world"));
        assert_eq!(r.next().await.unwrap(), Next::Line(b"second"));
        assert_eq!(r.next().await.unwrap(), Next::Eof);
        writer.await.unwrap();
    }
}
