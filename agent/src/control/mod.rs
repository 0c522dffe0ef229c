//! The control channel: a central manager (or `gopher ctl`) lists probes, switches them on, off
//! or to auto, changes their interval and params, and watches their state, over gRPC.
//!
//! A thin adapter: it converts between the wire types and the probe controller's
//! (`crate::probes::Controller`, which applies changes, keeps the state file and follows
//! reloads) and calls it. Nothing here knows how a probe is built or run.
//!
//! - [`grpc`]: the `gopher.control.v1` service (proto/gopher/control/v1/control.proto).
//! - [`auth`]: who may call: the bearer token (created 0600 at first start), one check for
//!   every transport.
//! - [`server`]: listening, TLS/mTLS, health and reflection.
//! - [`client`]: `gopher ctl`; [`target`]: which agents it asks and how (their config);
//!   [`print`]: its output.
//! - [`rest`]: gala-gopher's REST probe API (`GET`/`PUT /<probe>`), the same token check.

pub mod auth;
pub mod client;
pub mod grpc;
pub mod print;
pub mod rest;
pub mod server;
pub mod target;
