//! `gopher ctl`: the control channel from a shell, for people (`--output text`) and scripts
//! (`--output json`, one object per probe or event), to one agent or several at once (the
//! same request to each, concurrently; answers merged in the order the hosts were given).
//! Where the agents are and how to reach them: [`super::target`]; printing: [`super::print`].

use std::path::PathBuf;

use anyhow::Context as _;
use tokio::{sync::mpsc, task::JoinSet};
use tonic::{Request, metadata::MetadataValue, service::interceptor::InterceptedService};

use super::grpc::pb::{self, probe_control_client::ProbeControlClient};
pub use super::print::Output;
use super::print::{Answer, error_text, print_answers, print_event};
use super::target::{self, Plan, Target, Tls, Wanted};

/// Adds the bearer token to every call.
type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, tonic::Status> + Send>;
type Client = ProbeControlClient<InterceptedService<tonic::transport::Channel, AddToken>>;

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The agent's config, for its control address, token file and TLS (default
    /// /etc/gopher-agent/probes.toml when it exists).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The agent's control address: host:port, or a URL (https:// when it serves TLS).
    /// Default: the config's control.listen.
    #[arg(long)]
    pub addr: Option<String>,
    /// Several agents at once, host:port,host:port (repeatable); answers are merged, one
    /// line per host and probe.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub hosts: Vec<String>,
    /// A file listing agents, one host:port per line (# comments).
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// File whose first line is the bearer token (default: the config's control.token_file).
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
    /// Name expected in the agent's certificate (default: the host in the address).
    #[arg(long)]
    pub tls_name: Option<String>,
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Debug, Clone, clap::Subcommand)]
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

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let plan = target::plan(&Wanted {
        config: args.config.as_deref(),
        addr: args.addr.as_deref(),
        hosts: &args.hosts,
        inventory: args.inventory.as_deref(),
        token_file: args.token_file.as_deref(),
        tls: Tls {
            enabled: args.ca.is_some() || args.cert.is_some(),
            ca: args.ca.clone(),
            cert_key: args.cert.clone().zip(args.key.clone()),
            name: args.tls_name.clone(),
        },
    })?;
    if let CtlCmd::Watch { no_initial } = args.cmd {
        return watch(&plan, !no_initial, args.output).await;
    }
    let mut asks = JoinSet::new();
    for (i, t) in plan.targets.iter().enumerate() {
        let (t, tls, token, cmd) = (
            t.clone(),
            plan.tls.clone(),
            plan.token.clone(),
            args.cmd.clone(),
        );
        asks.spawn(async move {
            let probes = async {
                let mut c = client(&t, &tls, token).await?;
                ask(&mut c, cmd).await
            }
            .await;
            (
                i,
                Answer {
                    host: t.host,
                    probes,
                },
            )
        });
    }
    let mut answers: Vec<(usize, Answer)> = asks.join_all().await;
    answers.sort_by_key(|(i, _)| *i);
    let mut answers: Vec<Answer> = answers.into_iter().map(|(_, a)| a).collect();
    if !plan.many
        && let Some(Answer { probes: Err(_), .. }) = answers.first()
        && let Some(Answer { probes: Err(e), .. }) = answers.pop()
    {
        // One agent: its refusal is the command's error (`gopher ctl: NotFound: …`).
        return Err(e);
    }
    print_answers(&answers, args.output, plan.many)?;
    let failed = answers.iter().filter(|a| a.probes.is_err()).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} agents did not answer", answers.len());
    }
    Ok(())
}

async fn client(t: &Target, tls: &Tls, token: Option<String>) -> anyhow::Result<Client> {
    let channel = target::connect(t, tls).await?;
    let header = token
        .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
        .transpose()
        .context("the token has characters a header cannot carry")?;
    let auth: AddToken = Box::new(move |mut req: Request<()>| {
        if let Some(v) = &header {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    });
    Ok(ProbeControlClient::with_interceptor(channel, auth))
}

/// One request to one agent (every command but `watch`).
async fn ask(client: &mut Client, cmd: CtlCmd) -> anyhow::Result<Vec<pb::Probe>> {
    Ok(match cmd {
        CtlCmd::List => {
            client
                .list_probes(pb::ListProbesRequest {})
                .await?
                .into_inner()
                .probes
        }
        CtlCmd::Get { name } => vec![
            client
                .get_probe(pb::GetProbeRequest { name })
                .await?
                .into_inner(),
        ],
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
            vec![
                client
                    .set_probe(pb::SetProbeRequest {
                        name,
                        switch,
                        interval_seconds: interval,
                        params,
                    })
                    .await?
                    .into_inner(),
            ]
        }
        CtlCmd::Reset { name } => vec![
            client
                .reset_probe(pb::ResetProbeRequest { name })
                .await?
                .into_inner(),
        ],
        CtlCmd::Watch { .. } => Vec::new(),
    })
}

/// Every agent's changes as they come, each line marked with its host when there are several.
/// Ends when every stream has ended; an agent that cannot be watched is reported on stderr.
async fn watch(plan: &Plan, initial: bool, out: Output) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(String, anyhow::Result<pb::ProbeEvent>)>(256);
    for t in &plan.targets {
        let (t, tls, token, tx) = (t.clone(), plan.tls.clone(), plan.token.clone(), tx.clone());
        tokio::spawn(async move {
            let streamed = async {
                let mut c = client(&t, &tls, token).await?;
                let mut stream = c
                    .watch_probes(pb::WatchProbesRequest { initial })
                    .await?
                    .into_inner();
                while let Some(e) = stream.message().await? {
                    if tx.send((t.host.clone(), Ok(e))).await.is_err() {
                        break;
                    }
                }
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = streamed {
                let _ = tx.send((t.host.clone(), Err(e))).await;
            }
        });
    }
    drop(tx);
    let mut failed = 0;
    while let Some((host, event)) = rx.recv().await {
        match event {
            Ok(e) => print_event(plan.many.then_some(host.as_str()), &e, out)?,
            Err(e) if !plan.many => return Err(e),
            Err(e) => {
                failed += 1;
                eprintln!("gopher ctl: {host}: {}", error_text(&e));
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} agents could not be watched",
            plan.targets.len()
        );
    }
    Ok(())
}
