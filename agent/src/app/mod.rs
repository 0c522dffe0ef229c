//! The agent's wiring: from the configuration to running probes, the table store, the sinks and
//! the control channel.

pub mod plan;
