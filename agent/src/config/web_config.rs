//! The web configuration file of `/metrics` (`[web_server] web_config_file`), in the shape of
//! Prometheus' exporter-toolkit (`--web.config.file` of node_exporter and the other exporters),
//! so that one file and one habit serve every exporter on a node:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # relative paths: from this file's directory
//!   key_file: server.key
//!   client_ca_file: ca.crt       # with client_auth_type: RequireAndVerifyClientCert
//!   client_auth_type: RequireAndVerifyClientCert
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...       # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! Keys gopher cannot honour (cipher_suites, curve_preferences, RequestClientCert: rustls has
//! no such knobs or does not verify-less client certificates) are refused by name rather than
//! ignored: a setting that silently does nothing is a surprise in a security file.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// How a client certificate is asked for (exporter-toolkit's `client_auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    #[default]
    None,
    /// A certificate, when given, must be signed by `client_ca_file`.
    VerifyIfGiven,
    /// A certificate signed by `client_ca_file` is required.
    RequireAndVerify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServer {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebConfig {
    pub tls: Option<TlsServer>,
    /// User name → bcrypt hash.
    pub basic_auth_users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tls_server_config: Option<RawTls>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    /// exporter-toolkit's HTTP/2 and header settings; gopher serves HTTP/1.1 only.
    http_server_config: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<serde_yaml_ng::Value>,
    curve_preferences: Option<serde_yaml_ng::Value>,
    prefer_server_cipher_suites: Option<serde_yaml_ng::Value>,
    client_allowed_sans: Option<serde_yaml_ng::Value>,
}

fn version(v: Option<&str>, default: TlsVersion, key: &str) -> Result<TlsVersion, String> {
    match v {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(other @ ("TLS10" | "TLS11")) => Err(format!(
            "tls_server_config.{key}: {other} is not supported (TLS12 or TLS13)"
        )),
        Some(other) => Err(format!(
            "tls_server_config.{key}: expected TLS12 or TLS13, found {other:?}"
        )),
    }
}

fn tls(raw: RawTls, dir: &Path) -> Result<Option<TlsServer>, String> {
    let unsupported = [
        ("cipher_suites", raw.cipher_suites.is_some()),
        ("curve_preferences", raw.curve_preferences.is_some()),
        (
            "prefer_server_cipher_suites",
            raw.prefer_server_cipher_suites.is_some(),
        ),
        ("client_allowed_sans", raw.client_allowed_sans.is_some()),
    ];
    if let Some((key, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(format!(
            "tls_server_config.{key}: not supported by gopher (rustls chooses safe suites and \
             curves itself); remove the key"
        ));
    }
    let path = |p: Option<String>| p.filter(|p| !p.is_empty()).map(|p| dir.join(p));
    let (cert, key) = (path(raw.cert_file), path(raw.key_file));
    let client_ca_file = path(raw.client_ca_file);
    let client_auth = match raw.client_auth_type.as_deref().unwrap_or("") {
        "" | "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
        other @ ("RequestClientCert" | "RequireAnyClientCert") => {
            return Err(format!(
                "tls_server_config.client_auth_type: {other} (certificates not verified) is not \
                 supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            ));
        }
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type: unknown value {other:?} (NoClientCert, \
                 VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
            ));
        }
    };
    if client_auth != ClientAuth::None && client_ca_file.is_none() {
        return Err(
            "tls_server_config.client_ca_file: required to verify client \
                    certificates"
                .to_owned(),
        );
    }
    let min_version = version(raw.min_version.as_deref(), TlsVersion::Tls12, "min_version")?;
    let max_version = version(raw.max_version.as_deref(), TlsVersion::Tls13, "max_version")?;
    if min_version > max_version {
        return Err("tls_server_config: min_version is above max_version".to_owned());
    }
    match (cert, key) {
        (None, None) if client_ca_file.is_none() => Ok(None),
        (Some(cert_file), Some(key_file)) => Ok(Some(TlsServer {
            cert_file,
            key_file,
            client_ca_file,
            client_auth,
            min_version,
            max_version,
        })),
        _ => Err("tls_server_config: cert_file and key_file go together".to_owned()),
    }
}

/// Reads and checks the file; relative paths in it are resolved from its directory.
pub fn load_web_config(path: &Path) -> Result<WebConfig, WebConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_web_config(&text, path)
}

pub fn parse_web_config(text: &str, path: &Path) -> Result<WebConfig, WebConfigError> {
    let invalid = |message: String| WebConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    // An empty file (or one with only comments) is the empty configuration, as in Go.
    let raw: Option<RawFile> = serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let Some(raw) = raw else {
        return Ok(WebConfig::default());
    };
    if raw.http_server_config.is_some() {
        return Err(invalid(
            "http_server_config: not supported by gopher (HTTP/1.1 only); remove the key".into(),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tls = raw
        .tls_server_config
        .map(|t| tls(t, dir))
        .transpose()
        .map_err(invalid)?;
    let users = raw.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        if user.contains(':') {
            return Err(invalid(format!(
                "basic_auth_users: user name {user:?} contains ':'"
            )));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(invalid(format!(
                "basic_auth_users.{user}: not a bcrypt hash ($2y$…); make one with \
                 `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
            )));
        }
    }
    Ok(WebConfig {
        tls: tls.flatten(),
        basic_auth_users: users,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$04$Vn2L2rSFQY8C0ZHC/fhp9O04vW5tAdE6c.qYYxh6pbpj6jHJTj5ty";

    #[test]
    fn exporter_toolkit_files_read_with_paths_from_their_directory() {
        let text = format!(
            "tls_server_config:\n  cert_file: s.crt\n  key_file: /k/s.key\n  client_ca_file: ca.crt\n  \
             client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n\
             basic_auth_users:\n  prom: {HASH}\n"
        );
        let c = parse_web_config(&text, Path::new("/etc/gopher/web.yml")).unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.cert_file, Path::new("/etc/gopher/s.crt"));
        assert_eq!(t.key_file, Path::new("/k/s.key"));
        assert_eq!(t.client_auth, ClientAuth::RequireAndVerify);
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert_eq!(c.basic_auth_users["prom"], HASH);
        assert_eq!(
            parse_web_config("# nothing\n", Path::new("w.yml")).unwrap(),
            WebConfig::default()
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        for (text, says) in [
            ("tls_server_config:\n  cert_file: a\n", "go together"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n",
                "cipher_suites",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n",
                "TLS10",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
                "client_ca_file",
            ),
            ("basic_auth_users:\n  u: plain\n", "bcrypt"),
            ("bogus: 1\n", "bogus"),
        ] {
            let e = parse_web_config(text, Path::new("w.yml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
