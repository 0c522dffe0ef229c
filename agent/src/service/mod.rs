//! Running as a system service: readiness and watchdog notifications to systemd, where logs
//! go (journald-friendly stderr or a rotating file), and the supervision of the agent's own
//! tasks (panics caught and restarted, heartbeats that gate the watchdog).

pub mod limits;
pub mod logging;
pub mod notify;
pub mod supervise;
pub mod tasks;
