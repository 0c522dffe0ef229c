//! Running as a system service: readiness and watchdog notifications to systemd, and where logs
//! go (journald-friendly stderr or a rotating file).

pub mod logging;
pub mod notify;
