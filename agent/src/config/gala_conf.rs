//! gala-gopher's own `gala-gopher.conf` (libconfig), read directly.
//!
//! A node's existing `/etc/gala-gopher/gala-gopher.conf` runs unchanged: the file is parsed with
//! the libconfig reader into the same spanned tree as `probes.toml`, translated here into the
//! `probes.toml` shape, and read by the same section readers, so every diagnostic names a line
//! of the gala-gopher file. What the translation does:
//! - `global`, `ingress`, `egress`, `imdb`, `web_server`, `kafka`: the keys both agents share
//!   are taken as they are;
//! - `probes` (gala-gopher's built-in probes): the `system_*` ones become gopher's native probes
//!   of the same name;
//! - `extend_probes`: `tcp` (gala-gopher's tcpprobe) becomes the native `tcp` probe; the others
//!   stay extension probes, command, param, switch and start check as they are;
//! - `/opt/gala-gopher/meta` (gala-gopher's meta directory), if present, is loaded;
//! - gala-gopher HEAD's `global.rest_api_on` and `rest_api_server { bind_addr; port; }`
//!   become `[rest_api]` (`switch`, `listen`), and with `ssl_auth = "on"` its `cert_file`,
//!   `private_key`, `ca_file` become `tls_cert`, `tls_key`, `tls_client_ca`;
//! - gopher's own sections (`control`, `supervision`, `meta`) may be added in libconfig form.
//!
//! Nothing is dropped silently: a probe gopher does not have (a built-in probe it lacks, an
//! extend probe whose program is not on this node) and every setting it does not use are named
//! in [`GalaNotes`], which the agent logs once as a warning and `--check-config` and
//! `gopher convert` print.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::node::{Entry, Node};
use super::probes::NATIVE_PROBES;

/// gala-gopher's meta directory (its tables' definitions for extend probes).
pub const GALA_META_DIR: &str = "/opt/gala-gopher/meta";

/// The keys taken from each section, as both agents name them.
const SHARED_KEYS: &[(&str, &[&str])] = &[
    ("global", &["log_directory", "log_level"]),
    ("ingress", &["interval"]),
    ("egress", &["interval", "time_range"]),
    (
        "imdb",
        &[
            "max_tables_num",
            "max_records_num",
            "max_metrics_num",
            "record_timeout",
        ],
    ),
    ("web_server", &["bind_addr", "port"]),
    (
        "kafka",
        &[
            "kafka_broker",
            "kafka_topic",
            "switch",
            "batch_num_messages",
            "queue_buffering_max_messages",
            "queue_buffering_max_kbytes",
            "queue_buffering_max_ms",
            "compression_codec",
        ],
    ),
];

/// gopher's own sections, which gala-gopher never had: accepted in libconfig form as they are,
/// so that a gala-gopher.conf can also set what only gopher has (e.g. the control channel).
const GOPHER_SECTIONS: &[&str] = &["control", "supervision", "meta", "rest_api"];

/// What the translation could not carry over, for one warning each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GalaNotes {
    /// Probes of the file that gopher does not run, each with why.
    pub probes_not_run: Vec<String>,
    /// Extend probes kept whose program is not on this node (they will fail to start).
    pub programs_missing: Vec<String>,
    /// Settings gopher has no use for (`section.key`).
    pub settings_ignored: Vec<String>,
}

impl GalaNotes {
    /// One line per kind of note, for logs and `--check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.probes_not_run.is_empty() {
            out.push(format!(
                "gala-gopher.conf: gopher has no probe for {} (not run)",
                self.probes_not_run.join("; ")
            ));
        }
        if !self.programs_missing.is_empty() {
            out.push(format!(
                "gala-gopher.conf: extend probes whose program is not on this node (they will fail to start when switched on): {}",
                self.programs_missing.join("; ")
            ));
        }
        if !self.settings_ignored.is_empty() {
            out.push(format!(
                "gala-gopher.conf: settings gopher does not use (ignored): {}",
                self.settings_ignored.join(", ")
            ));
        }
        out
    }
}

/// Whether a config file is gala-gopher's libconfig form: by extension (`.conf` yes, `.toml`
/// no), else by content (a top-level group or list assignment `name = {` / `name = (`, or a
/// statement ended by `;`, none of which TOML allows).
pub fn is_gala_conf(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("conf") => return true,
        Some("toml") => return false,
        _ => {}
    }
    text.lines().map(str::trim).any(|l| {
        !l.starts_with('#')
            && (l.ends_with(';')
                || l.ends_with("= (")
                || l.ends_with("=(")
                || l.ends_with("= {")
                || l.ends_with("={"))
    })
}

fn entry(name: &str, span: &Range<usize>, node: Node) -> Entry {
    (
        Spanned::new(span.clone(), name.to_owned()),
        Spanned::new(span.clone(), node),
    )
}

fn field<'a>(entries: &'a [Entry], key: &str) -> Option<&'a Spanned<Node>> {
    entries
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

fn text<'a>(entries: &'a [Entry], key: &str) -> Option<&'a str> {
    match field(entries, key).map(Spanned::get_ref) {
        Some(Node::Str(s)) => Some(s),
        _ => None,
    }
}

/// Translates the libconfig tree of a gala-gopher.conf into the `probes.toml` tree.
pub(crate) fn translate(root: Vec<Entry>, notes: &mut GalaNotes) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut probes: Vec<Spanned<Node>> = Vec::new();
    let mut extend: Vec<Spanned<Node>> = Vec::new();
    let mut rest = Rest::default();
    for (key, value) in root {
        let name = key.get_ref().as_str();
        if let Some((_, keys)) = SHARED_KEYS.iter().find(|(s, _)| *s == name) {
            if let Node::Table(entries) = value.get_ref() {
                let mut kept = Vec::new();
                for (k, v) in entries {
                    if name == "global" && k.get_ref() == "rest_api_on" {
                        rest.on = Some(v.clone());
                    } else if keys.contains(&k.get_ref().as_str()) {
                        kept.push((k.clone(), v.clone()));
                    } else {
                        notes
                            .settings_ignored
                            .push(format!("{name}.{}", k.get_ref()));
                    }
                }
                let span = value.span();
                out.push((key, Spanned::new(span, Node::Table(kept))));
            } else {
                // Not a group: let the section reader report the type.
                out.push((key, value));
            }
            continue;
        }
        if GOPHER_SECTIONS.contains(&name) {
            out.push((key, value));
            continue;
        }
        match (name, value.get_ref()) {
            ("probes", Node::Array(items)) => {
                for item in items {
                    native(item, &mut probes, notes);
                }
            }
            ("rest_api_server", Node::Table(entries)) => {
                for (k, v) in entries {
                    match k.get_ref().as_str() {
                        "bind_addr" => rest.bind_addr = Some(v.clone()),
                        "port" => rest.port = Some(v.clone()),
                        "ssl_auth" => rest.ssl_auth = Some(v.clone()),
                        "cert_file" => rest.cert_file = Some(v.clone()),
                        "private_key" => rest.private_key = Some(v.clone()),
                        "ca_file" => rest.ca_file = Some(v.clone()),
                        other => notes
                            .settings_ignored
                            .push(format!("rest_api_server.{other}")),
                    }
                }
            }
            ("extend_probes", Node::Array(items)) => {
                for item in items {
                    extend_probe(item, &mut probes, &mut extend, notes);
                }
            }
            _ => notes.settings_ignored.push(name.to_owned()),
        }
    }
    if let Some(section) = rest.section(notes) {
        out.push(section);
    }
    let span = 0..0;
    if !probes.is_empty() {
        out.push(entry("probes", &span, Node::Array(probes)));
    }
    if !extend.is_empty() {
        out.push(entry("extend_probes", &span, Node::Array(extend)));
    }
    if Path::new(GALA_META_DIR).is_dir() && !out.iter().any(|(k, _)| k.get_ref() == "meta") {
        let dirs = Node::Array(vec![Spanned::new(
            span.clone(),
            Node::Str(GALA_META_DIR.to_owned()),
        )]);
        out.push(entry(
            "meta",
            &span,
            Node::Table(vec![entry("dirs", &span, dirs)]),
        ));
    }
    out
}

/// gala-gopher HEAD's REST server: `global.rest_api_on` and `rest_api_server { bind_addr; port;
/// ssl_auth; private_key; cert_file; ca_file; }`.
#[derive(Default)]
struct Rest {
    on: Option<Spanned<Node>>,
    bind_addr: Option<Spanned<Node>>,
    port: Option<Spanned<Node>>,
    ssl_auth: Option<Spanned<Node>>,
    cert_file: Option<Spanned<Node>>,
    private_key: Option<Spanned<Node>>,
    ca_file: Option<Spanned<Node>>,
}

impl Rest {
    /// `ssl_auth = "on"`: the files become `tls_cert`, `tls_key`, `tls_client_ca` (read, and
    /// checked, as `[rest_api]`'s); "on" without a certificate and key is named in the warning,
    /// since the API then serves plain HTTP.
    fn tls_entries(&self, entries: &mut Vec<Entry>, notes: &mut GalaNotes) {
        let on = match self.ssl_auth.as_ref().map(Spanned::get_ref) {
            Some(Node::Str(s)) => s == "on",
            Some(Node::Bool(b)) => *b,
            _ => false,
        };
        let given = |n: &Option<Spanned<Node>>| {
            n.as_ref()
                .filter(|n| !matches!(n.get_ref(), Node::Str(s) if s.is_empty()))
                .cloned()
        };
        if !on {
            return;
        }
        let (cert, key) = (given(&self.cert_file), given(&self.private_key));
        if cert.is_none() && key.is_none() {
            notes.settings_ignored.push(
                "rest_api_server.ssl_auth (on, but no cert_file and private_key: plain HTTP)"
                    .to_owned(),
            );
            return;
        }
        for (name, node) in [
            ("tls_cert", cert),
            ("tls_key", key),
            ("tls_client_ca", given(&self.ca_file)),
        ] {
            if let Some(node) = node {
                entries.push(entry(name, &node.span(), node.get_ref().clone()));
            }
        }
    }

    /// The `[rest_api]` they amount to (values of the wrong type are left to its reader).
    fn section(self, notes: &mut GalaNotes) -> Option<Entry> {
        let span = self.on.as_ref().map_or(0..0, Spanned::span);
        let mut entries = Vec::new();
        self.tls_entries(&mut entries, notes);
        if let Some(on) = self.on {
            let node = match on.get_ref() {
                Node::Bool(b) => Node::Str(if *b { "on" } else { "off" }.to_owned()),
                other => other.clone(),
            };
            entries.push(entry("switch", &on.span(), node));
        }
        if self.bind_addr.is_some() || self.port.is_some() {
            let ip = match self.bind_addr.as_ref().map(Spanned::get_ref) {
                Some(Node::Str(s)) => s.clone(),
                _ => "127.0.0.1".to_owned(),
            };
            let port = match self.port.as_ref().map(Spanned::get_ref) {
                Some(Node::Int(p)) => *p,
                _ => 9999,
            };
            let ip = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip
            };
            let at = self.port.or(self.bind_addr).map_or(0..0, |n| n.span());
            entries.push(entry("listen", &at, Node::Str(format!("{ip}:{port}"))));
        }
        (!entries.is_empty()).then(|| entry("rest_api", &span, Node::Table(entries)))
    }
}

/// A `probes` entry: `{ name; switch; interval; }`.
fn native(item: &Spanned<Node>, probes: &mut Vec<Spanned<Node>>, notes: &mut GalaNotes) {
    let Node::Table(entries) = item.get_ref() else {
        probes.push(item.clone());
        return;
    };
    let name = text(entries, "name").unwrap_or("?");
    if !NATIVE_PROBES.contains(&name) {
        notes
            .probes_not_run
            .push(format!("{name:?} (built-in probe of gala-gopher)"));
        return;
    }
    let kept = entries
        .iter()
        .filter(|(k, _)| matches!(k.get_ref().as_str(), "name" | "switch" | "interval"))
        .cloned()
        .collect();
    probes.push(Spanned::new(item.span(), Node::Table(kept)));
}

/// An `extend_probes` entry: `tcp` becomes the native probe, others stay as they are.
fn extend_probe(
    item: &Spanned<Node>,
    probes: &mut Vec<Spanned<Node>>,
    extend: &mut Vec<Spanned<Node>>,
    notes: &mut GalaNotes,
) {
    let Node::Table(entries) = item.get_ref() else {
        extend.push(item.clone());
        return;
    };
    let name = text(entries, "name").unwrap_or("?");
    if name == "tcp" {
        // The native probe has no start check: "auto" means "run it" for the TCP probe, which
        // applies to every node.
        let mut kept: Vec<Entry> = entries
            .iter()
            .filter(|(k, _)| k.get_ref() == "name")
            .cloned()
            .collect();
        let switch = field(entries, "switch");
        let on = match switch.map(Spanned::get_ref) {
            Some(Node::Str(s)) if s == "off" => "off",
            _ => "on",
        };
        let span = switch.map_or_else(|| item.span(), Spanned::span);
        kept.push(entry("switch", &span, Node::Str(on.to_owned())));
        probes.push(Spanned::new(item.span(), Node::Table(kept)));
        return;
    }
    let kept: Vec<Entry> = entries
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.get_ref().as_str(),
                "name" | "command" | "param" | "start_check" | "check_type" | "switch"
            )
        })
        .cloned()
        .collect();
    if let Some(program) =
        text(entries, "command").and_then(|c| c.split_whitespace().find(|w| w.starts_with('/')))
        && !Path::new(program).exists()
    {
        notes.programs_missing.push(format!("{name:?} ({program})"));
    }
    extend.push(Spanned::new(item.span(), Node::Table(kept)));
}

/// Ends a comment line with `text`, its control characters escaped: TOML refuses them in
/// comments, and a newline would end the comment (the notes quote paths from the file).
fn push_comment(out: &mut String, text: &str) {
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('\n');
}

/// The `probes.toml` text equivalent to a translated tree (`gopher convert`).
pub(crate) fn to_toml(entries: Vec<Entry>, source: &Path, notes: &GalaNotes) -> String {
    let mut out = String::from("# probes.toml converted by `gopher convert` from ");
    push_comment(&mut out, &source.display().to_string());
    for w in notes.warnings() {
        out.push_str("# NOTE: ");
        push_comment(&mut out, &w);
    }
    // Section by section, so that they come in the file's order.
    for (key, value) in entries {
        let mut section = toml::Table::new();
        section.insert(key.into_inner(), value.into_inner().into_toml());
        out.push('\n');
        // A table of strings, numbers and arrays of tables always serializes.
        out.push_str(&toml::to_string_pretty(&section).unwrap_or_default());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Found by the `libconfig` fuzz target: a control character in a quoted path (here in an
    /// extension probe's command) went verbatim into a `# NOTE:` comment, and the converted
    /// probes.toml was refused by gopher itself.
    #[test]
    fn notes_escape_control_characters() {
        let conf = "extend_probes = (\n { name = \"x\"; command = \"/nonexistent/a\u{1}b\"; param = \"\"; switch = \"off\"; }\n);\n";
        let toml = super::super::convert_gala(conf, Path::new("gala-gopher.conf")).unwrap();
        assert!(toml.contains("/nonexistent/a\\u{1}b"), "{toml}");
        super::super::parse(&toml, Path::new("probes.toml")).unwrap();
    }

    #[test]
    fn format_by_extension_then_content() {
        let gala = "web_server =\n{\n    port = 8888;\n};\n";
        let toml = "[web_server]\nport = 8888\n";
        assert!(is_gala_conf(
            Path::new("/etc/gala-gopher/gala-gopher.conf"),
            toml
        ));
        assert!(!is_gala_conf(Path::new("probes.toml"), gala));
        assert!(is_gala_conf(Path::new("/etc/gopher/config"), gala));
        assert!(is_gala_conf(Path::new("cfg"), "probes = (\n);"));
        assert!(!is_gala_conf(Path::new("/etc/gopher/config"), toml));
        assert!(!is_gala_conf(Path::new("cfg"), "# a comment;\n[kafka]\n"));
    }

    #[test]
    fn unknown_probes_and_settings_are_named() {
        let text = "global = { pin_path = \"/sys/fs/bpf\"; log_level = \"info\"; };\n\
                    taosdata = { taosdata_ip = \"x\"; };\n\
                    probes = ( { name = \"example\"; switch = \"on\"; }, \
                               { name = \"system_tcp\"; switch = \"on\"; } );\n";
        let config = super::super::parse_gala(text, Path::new("/x/gala-gopher.conf")).unwrap();
        let notes = config.gala.unwrap();
        assert_eq!(notes.probes_not_run.len(), 1);
        assert!(notes.probes_not_run[0].contains("\"example\""));
        assert_eq!(notes.settings_ignored, ["global.pin_path", "taosdata"]);
        assert_eq!(config.probes.len(), 1);
        assert_eq!(config.probes[0].name, "system_tcp");
        assert_eq!(notes.warnings().len(), 2);
    }

    #[test]
    fn head_rest_server_becomes_rest_api() {
        let text = "global = { rest_api_on = true; };\n\
                    rest_api_server = { bind_addr = \"127.0.0.1\"; port = 9998; ssl_auth = \"off\"; \
                    private_key = \"\"; cert_file = \"\"; ca_file = \"\"; };\n";
        let config = super::super::parse_gala(text, Path::new("/x/gala-gopher.conf")).unwrap();
        assert!(config.rest_api.switch.is_on());
        assert_eq!(config.rest_api.listen.to_string(), "127.0.0.1:9998");
        assert_eq!(config.rest_api.tls(), None);
        assert!(config.gala.unwrap().settings_ignored.is_empty());
        // ssl_auth on: the same files, as [rest_api]'s TLS.
        let text = "global = { rest_api_on = true; };\n\
                    rest_api_server = { port = 9998; ssl_auth = \"on\"; private_key = \"k.pem\"; \
                    cert_file = \"c.pem\"; ca_file = \"/ca.pem\"; };\n";
        let config = super::super::parse_gala(text, Path::new("/x/gala-gopher.conf")).unwrap();
        let tls = config.rest_api.tls().unwrap();
        assert_eq!(tls.cert_file, Path::new("/x/c.pem"));
        assert_eq!(tls.key_file, Path::new("/x/k.pem"));
        assert_eq!(tls.client_ca_file.as_deref(), Some(Path::new("/ca.pem")));
        let text = "rest_api_server = { ssl_auth = \"on\"; cert_file = \"\"; };\n";
        let config = super::super::parse_gala(text, Path::new("/x/gala-gopher.conf")).unwrap();
        assert_eq!(config.rest_api.tls(), None);
        assert!(
            config.gala.unwrap().settings_ignored[0].contains("plain HTTP"),
            "named"
        );
    }
}
