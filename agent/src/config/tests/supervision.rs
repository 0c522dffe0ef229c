//! `[supervision]`: defaults, values and positioned errors.

use super::*;

#[test]
fn supervision_defaults_and_values() {
    let d = ok("").supervision;
    assert_eq!(d, Supervision::default());
    assert_eq!(d.max_quick_failures, 5);
    assert_eq!(d.restart_backoff, Duration::from_secs(1));
    assert_eq!(d.restart_backoff_max, Duration::from_mins(1));
    assert_eq!(d.start_check_interval, Duration::from_secs(10));
    let s = ok(
        "[supervision]\nrestart_backoff = 2\nrestart_backoff_max = 8\n\
         max_quick_failures = 3\nstable_after = 30\nstop_grace = 0\n\
         start_check_interval = 1\nstart_check_timeout = 2\n",
    )
    .supervision;
    assert_eq!(
        s,
        Supervision {
            restart_backoff: Duration::from_secs(2),
            restart_backoff_max: Duration::from_secs(8),
            max_quick_failures: 3,
            stable_after: Duration::from_secs(30),
            stop_grace: Duration::ZERO,
            start_check_interval: Duration::from_secs(1),
            start_check_timeout: Duration::from_secs(2),
            probe_user: String::new(),
        }
    );
}

#[test]
fn supervision_errors_are_positioned() {
    one(
        "[supervision]\nmax_quick_failures = 0\n",
        2,
        "supervision.max_quick_failures",
        DiagnosticKind::OutOfRange,
    );
    one(
        "[supervision]\nstart_check_interval = 0\n",
        2,
        "supervision.start_check_interval",
        DiagnosticKind::OutOfRange,
    );
    one(
        "[supervision]\nrestart_backoff = 1\nrestart_backoff_max = \"60\"\n",
        3,
        "supervision.restart_backoff_max",
        DiagnosticKind::WrongType,
    );
    let d = one(
        "[supervision]\nrestart_backoff = 10\nrestart_backoff_max = 5\n",
        3,
        "supervision.restart_backoff_max",
        DiagnosticKind::InvalidValue,
    );
    assert!(d.message.contains("must not be below"), "{d}");
    one(
        "[supervision]\nrestart_backoff = 120\n",
        2,
        "supervision.restart_backoff",
        DiagnosticKind::InvalidValue,
    );
    one(
        "[supervision]\nbackoff = 1\n",
        2,
        "supervision.backoff",
        DiagnosticKind::UnknownKey,
    );
}

#[test]
fn probe_users_are_names_and_entries_may_name_their_own() {
    let cfg = crate::config::parse(
        "[supervision]\nprobe_user = \"gopher-probe\"\n\
         [[extend_probes]]\nname = \"a\"\ncommand = \"x\"\nswitch = \"on\"\nuser = \"\"\n\
         [[extend_probes]]\nname = \"b\"\ncommand = \"x\"\nswitch = \"on\"\n",
        std::path::Path::new("p.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.supervision.probe_user, "gopher-probe");
    assert_eq!(cfg.extend_probes[0].user.as_deref(), Some(""));
    assert_eq!(cfg.extend_probes[1].user, None);
    let e = crate::config::parse(
        "[supervision]\nprobe_user = \"root; rm -rf /\"\n",
        std::path::Path::new("p.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("supervision.probe_user") && e.contains("user name"),
        "{e}"
    );
}
