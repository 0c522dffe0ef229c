//! `gopher ctl`: the control channel from a shell, for people (`--output text`) and scripts
//! (`--output json`, one object per probe or event).

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::grpc::pb::{self, probe_control_client::ProbeControlClient};

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The agent's control address (https:// when it serves TLS).
    #[arg(long, default_value = "http://127.0.0.1:8889")]
    pub addr: String,
    /// File whose first line is the bearer token (control.token_file on the agent).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) the agent's certificate is checked against.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for agents that require mTLS.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name expected in the agent's certificate (default: the host in --addr).
    #[arg(long)]
    pub tls_name: Option<String>,
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum CtlCmd {
    /// Every probe with its state.
    List,
    /// One probe.
    Get { name: String },
    /// Changes a probe and waits until the change is applied.
    Set {
        name: String,
        #[arg(long, value_parser = ["on", "off", "auto"])]
        switch: Option<String>,
        /// Seconds between reports (native probes).
        #[arg(long)]
        interval: Option<u32>,
        /// KEY=VALUE, repeatable; VALUE is read as TOML (65536, true, "text") and otherwise as
        /// a string. Merged into the current params. Extension probes: param=ARGS.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Start from empty params instead of the current ones.
        #[arg(long)]
        clear_params: bool,
    },
    /// Drops runtime changes: back to the configuration file.
    Reset { name: String },
    /// Prints state changes as they happen (Ctrl-C ends).
    Watch {
        /// Only changes, not every probe's current state first.
        #[arg(long)]
        no_initial: bool,
    },
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let token = args
        .token_file
        .as_deref()
        .map(super::server::read_token)
        .transpose()?;
    let channel = connect(&args).await?;
    let auth = move |mut req: Request<()>| {
        if let Some(t) = &token
            && let Ok(v) = MetadataValue::try_from(format!("Bearer {t}"))
        {
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    };
    let mut client = ProbeControlClient::with_interceptor(channel, auth);
    let out = args.output;
    match args.cmd {
        CtlCmd::List => {
            let probes = client
                .list_probes(pb::ListProbesRequest {})
                .await?
                .into_inner()
                .probes;
            print_probes(&probes, out)?;
        }
        CtlCmd::Get { name } => {
            let p = client
                .get_probe(pb::GetProbeRequest { name })
                .await?
                .into_inner();
            print_probes(&[p], out)?;
        }
        CtlCmd::Set {
            name,
            switch,
            interval,
            params,
            clear_params,
        } => {
            let params = if params.is_empty() && !clear_params {
                None
            } else {
                let mut values = if clear_params {
                    std::collections::HashMap::new()
                } else {
                    client
                        .get_probe(pb::GetProbeRequest { name: name.clone() })
                        .await?
                        .into_inner()
                        .params
                        .map(|p| p.values)
                        .unwrap_or_default()
                };
                for kv in &params {
                    let (k, v) = parse_param(kv)?;
                    values.insert(k, v);
                }
                Some(pb::Params { values })
            };
            let switch = switch.map(|s| {
                let s = match s.as_str() {
                    "on" => pb::Switch::On,
                    "off" => pb::Switch::Off,
                    _ => pb::Switch::Auto,
                };
                s as i32
            });
            let p = client
                .set_probe(pb::SetProbeRequest {
                    name,
                    switch,
                    interval_seconds: interval,
                    params,
                })
                .await?
                .into_inner();
            print_probes(&[p], out)?;
        }
        CtlCmd::Reset { name } => {
            let p = client
                .reset_probe(pb::ResetProbeRequest { name })
                .await?
                .into_inner();
            print_probes(&[p], out)?;
        }
        CtlCmd::Watch { no_initial } => {
            let mut stream = client
                .watch_probes(pb::WatchProbesRequest {
                    initial: !no_initial,
                })
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                print_event(&e, out)?;
            }
        }
    }
    Ok(())
}

async fn connect(args: &CtlArgs) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(args.addr.clone()).with_context(|| {
        format!(
            "--addr {:?}: not a URL such as http://127.0.0.1:8889",
            args.addr
        )
    })?;
    if args.addr.starts_with("https://") || args.ca.is_some() || args.cert.is_some() {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            let c = std::fs::read(cert).with_context(|| format!("--cert {}", cert.display()))?;
            let k = std::fs::read(key).with_context(|| format!("--key {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(c, k));
        }
        if let Some(name) = &args.tls_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to the agent at {}", args.addr))
}

/// `KEY=VALUE` with VALUE read as a TOML value when it is one (65536, true, "x"), else a string.
pub fn parse_param(kv: &str) -> anyhow::Result<(String, pb::ParamValue)> {
    use pb::param_value::Value as V;
    let (k, v) = kv
        .split_once('=')
        .with_context(|| format!("--param {kv:?}: expected KEY=VALUE"))?;
    let value = match toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
    {
        Some(toml::Value::Integer(i)) => V::IntValue(i),
        Some(toml::Value::Boolean(b)) => V::BoolValue(b),
        Some(toml::Value::Float(f)) => V::FloatValue(f),
        Some(toml::Value::String(s)) => V::StringValue(s),
        _ => V::StringValue(v.to_owned()),
    };
    Ok((k.trim().to_owned(), pb::ParamValue { value: Some(value) }))
}

fn word<T: Into<i32> + Copy>(raw: i32, names: &[(T, &'static str)]) -> &'static str {
    names
        .iter()
        .find(|(v, _)| (*v).into() == raw)
        .map_or("unknown", |(_, n)| n)
}

fn switch_word(raw: i32) -> &'static str {
    word(
        raw,
        &[
            (pb::Switch::On, "on"),
            (pb::Switch::Off, "off"),
            (pb::Switch::Auto, "auto"),
        ],
    )
}

fn state_word(raw: i32) -> &'static str {
    word(
        raw,
        &[
            (pb::RunState::Stopped, "stopped"),
            (pb::RunState::Starting, "starting"),
            (pb::RunState::Running, "running"),
            (pb::RunState::Failed, "failed"),
        ],
    )
}

fn kind_word(raw: i32) -> &'static str {
    word(
        raw,
        &[
            (pb::ProbeKind::Native, "native"),
            (pb::ProbeKind::Extension, "extension"),
        ],
    )
}

fn param_json(v: &pb::ParamValue) -> serde_json::Value {
    use pb::param_value::Value as V;
    match &v.value {
        Some(V::StringValue(s)) => serde_json::Value::from(s.as_str()),
        Some(V::IntValue(i)) => serde_json::Value::from(*i),
        Some(V::BoolValue(b)) => serde_json::Value::from(*b),
        Some(V::FloatValue(f)) => serde_json::Value::from(*f),
        None => serde_json::Value::Null,
    }
}

fn param_text(v: &pb::ParamValue) -> String {
    use pb::param_value::Value as V;
    match &v.value {
        Some(V::StringValue(s)) => format!("{s:?}"),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::FloatValue(f)) => f.to_string(),
        None => String::new(),
    }
}

pub fn probe_json(p: &pb::Probe) -> serde_json::Value {
    let params: serde_json::Map<String, serde_json::Value> = p
        .params
        .iter()
        .flat_map(|ps| ps.values.iter())
        .map(|(k, v)| (k.clone(), param_json(v)))
        .collect();
    serde_json::json!({
        "name": p.name,
        "kind": kind_word(p.kind),
        "switch": switch_word(p.switch),
        "state": state_word(p.state),
        "reason": p.reason,
        "interval_seconds": p.interval_seconds,
        "params": params,
        "pid": p.pid,
        "rows": p.rows,
        "last_error": p.last_error,
        "command": p.command,
        "overridden": p.overridden,
        "tables": p.tables,
    })
}

fn print_probes(probes: &[pb::Probe], out: Output) -> anyhow::Result<()> {
    let mut w = std::io::stdout().lock();
    match out {
        Output::Json => {
            let all: Vec<_> = probes.iter().map(probe_json).collect();
            serde_json::to_writer_pretty(&mut w, &all)?;
            writeln!(w)?;
        }
        Output::Text => {
            writeln!(
                w,
                "{:<16} {:<9} {:<6} {:<9} {:>8} {:>10} {:>8}  PARAMS / REASON",
                "NAME", "KIND", "SWITCH", "STATE", "PID", "ROWS", "INTERVAL"
            )?;
            for p in probes {
                let mut params: Vec<String> = p
                    .params
                    .iter()
                    .flat_map(|ps| ps.values.iter())
                    .map(|(k, v)| format!("{k}={}", param_text(v)))
                    .collect();
                params.sort();
                let mut extra = params.join(" ");
                if !p.reason.is_empty() {
                    extra = format!("{extra} ({})", p.reason);
                }
                if p.overridden {
                    extra.push_str(" [runtime]");
                }
                writeln!(
                    w,
                    "{:<16} {:<9} {:<6} {:<9} {:>8} {:>10} {:>8}  {}",
                    p.name,
                    kind_word(p.kind),
                    switch_word(p.switch),
                    state_word(p.state),
                    p.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    p.rows,
                    if p.interval_seconds == 0 {
                        "-".to_owned()
                    } else {
                        format!("{}s", p.interval_seconds)
                    },
                    extra.trim()
                )?;
            }
        }
    }
    Ok(())
}

fn print_event(e: &pb::ProbeEvent, out: Output) -> anyhow::Result<()> {
    let mut w = std::io::stdout().lock();
    let Some(p) = &e.probe else {
        return Ok(());
    };
    match out {
        Output::Json => {
            let mut v = probe_json(p);
            if let Some(o) = v.as_object_mut() {
                o.insert("timestamp_ms".into(), e.timestamp_ms.into());
                o.insert("removed".into(), e.removed.into());
            }
            serde_json::to_writer(&mut w, &v)?;
            writeln!(w)?;
        }
        Output::Text => writeln!(
            w,
            "{} {} switch={} state={}{}{}{}",
            e.timestamp_ms,
            p.name,
            switch_word(p.switch),
            state_word(p.state),
            p.pid.map_or_else(String::new, |pid| format!(" pid={pid}")),
            if p.reason.is_empty() {
                String::new()
            } else {
                format!(" reason={:?}", p.reason)
            },
            if e.removed { " removed" } else { "" }
        )?,
    }
    w.flush()?;
    Ok(())
}
