//! How `gopher ctl` shows answers: a table for people, JSON for scripts; with several agents,
//! a host column (text) or a `host` field (JSON) on every line, and a line per agent that
//! could not be asked.

use std::io::Write as _;

use super::grpc::pb;

/// For people or for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
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

/// One agent's answer: its probes, or why it could not be asked.
pub struct Answer {
    pub host: String,
    pub probes: anyhow::Result<Vec<pb::Probe>>,
}

/// The text of an error for a person: a refusal by the agent as its gRPC code and message.
pub fn error_text(e: &anyhow::Error) -> String {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) => format!("{:?}: {}", s.code(), s.message()),
        None => format!("{e:#}"),
    }
}

/// Prints every agent's answer; `many` adds the host to every line.
pub fn print_answers(answers: &[Answer], out: Output, many: bool) -> anyhow::Result<()> {
    let mut w = std::io::stdout().lock();
    match out {
        Output::Json => {
            let mut all = Vec::new();
            for a in answers {
                match &a.probes {
                    Ok(probes) => all.extend(probes.iter().map(|p| {
                        let mut v = probe_json(p);
                        if many && let Some(o) = v.as_object_mut() {
                            o.insert("host".into(), a.host.clone().into());
                        }
                        v
                    })),
                    Err(e) => all.push(serde_json::json!({"host": a.host, "error": error_text(e)})),
                }
            }
            serde_json::to_writer_pretty(&mut w, &all)?;
            writeln!(w)?;
        }
        Output::Text => {
            let host_w = answers
                .iter()
                .map(|a| a.host.len())
                .max()
                .unwrap_or(0)
                .max(4);
            let host = |h: &str| {
                if many {
                    format!("{h:<host_w$} ")
                } else {
                    String::new()
                }
            };
            writeln!(
                w,
                "{}{:<16} {:<9} {:<6} {:<9} {:>8} {:>10} {:>8}  PARAMS / REASON",
                host("HOST"),
                "NAME",
                "KIND",
                "SWITCH",
                "STATE",
                "PID",
                "ROWS",
                "INTERVAL"
            )?;
            for a in answers {
                match &a.probes {
                    Ok(probes) => {
                        for p in probes {
                            writeln!(w, "{}{}", host(&a.host), probe_line(p))?;
                        }
                    }
                    Err(e) => writeln!(w, "{}error: {}", host(&a.host), error_text(e))?,
                }
            }
        }
    }
    Ok(())
}

fn probe_line(p: &pb::Probe) -> String {
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
    format!(
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
    )
}

/// One watched change; `host` when several agents are watched.
pub fn print_event(host: Option<&str>, e: &pb::ProbeEvent, out: Output) -> anyhow::Result<()> {
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
                if let Some(h) = host {
                    o.insert("host".into(), h.into());
                }
            }
            serde_json::to_writer(&mut w, &v)?;
            writeln!(w)?;
        }
        Output::Text => writeln!(
            w,
            "{}{} {} switch={} state={}{}{}{}",
            host.map_or_else(String::new, |h| format!("{h} ")),
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
