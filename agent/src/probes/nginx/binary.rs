//! Which nginx processes run, from which binaries, and whether the probe supports a binary.
//!
//! Processes are found by name (`/proc/<pid>/comm`, default `nginx`), their binary through
//! `/proc/<pid>/exe`, which also reaches a binary inside a container or one replaced on disk
//! by an upgrade (the old inode stays reachable while it runs). A binary is identified by
//! (device, inode): the uprobes are attached once per binary, whatever the number of workers.
//!
//! Supported: nginx 1.9.0 up to (not including) 2.0, 64-bit little-endian builds that export
//! or keep the symbols `ngx_event_connect_peer` and `ngx_close_connection`. The probe reads
//! only struct heads that are the same in all of 1.x (see `sessions.rs`) and the stream
//! module's session exists since 1.9.0. Any other binary is refused with the reason.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt as _, path::PathBuf};

/// The oldest supported release (the stream module appeared in 1.9.0).
pub const MIN_VERSION: (u32, u32, u32) = (1, 9, 0);
/// The first major release not known to keep the struct heads the probe reads.
pub const MAX_MAJOR: u32 = 1;

/// One nginx binary with the processes running it.
#[derive(Debug, Clone)]
pub struct Binary {
    pub id: (u64, u64),
    /// `/proc/<pid>/exe` of one of its processes: a path to the very file that runs.
    pub path: PathBuf,
    pub pids: Vec<u32>,
}

/// The nginx binaries running now, by (device, inode).
pub fn running(comm: &str) -> HashMap<(u64, u64), Binary> {
    let mut out: HashMap<(u64, u64), Binary> = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(name) = fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if name.trim_end() != comm {
            continue;
        }
        let path = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let id = (meta.dev(), meta.ino());
        out.entry(id)
            .or_insert_with(|| Binary {
                id,
                path,
                pids: Vec::new(),
            })
            .pids
            .push(pid);
    }
    out
}

/// Why a binary is not supported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no nginx version string (\"nginx version: nginx/X.Y.Z\") in the binary: not nginx, or a fork the probe does not know"
    )]
    NoVersion,
    #[error("nginx {0}.{1}.{2} is not supported (supported: 1.9.0 to 1.x)")]
    Version(u32, u32, u32),
    #[error("not a 64-bit little-endian ELF binary (the probe reads 64-bit struct layouts)")]
    NotElf64,
    #[error("reading the binary: {0}")]
    Read(String),
}

/// Checks that the binary at `path` is a supported nginx; its version on success.
pub fn check(path: &std::path::Path) -> Result<(u32, u32, u32), Refusal> {
    let bytes = fs::read(path).map_err(|e| Refusal::Read(e.to_string()))?;
    // e_ident: magic, class 2 (64-bit), data 1 (little-endian).
    if bytes.get(0..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(Refusal::NotElf64);
    }
    let v = version(&bytes).ok_or(Refusal::NoVersion)?;
    if v < MIN_VERSION || v.0 > MAX_MAJOR {
        return Err(Refusal::Version(v.0, v.1, v.2));
    }
    Ok(v)
}

/// The version in nginx's `-v` text, `nginx version: nginx/1.22.1`.
fn version(bytes: &[u8]) -> Option<(u32, u32, u32)> {
    const NEEDLE: &[u8] = b"nginx version: nginx/";
    let at = bytes.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let rest = bytes.get(at..bytes.len().min(at + 16))?;
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
        .unwrap_or(rest.len());
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let mut it = text.split('.').map(str::parse::<u32>);
    Some((it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_and_refuses_others() {
        let elf = |s: &str| {
            let mut b = b"\x7fELF\x02\x01\0\0".to_vec();
            b.extend_from_slice(s.as_bytes());
            b
        };
        assert_eq!(
            version(&elf("x\0nginx version: nginx/1.22.1\0")),
            Some((1, 22, 1))
        );
        assert_eq!(version(&elf("nginx version: openresty/1.21")), None);
        let dir = std::env::temp_dir().join(format!("gopher-nginx-bin-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, body: &[u8]| {
            let p = dir.join(name);
            fs::write(&p, body).unwrap();
            p
        };
        assert_eq!(
            check(&file("ok", &elf("nginx version: nginx/1.9.0\0"))),
            Ok((1, 9, 0))
        );
        assert_eq!(
            check(&file("old", &elf("nginx version: nginx/1.8.1\0"))),
            Err(Refusal::Version(1, 8, 1))
        );
        assert_eq!(
            check(&file("new", &elf("nginx version: nginx/2.0.0\0"))),
            Err(Refusal::Version(2, 0, 0))
        );
        assert_eq!(
            check(&file("fork", &elf("tengine/3.0"))),
            Err(Refusal::NoVersion)
        );
        assert_eq!(check(&file("text", b"#!/bin/sh\n")), Err(Refusal::NotElf64));
        let msg = Refusal::Version(1, 8, 1).to_string();
        assert!(
            msg.contains("1.8.1") && msg.contains("supported: 1.9.0"),
            "{msg}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_installed_nginx_is_supported() {
        let path = std::path::Path::new("/usr/sbin/nginx");
        if !path.exists() {
            assert!(
                std::env::var_os("GOPHER_STRICT_TESTS").is_none(),
                "nginx not installed"
            );
            return;
        }
        let v = check(path).unwrap();
        assert!(v >= MIN_VERSION, "{v:?}");
    }
}
