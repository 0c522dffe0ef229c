//! Sinks: each reads imdb snapshots and knows nothing of probes.
//!
//! `prometheus` turns a snapshot into the text exposition format; `http` serves it.

pub mod http;
pub mod prometheus;
