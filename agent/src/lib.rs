//! gopher: probes → imdb → egress, with control beside.
//!
//! Follow one row: a probe (`probes/`) produces [`imdb::Row`]s, the table store (`imdb/`) keeps
//! the latest record per key, and sinks (`egress/`) render snapshots of it. Beside them,
//! `control/` lets a central manager switch and re-tune probes over gRPC.

pub mod clock;
pub mod config;
pub mod control;
pub mod egress;
pub mod imdb;
pub mod mem;
pub mod probes;
pub mod selfmetrics;
pub mod service;
