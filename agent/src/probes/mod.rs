//! Probes produce rows.
