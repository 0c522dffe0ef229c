//! gopher: probes → imdb → egress, with control beside.
//!
//! Follow one row: a probe (`probes/`) produces [`imdb::Row`]s, the table store (`imdb/`) keeps
//! the latest record per key, and sinks (`egress/`) render snapshots of it. Beside them,
//! `control/` lets a central manager switch and re-tune probes over gRPC (a thin adapter over
//! `probes::Controller`). `app/` is the wiring on top; `supervise` sits below everything that
//! supervises. Arrows point one way (`scripts/import_cycles.py` checks it).

pub mod app;
pub mod attrib;
pub mod clock;
pub mod config;
pub mod control;
pub mod egress;
pub mod imdb;
pub mod mem;
pub mod probes;
pub mod service;
pub mod supervise;
pub mod telemetry;
