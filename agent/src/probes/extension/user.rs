//! Running extension probes and start checks as an unprivileged user.
//!
//! The agent runs as root (eBPF needs it); the programs it starts do not: they read a status
//! page or a socket, and a bug or a hostile target must not get root's capabilities through
//! them. In the child, before `exec`: no_new_privs (no set-uid or file capabilities later),
//! the capability bounding set emptied, the user's groups, gid and uid set. Going from uid 0 to
//! another uid clears the permitted, effective and ambient capabilities (the kernel's rule when
//! SECBIT_KEEP_CAPS is not set), so the program starts with none.
//!
//! The user is looked up (`getpwnam_r`, `getgrouplist`) each time a process is started, in the
//! agent: only plain system calls run between fork and exec.

use std::ffi::{CStr, CString};

use tokio::process::Command;

/// Highest capability number the loop tries to drop; the kernel answers EINVAL beyond its own
/// last one (40 on Linux 6.x), which is ignored.
const MAX_CAP: libc::c_ulong = 63;

/// A user to run as, resolved from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    pub home: String,
}

/// Looks `name` up in the user database.
pub fn lookup(name: &str) -> std::io::Result<RunAs> {
    let c_name = CString::new(name).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "a user name has no NUL")
    })?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain old data; getpwnam_r fills it with pointers into `buf`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    loop {
        // SAFETY: every pointer is valid for the length given; `buf` outlives the reads below.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &raw mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &raw mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        break;
    }
    if found.is_null() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no user named {name:?} (create it, or set probe_user / user to another)"),
        ));
    }
    // SAFETY: pw_dir points into `buf`, NUL-terminated by getpwnam_r.
    let home = unsafe { CStr::from_ptr(pwd.pw_dir) }
        .to_string_lossy()
        .into_owned();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; getgrouplist says how many it needs.
        let rc = unsafe {
            libc::getgrouplist(c_name.as_ptr(), pwd.pw_gid, groups.as_mut_ptr(), &raw mut n)
        };
        if rc >= 0 {
            groups.truncate(usize::try_from(n).unwrap_or(0));
            break;
        }
        if groups.len() >= 65_536 {
            groups = vec![pwd.pw_gid];
            break;
        }
        let want = usize::try_from(n).unwrap_or(0).max(groups.len() * 2);
        groups.resize(want, 0);
    }
    Ok(RunAs {
        name: name.to_owned(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        groups,
        home,
    })
}

/// Makes `cmd` run as `user` with no capabilities. `user` `None`: as the agent.
pub fn apply(cmd: &mut Command, user: Option<&str>) -> std::io::Result<()> {
    let Some(name) = user else {
        return Ok(());
    };
    let who = lookup(name)?;
    cmd.env("HOME", &who.home)
        .env("USER", &who.name)
        .env("LOGNAME", &who.name);
    let RunAs {
        uid, gid, groups, ..
    } = who;
    // SAFETY: the closure makes only async-signal-safe system calls (prctl, setgroups, setgid,
    // setuid) on memory moved into it; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for cap in 0..=MAX_CAP {
                // EINVAL past the kernel's last capability; EPERM without CAP_SETPCAP (an agent
                // not running as root, whose children then keep its own empty set anyway).
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            if libc::geteuid() == uid && libc::getegid() == gid {
                return Ok(());
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn root_and_nobody_are_found_and_strangers_are_not() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        let e = lookup("no-such-user-gopher").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no-such-user-gopher"), "{e}");
    }

    #[tokio::test]
    async fn a_child_runs_as_the_user_with_no_capabilities() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to change user");
            return;
        }
        let mut cmd = super::super::process::shell(
            "id -u; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; grep NoNewPrivs /proc/self/status",
        );
        apply(&mut cmd, Some("nobody")).unwrap();
        let out = cmd.output().await.unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let nobody = lookup("nobody").unwrap();
        assert!(text.starts_with(&format!("{}\n", nobody.uid)), "{text}");
        for cap in ["CapEff", "CapPrm", "CapBnd"] {
            assert!(
                text.contains(&format!("{cap}:\t0000000000000000")),
                "{text}"
            );
        }
        assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    }
}
