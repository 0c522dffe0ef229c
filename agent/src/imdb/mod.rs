//! The in-memory table store. Pure data structure: no I/O, no clock, no async.

pub mod meta;

pub use meta::{FieldMeta, FieldType, TableMeta};
