//! Who may use the control channel: a bearer token, read from (or created in) a file only root
//! can read.
//!
//! Why a token file and not a unix socket with peer credentials: the channel is gRPC over TCP
//! because a central manager reaches it over the network; a token works the same for both, and
//! on the node the file's permissions (0600, root) are the local check — a local user who cannot
//! read the file cannot call. The agent creates the file at first start when it is missing
//! (32 random bytes, hex), so `gopher ctl` run as root works out of the box and every other
//! local user (and hostNetwork pod) is refused.
//!
//! [`TokenCheck::authorize`] is the one check, for every transport: the gRPC interceptor here
//! and any other API beside it (a REST gateway calls it with its `Authorization` header).

use std::{
    fmt::Write as _,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    sync::Arc,
};

use anyhow::Context as _;
use subtle::ConstantTimeEq as _;
use tonic::{Request, Status, service::Interceptor};

use crate::telemetry::{CONTROL_REQUESTS, Counter, SelfMetrics};

/// Why a call was refused; its text is what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this agent requires `authorization: Bearer <token>`")]
    Missing,
    #[error("wrong bearer token")]
    Wrong,
}

/// Checks `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<str>>,
    refused: Counter,
}

impl TokenCheck {
    pub fn new(token: Option<String>, metrics: &SelfMetrics) -> Self {
        Self {
            token: token.map(Into::into),
            // The interceptor runs before routing: the method is not known here.
            refused: metrics.counter(
                CONTROL_REQUESTS,
                &[("method", "unknown"), ("code", "unauthenticated")],
            ),
        }
    }

    /// The check itself, given the value of the `authorization` header (gRPC metadata or
    /// HTTP); counts a refusal in `gopher_control_requests_total{code="unauthenticated"}`.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let Some(want) = &self.token else {
            return Ok(());
        };
        match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
            // In time independent of where the first difference is.
            Some(got) if bool::from(got.trim().as_bytes().ct_eq(want.as_bytes())) => Ok(()),
            Some(_) => {
                self.refused.inc();
                Err(Refusal::Wrong)
            }
            None => {
                self.refused.inc();
                Err(Refusal::Missing)
            }
        }
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.authorize(header) {
            Ok(()) => Ok(req),
            Err(why) => Err(Status::unauthenticated(why.to_string())),
        }
    }
}

/// The token from `token_file`: its first line, trimmed; an empty one is refused.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let raw = std::fs::read(path).with_context(|| {
        format!(
            "control.token_file: reading {} (the token is readable by root only)",
            path.display()
        )
    })?;
    let text = String::from_utf8(raw)
        .with_context(|| format!("control.token_file: {} is not UTF-8", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("control.token_file: {} holds no token", path.display());
    }
    Ok(token)
}

/// The token in `path`, created (0600, 32 random bytes as hex) when the file does not exist.
/// Creation is atomic (written aside, then linked into place), so agents starting together
/// agree on one token. A group may be let in on purpose (`chgrp ops`, mode 0640: its members
/// can run `gopher ctl`); a world-readable token file is used but warned about.
pub fn ensure_token(path: &Path) -> anyhow::Result<String> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.mode() & 0o007 != 0 {
                tracing::warn!(
                    file = ?path,
                    mode = format!("{:o}", meta.mode() & 0o7777),
                    "control.token_file can be read by every local user: anyone who can read \
                     it can switch probes; chmod 600 it (or 640 for a group of your choice)"
                );
            }
            return read_token(path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("control.token_file: reading {}", path.display()));
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)))
            .with_context(|| format!("control.token_file: creating {}", dir.display()))?;
    }
    let token = random_hex(32)?;
    let aside = dir.join(format!(".control-token.{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&aside)
        .and_then(|mut f| {
            f.write_all(format!("{token}\n").as_bytes())?;
            f.sync_all()
        });
    let linked = written.and_then(|()| std::fs::hard_link(&aside, path));
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => {
            tracing::info!(file = ?path, "control channel: created a token (readable by root only)");
            Ok(token)
        }
        // Another agent created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(path),
        Err(e) => Err(e).with_context(|| {
            format!(
                "control.token_file: cannot create {} (run as root, point token_file somewhere \
                 writable, or switch the control channel off)",
                path.display()
            )
        }),
    }
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining length into the buffer this function owns.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("getrandom");
        }
        filled += n as usize;
    }
    Ok(buf
        .iter()
        .fold(String::with_capacity(bytes * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let check = TokenCheck::new(Some("abc".into()), &SelfMetrics::new());
        assert_eq!(check.authorize(Some("Bearer abc")), Ok(()));
        assert_eq!(check.authorize(Some("Bearer abd")), Err(Refusal::Wrong));
        assert_eq!(check.authorize(Some("Bearer abcd")), Err(Refusal::Wrong));
    }

    #[test]
    fn a_missing_token_file_is_created_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/control.token");
        let first = ensure_token(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(ensure_token(&path).unwrap(), first);
        assert_ne!(random_hex(32).unwrap(), first);
    }

    #[test]
    fn authorize_needs_the_exact_token() {
        let m = SelfMetrics::new();
        let check = TokenCheck::new(Some("t0k".into()), &m);
        assert_eq!(check.authorize(Some("Bearer t0k")), Ok(()));
        assert_eq!(check.authorize(Some("Bearer t0kk")), Err(Refusal::Wrong));
        assert_eq!(check.authorize(Some("Basic t0k")), Err(Refusal::Missing));
        assert_eq!(check.authorize(None), Err(Refusal::Missing));
        let open = TokenCheck::new(None, &m);
        assert_eq!(open.authorize(None), Ok(()));
    }
}
