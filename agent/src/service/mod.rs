//! Running as a system service: readiness and watchdog notifications to systemd, where logs
//! go (journald-friendly stderr or a rotating file), and the agent's own supervised tasks (the
//! /metrics server, the Kafka sink). Supervision itself (panics caught and restarted, heartbeats
//! that gate the watchdog) is `crate::supervise`, re-exported here under its old path.

pub mod limits;
pub mod logging;
pub mod notify;
pub use crate::supervise;
pub mod tasks;
