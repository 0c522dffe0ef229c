//! The in-memory table store. Pure data structure: no I/O, no clock, no async.
//!
//! Probes hand in [`Batch`]es of typed [`Row`]s (values parsed once, see [`value`]); the
//! [`Store`] validates them against the table's [`TableMeta`] and keeps the latest record per key. Sinks read immutable [`Snapshot`]s and never see the store's
//! internals. Time is always passed in (`now_ms`) so ageing is testable without a clock.

mod error;
pub mod histogram;
pub mod meta;
pub mod number;
mod row;
mod store;
pub mod value;

pub use error::ImdbError;
pub use histogram::Histogram;
pub use meta::{FieldMeta, FieldType, TableMeta};
pub use row::{Batch, Column, Record, Row, Snapshot, TableSnapshot};
pub use store::{
    Limits, OTHER_TABLE, REASON_EXPIRED, REASON_INGEST_PANIC, Store, UNKNOWN_TABLE_NAMES,
};
pub use value::{Value, ValueRef};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
