//! The control channel: a central manager (or `gopher ctl`) lists probes, switches them on, off
//! or to auto, changes their interval and params, and watches their state, over gRPC.
//!
//! - [`runtime`]: the probes' settings (configuration file + runtime changes) and applying them;
//!   also what a config reload (SIGHUP) goes through.
//! - [`overrides`]: the state file keeping runtime changes across restarts.
//! - [`grpc`]: the `gopher.control.v1` service (proto/gopher/control/v1/control.proto).
//! - [`server`]: listening, TLS/mTLS, bearer token, health and reflection.
//! - [`client`]: `gopher ctl`.

pub mod client;
pub mod grpc;
pub mod overrides;
pub mod runtime;
pub mod server;

pub use runtime::{Change, ControlError, Controller, Event, Kind, Params, Settings, View};
