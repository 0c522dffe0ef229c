//! `gopher`: the command line. It parses the arguments and hands over to the agent
//! (`gopher::app`), the configuration check, or `gopher ctl` (`gopher::control::client`).
//! Nothing else lives here.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use gopher::{app, control::client};

#[derive(Debug, Parser)]
#[command(
    name = "gopher",
    version,
    about = "Host-resident node agent: eBPF and extension probes exported to Prometheus and Kafka"
)]
struct Cli {
    /// Configuration file to run with (the packages' path: /etc/gopher-agent, since Debian's
    /// `gopher` client owns /etc/gopher).
    #[arg(long, short, default_value = "/etc/gopher-agent/probes.toml")]
    config: PathBuf,
    /// Validate FILE and exit: 0 when valid, 1 with every error (file:line:col: key: why).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// TLS and basic auth for /metrics: an exporter-toolkit web configuration file (as
    /// node_exporter's flag); overrides [web_server] web_config_file.
    #[arg(long = "web.config.file", value_name = "FILE")]
    web_config_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Talk to a running agent over its control channel: list, get, set, reset, watch.
    Ctl(client::CtlArgs),
    /// Preflight for `--config`: privileges, kernel, cgroup2, BTF, ports, Kafka brokers,
    /// extension probe commands; one line per problem, exit 1 when there is any.
    Check {
        /// Configuration file to check the host for (default: the agent's `--config`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write the probes.toml equivalent of gala-gopher's gala-gopher.conf (to OUT or stdout).
    Convert {
        /// gala-gopher's configuration file (libconfig).
        file: PathBuf,
        /// Where to write probes.toml; stdout when absent.
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // Before any thread starts: the arena limit applies to arenas made from here on.
    gopher::mem::tune();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Ctl(args)) => return ctl(args),
        Some(Command::Check { config }) => return app::check(&config.unwrap_or(cli.config)),
        Some(Command::Convert { file, out }) => return app::convert(&file, out.as_deref()),
        None => {}
    }
    if let Some(path) = cli.check_config {
        return app::check_config(&path);
    }
    app::run_agent(&cli.config, cli.web_config_file.as_deref())
}

fn ctl(args: client::CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gopher ctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(client::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A refusal from the agent reads better as its gRPC code and message.
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("gopher ctl: {:?}: {}", s.code(), s.message()),
                None => eprintln!("gopher ctl: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
