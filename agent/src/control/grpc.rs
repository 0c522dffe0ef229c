//! The `gopher.control.v1.ProbeControl` service over the probe [`Controller`], and conversions
//! between its messages and the controller's types.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::{
    probes::{
        Change, ControlError, Controller, ProbeKind, State, Switch, View, controller::Event,
        settings::Params,
    },
    telemetry::{CONTROL_REQUESTS, SelfMetrics},
};

/// The wire types (crate `gopher-api`, generated from proto/).
pub use gopher_api::control_v1 as pb;
pub use pb::probe_control_server::ProbeControlServer;

pub struct Service {
    ctl: Controller,
    metrics: Arc<SelfMetrics>,
}

impl Service {
    pub fn new(ctl: Controller, metrics: Arc<SelfMetrics>) -> Self {
        Self { ctl, metrics }
    }

    /// Counts the call by method and outcome, and passes the outcome on.
    fn counted<T>(&self, method: &str, r: Result<T, Status>) -> Result<T, Status> {
        let code = match &r {
            Ok(_) => "ok".to_owned(),
            Err(s) => code_label(s.code()),
        };
        self.metrics
            .counter(CONTROL_REQUESTS, &[("method", method), ("code", &code)])
            .inc();
        r
    }
}

/// `InvalidArgument` → `invalid_argument`.
pub fn code_label(code: Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(name) => Status::not_found(format!("no probe named {name:?}")),
            ControlError::Invalid { field, message } => Status::with_error_details(
                Code::InvalidArgument,
                format!("{field}: {message}"),
                ErrorDetails::with_bad_request_violation(field, message),
            ),
            ControlError::Failed(why) => Status::failed_precondition(why),
            ControlError::Unavailable(why) => Status::unavailable(why),
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Status {
    ControlError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
    .into()
}

/// Probe names are short words; a longer one names no probe and is refused before it is
/// logged or looked up.
const MAX_NAME_BYTES: usize = 128;

fn name_of(name: &str) -> Result<&str, Status> {
    if name.is_empty() {
        return Err(invalid("name", "required"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(
            "name",
            format!("longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    Ok(name)
}

pub fn switch_to_pb(s: Switch) -> pb::Switch {
    match s {
        Switch::On => pb::Switch::On,
        Switch::Off => pb::Switch::Off,
        Switch::Auto => pb::Switch::Auto,
    }
}

fn state_to_pb(s: State) -> pb::RunState {
    match s {
        State::Stopped => pb::RunState::Stopped,
        State::Starting => pb::RunState::Starting,
        State::Running => pb::RunState::Running,
        State::Failed => pb::RunState::Failed,
    }
}

fn value_to_pb(v: &toml::Value) -> pb::ParamValue {
    use pb::param_value::Value as V;
    let value = match v {
        toml::Value::String(s) => V::StringValue(s.clone()),
        toml::Value::Integer(i) => V::IntValue(*i),
        toml::Value::Boolean(b) => V::BoolValue(*b),
        toml::Value::Float(f) => V::FloatValue(*f),
        // Params are scalars; anything else is shown as its TOML text.
        other => V::StringValue(other.to_string()),
    };
    pb::ParamValue { value: Some(value) }
}

pub fn params_from_pb(p: &pb::Params) -> Result<toml::Table, Status> {
    use pb::param_value::Value as V;
    let mut out = toml::Table::new();
    for (k, v) in &p.values {
        let value = match &v.value {
            Some(V::StringValue(s)) => toml::Value::String(s.clone()),
            Some(V::IntValue(i)) => toml::Value::Integer(*i),
            Some(V::BoolValue(b)) => toml::Value::Boolean(*b),
            Some(V::FloatValue(f)) => toml::Value::Float(*f),
            None => return Err(invalid(&format!("params.{k}"), "no value")),
        };
        out.insert(k.clone(), value);
    }
    Ok(out)
}

pub fn view_to_pb(v: &View) -> pb::Probe {
    let values: HashMap<String, pb::ParamValue> = match &v.settings.params {
        Params::Native(t) => t.iter().map(|(k, v)| (k.clone(), value_to_pb(v))).collect(),
        Params::Extension(p) => [(
            "param".to_owned(),
            value_to_pb(&toml::Value::String(p.clone())),
        )]
        .into_iter()
        .collect(),
    };
    pb::Probe {
        name: v.name.clone(),
        kind: match v.kind {
            ProbeKind::Native => pb::ProbeKind::Native,
            ProbeKind::Extension => pb::ProbeKind::Extension,
        } as i32,
        switch: switch_to_pb(v.settings.switch) as i32,
        state: state_to_pb(v.status.state) as i32,
        reason: v.status.reason.clone(),
        interval_seconds: match v.kind {
            ProbeKind::Native => u32::try_from(v.settings.interval.as_secs()).unwrap_or(u32::MAX),
            ProbeKind::Extension => 0,
        },
        params: Some(pb::Params { values }),
        pid: v.status.pid,
        rows: v.rows,
        last_error: v.status.last_error.clone(),
        command: v.command.clone(),
        overridden: v.overridden,
        tables: v.tables.clone(),
    }
}

fn change_from_pb(req: &pb::SetProbeRequest) -> Result<Change, Status> {
    let switch = match req.switch {
        None => None,
        Some(raw) => Some(match pb::Switch::try_from(raw) {
            Ok(pb::Switch::On) => Switch::On,
            Ok(pb::Switch::Off) => Switch::Off,
            Ok(pb::Switch::Auto) => Switch::Auto,
            Ok(pb::Switch::Unspecified) | Err(_) => {
                return Err(invalid(
                    "switch",
                    format!("expected SWITCH_ON, SWITCH_OFF or SWITCH_AUTO, found {raw}"),
                ));
            }
        }),
    };
    Ok(Change {
        switch,
        interval_secs: req.interval_seconds.map(u64::from),
        params: req.params.as_ref().map(params_from_pb).transpose()?,
    })
}

fn event(view: &View, removed: bool) -> pb::ProbeEvent {
    pb::ProbeEvent {
        timestamp_ms: crate::clock::wall_ms(),
        probe: Some(view_to_pb(view)),
        removed,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ProbeEvent, Status>> + Send>>;

/// Events a watcher may have queued before it is considered too slow and re-synced.
const WATCH_QUEUE: usize = 256;

#[tonic::async_trait]
impl pb::probe_control_server::ProbeControl for Service {
    async fn list_probes(
        &self,
        _req: Request<pb::ListProbesRequest>,
    ) -> Result<Response<pb::ListProbesResponse>, Status> {
        let probes = self.ctl.list().iter().map(view_to_pb).collect();
        self.counted(
            "ListProbes",
            Ok(Response::new(pb::ListProbesResponse { probes })),
        )
    }

    async fn get_probe(
        &self,
        req: Request<pb::GetProbeRequest>,
    ) -> Result<Response<pb::Probe>, Status> {
        let r = name_of(&req.get_ref().name)
            .and_then(|name| Ok(Response::new(view_to_pb(&self.ctl.get(name)?))));
        self.counted("GetProbe", r)
    }

    async fn set_probe(
        &self,
        req: Request<pb::SetProbeRequest>,
    ) -> Result<Response<pb::Probe>, Status> {
        let req = req.into_inner();
        let r: Result<_, Status> = async {
            let name = name_of(&req.name)?;
            let change = change_from_pb(&req)?;
            // `?`: Debug quotes and escapes the client's string, so a newline in it cannot forge a
            // log line.
            tracing::info!(probe = ?name, ?change, "control: set");
            Ok(Response::new(view_to_pb(
                &self.ctl.set(name, &change).await?,
            )))
        }
        .await;
        if let Err(e) = &r {
            tracing::info!(probe = ?req.name, reason = ?e.message(), "control: set refused");
        }
        self.counted("SetProbe", r)
    }

    async fn reset_probe(
        &self,
        req: Request<pb::ResetProbeRequest>,
    ) -> Result<Response<pb::Probe>, Status> {
        let r: Result<_, Status> = async {
            let name = name_of(&req.get_ref().name)?;
            tracing::info!(probe = ?name, "control: reset");
            Ok(Response::new(view_to_pb(&self.ctl.reset(name).await?)))
        }
        .await;
        self.counted("ResetProbe", r)
    }

    type WatchProbesStream = EventStream;

    async fn watch_probes(
        &self,
        req: Request<pb::WatchProbesRequest>,
    ) -> Result<Response<Self::WatchProbesStream>, Status> {
        // Subscribed before the initial snapshot is taken, so no change falls in between.
        let mut events = self.ctl.subscribe();
        let initial = req.get_ref().initial;
        let ctl = self.ctl.downgrade();
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let snapshot = if initial { self.ctl.list() } else { Vec::new() };
        let mut closing = self.ctl.closing();
        tokio::spawn(async move {
            if initial {
                for view in snapshot {
                    if tx.send(Ok(event(&view, false))).await.is_err() {
                        return;
                    }
                }
            }
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    _ = closing.wait_for(|c| *c) => return,
                    e = events.recv() => e,
                };
                let out: Vec<pb::ProbeEvent> = match next {
                    Ok(Event::Changed(view)) => vec![event(&view, false)],
                    Ok(Event::Removed(view)) => vec![event(&view, true)],
                    // Missed some: what matters is the current state of each probe.
                    Ok(Event::Lagged) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let Some(ctl) = ctl.upgrade() else { return };
                        ctl.list().iter().map(|v| event(v, false)).collect()
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                for e in out {
                    // A watcher that does not read for this long is cut off rather than
                    // letting its backlog grow.
                    match tokio::time::timeout(Duration::from_secs(30), tx.send(Ok(e))).await {
                        Ok(Ok(())) => {}
                        _ => return,
                    }
                }
            }
        });
        self.counted(
            "WatchProbes",
            Ok(Response::new(
                Box::pin(ReceiverStream::new(rx)) as EventStream
            )),
        )
    }
}
