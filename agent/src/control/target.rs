//! Which agents `gopher ctl` talks to, and how: addresses from `--addr`, `--hosts` or an
//! inventory file, else the agent's own config (`--config`, default the packaged path), which
//! also gives the token file and whether the channel serves TLS. A bare `host:port` needs no
//! URL scheme.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{self, Control};

/// Where the packages install the agent's config; read when `--config` is not given (and
/// skipped when absent, e.g. in a checkout).
pub const DEFAULT_CONFIG: &str = "/etc/gopher-agent/probes.toml";

/// How long connecting to one agent may take before it is reported as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection settings shared by every target (from the command line, else the config).
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub enabled: bool,
    pub ca: Option<PathBuf>,
    pub cert_key: Option<(PathBuf, PathBuf)>,
    pub name: Option<String>,
}

/// One agent to talk to.
#[derive(Debug, Clone)]
pub struct Target {
    /// As the user wrote it (or the config's `listen`): how answers are labelled.
    pub host: String,
    pub url: String,
}

/// Everything resolved before the first connection.
#[derive(Debug)]
pub struct Plan {
    pub targets: Vec<Target>,
    pub token: Option<String>,
    pub tls: Tls,
    /// Several agents (answers get a host column).
    pub many: bool,
}

/// What the command line said; `None`s are taken from the config.
pub struct Wanted<'a> {
    pub config: Option<&'a Path>,
    pub addr: Option<&'a str>,
    pub hosts: &'a [String],
    pub inventory: Option<&'a Path>,
    pub token_file: Option<&'a Path>,
    pub tls: Tls,
}

/// The agent's control settings: from `path` when given (it must be readable), else from
/// [`DEFAULT_CONFIG`] when it exists and is readable, else the built-in defaults.
fn control_config(path: Option<&Path>) -> anyhow::Result<Control> {
    let (path, required) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CONFIG), false),
    };
    match config::load(path) {
        Ok(cfg) => Ok(cfg.control),
        // Not installed (a checkout), or root's alone (0640) and the user was given only the
        // token: the built-in defaults, which name the packaged token file.
        Err(config::ConfigError::Read { source, .. })
            if !required
                && matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
        {
            Ok(Control::default())
        }
        Err(e) => Err(anyhow::anyhow!("{e}")).with_context(|| {
            format!(
                "reading the agent's config {} (for its control address, token and TLS; \
                 readable by root)",
                path.display()
            )
        }),
    }
}

/// Hosts from an inventory file: one `host:port` (or URL) per line; blank lines and `#`
/// comments skipped, as in an Ansible-style flat list.
fn inventory(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--inventory {}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// `listen` as an address to dial: a wildcard listener is reached on loopback.
fn dial_addr(c: &Control) -> String {
    let mut addr = c.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr.to_string()
}

/// `host:port` or a URL; without a scheme, `https://` when TLS is on, else `http://`.
pub fn url_of(host: &str, tls: bool) -> String {
    if host.contains("://") {
        host.to_owned()
    } else if tls {
        format!("https://{host}")
    } else {
        format!("http://{host}")
    }
}

pub fn plan(w: &Wanted<'_>) -> anyhow::Result<Plan> {
    let control = control_config(w.config)?;
    let mut tls = w.tls.clone();
    // The config's TLS only tells that the agent serves TLS; which CA signed its certificate
    // is the client's to say (--ca), or the system's roots.
    tls.enabled |= control.tls();
    let mut hosts: Vec<String> = w
        .hosts
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(path) = w.inventory {
        hosts.extend(inventory(path)?);
    }
    let many = !hosts.is_empty();
    if let Some(addr) = w.addr {
        hosts.insert(0, addr.to_owned());
    }
    if hosts.is_empty() {
        hosts.push(dial_addr(&control));
    }
    tls.enabled |= hosts.iter().any(|h| h.starts_with("https://"));
    let token_file = w
        .token_file
        .map(Path::to_path_buf)
        .or_else(|| control.token_file.clone());
    let token = token_file
        .as_deref()
        .map(super::auth::read_token)
        .transpose()
        .context("the control channel's token (run as root, or pass --token-file)")?;
    let targets = hosts
        .into_iter()
        .map(|host| Target {
            url: url_of(&host, tls.enabled),
            host,
        })
        .collect::<Vec<_>>();
    Ok(Plan {
        many: many || targets.len() > 1,
        targets,
        token,
        tls,
    })
}

pub async fn connect(target: &Target, tls: &Tls) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(target.url.clone())
        .with_context(|| {
            format!(
                "{:?}: not an address such as 127.0.0.1:8889 or https://node1:8889",
                target.host
            )
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    if target.url.starts_with("https://") {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &tls.ca {
            let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &tls.cert_key {
            let c = std::fs::read(cert).with_context(|| format!("--cert {}", cert.display()))?;
            let k = std::fs::read(key).with_context(|| format!("--key {}", key.display()))?;
            config = config.identity(Identity::from_pem(c, k));
        }
        if let Some(name) = &tls.name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(config).context("TLS settings")?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to the agent at {}", target.url))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bare_addresses_get_a_scheme() {
        assert_eq!(url_of("10.0.0.1:8889", false), "http://10.0.0.1:8889");
        assert_eq!(url_of("node1:8889", true), "https://node1:8889");
        assert_eq!(url_of("http://x:1", true), "http://x:1");
    }

    #[test]
    fn wildcard_listeners_are_dialled_on_loopback() {
        let mut c = Control {
            listen: "0.0.0.0:9000".parse().unwrap(),
            ..Control::default()
        };
        assert_eq!(dial_addr(&c), "127.0.0.1:9000");
        c.listen = "[::]:9000".parse().unwrap();
        assert_eq!(dial_addr(&c), "[::1]:9000");
    }

    #[test]
    fn hosts_come_from_the_list_and_the_inventory_with_the_configs_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "abc\n").unwrap();
        let cfg = dir.path().join("gopher.toml");
        std::fs::write(
            &cfg,
            "[control]\nlisten = \"127.0.0.1:7001\"\ntoken_file = \"token\"\n",
        )
        .unwrap();
        let inv = dir.path().join("hosts");
        std::fs::write(&inv, "# fleet\nc:3\n\n d:4 # rack 2\n").unwrap();
        let hosts = ["a:1,b:2".to_owned()];
        let p = plan(&Wanted {
            config: Some(&cfg),
            addr: None,
            hosts: &hosts,
            inventory: Some(&inv),
            token_file: None,
            tls: Tls::default(),
        })
        .unwrap();
        let urls: Vec<_> = p.targets.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(
            urls,
            ["http://a:1", "http://b:2", "http://c:3", "http://d:4"]
        );
        assert_eq!(p.token.as_deref(), Some("abc"));
        assert!(p.many);
        let p = plan(&Wanted {
            config: Some(&cfg),
            addr: None,
            hosts: &[],
            inventory: None,
            token_file: None,
            tls: Tls::default(),
        })
        .unwrap();
        assert_eq!(p.targets[0].url, "http://127.0.0.1:7001");
        assert!(!p.many);
    }
}
