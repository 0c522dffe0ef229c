//! Sinks: each reads imdb snapshots and knows nothing of probes.
//!
//! `prometheus` turns a snapshot into the text exposition format; `http` serves it, `scrape`
//! shares and streams its renders.
//! `kafka` produces changed records (and table definitions) to Kafka. `store_counts` copies the
//! store's own counts into the self-metrics (`crate::telemetry`), whose values the sinks encode.

pub mod http;
pub mod kafka;
pub mod prometheus;
mod scrape;
pub mod store_counts;
