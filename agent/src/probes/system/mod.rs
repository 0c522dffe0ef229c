//! Native system probes: host-wide tables read straight from /proc (gala-gopher's
//! `system_meminfo`, `system_vmstat`, `system_tcp`, `system_inode`, plus CPU, disk and network
//! device tables).
//!
//! One probe per table, named like the table, so each can be switched and timed on its own in
//! the `probes` list. Every family is a [`Collect`] implementation: which files it reads and a
//! pure function from their text to rows. This module holds the only I/O: each interval it reads
//! every file of the family once into buffers that are reused from one interval to the next.
//! A file that cannot be read or parsed is logged (at most once a minute per probe) and counted
//! in `gopher_probe_errors_total{probe}`; the probe carries on and tries again next interval.

mod cpu;
mod disk;
mod inode;
mod meminfo;
mod net;
mod tcp;
mod vmstat;

use std::{
    io::Read as _,
    marker::PhantomData,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Native, Probe, ProbeContext, ProbeFuture,
    params::{self, ParamError},
};
use crate::{
    imdb::{Batch, FieldMeta, FieldType, Row, TableMeta, Value},
    telemetry::{PROBE_ERRORS, PROBE_ROWS},
};

/// The system probes' entries in the native-probe registry (`super::registry`): one per
/// family, named like the table it fills, no params.
macro_rules! system_probe {
    ($c:ty) => {
        Native {
            name: <$c as Collect>::TABLE,
            default_on: true,
            tables: &[<$c as Collect>::TABLE],
            build: build::<$c>,
            start_check: None,
        }
    };
}

pub(super) const PROBES: [Native; 7] = [
    system_probe!(meminfo::Meminfo),
    system_probe!(vmstat::Vmstat),
    system_probe!(tcp::Tcp),
    system_probe!(inode::Inode),
    system_probe!(cpu::Cpu),
    system_probe!(disk::Disk),
    system_probe!(net::Net),
];

/// Names of the system probes; each is also the name of the one table it fills.
pub const SYSTEM_PROBES: &[&str] = &{
    let mut out = [""; PROBES.len()];
    let mut i = 0;
    while i < PROBES.len() {
        out[i] = PROBES[i].name;
        i += 1;
    }
    out
};

/// System probes take no parameters, so any key in `params` is an error naming it.
fn build<C: Collect>(params: &toml::Table) -> Result<Arc<dyn Probe>, ParamError> {
    params::parse::<NoParams>(C::TABLE, params)?;
    Ok(Arc::new(SystemProbe::<C>::new()))
}

/// The parameters of a system probe: none.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// Builds the system probe called `name`, or `None` when `name` is not a system probe.
pub fn native_probe(
    name: &str,
    params: &toml::Table,
) -> Result<Option<Arc<dyn Probe>>, ParamError> {
    PROBES
        .iter()
        .find(|p| p.name == name)
        .map(|p| (p.build)(params))
        .transpose()
}

/// The table definitions of every system probe (for documentation and meta listings).
pub fn tables() -> Vec<TableMeta> {
    PROBES
        .iter()
        .filter_map(|p| (p.build)(&toml::Table::new()).ok())
        .flat_map(|p| p.tables())
        .collect()
}

/// One field of a system table.
pub(crate) struct Field {
    pub name: &'static str,
    pub ty: FieldType,
    /// HELP text: what it is and in which unit.
    pub help: &'static str,
    /// Where the value comes from: the kernel's name for it (a meminfo/vmstat/snmp key) or, for
    /// column-based files, empty (the field's position gives the column).
    pub src: &'static str,
}

const fn key(name: &'static str, help: &'static str) -> Field {
    Field {
        name,
        ty: FieldType::Key,
        help,
        src: "",
    }
}

const fn gauge(name: &'static str, src: &'static str, help: &'static str) -> Field {
    Field {
        name,
        ty: FieldType::Gauge,
        help,
        src,
    }
}

const fn counter(name: &'static str, src: &'static str, help: &'static str) -> Field {
    Field {
        name,
        ty: FieldType::Counter,
        help,
        src,
    }
}

/// A table family: the files it reads and how their text becomes rows.
pub(crate) trait Collect: Send + 'static {
    const TABLE: &'static str;
    const DESCRIPTION: &'static str;
    /// In row (positional) order.
    const FIELDS: &'static [Field];
    /// Read once per interval, in this order, and handed to [`Collect::collect`].
    const FILES: &'static [&'static str];

    fn new() -> Self;

    /// Appends this interval's rows, built from `texts[i]` = content of `FILES[i]`. No I/O:
    /// `self` only carries what must survive between intervals. Values the text lacks are
    /// empty (the store treats empty as "no value"); `Err` says why the text is unusable.
    fn collect(&mut self, texts: &[String], out: &mut Vec<Row>) -> Result<(), &'static str>;

    fn meta() -> TableMeta {
        TableMeta {
            name: Self::TABLE.to_owned(),
            description: Self::DESCRIPTION.to_owned(),
            fields: Self::FIELDS
                .iter()
                .map(|f| FieldMeta {
                    name: f.name.to_owned(),
                    ty: f.ty,
                    description: f.help.to_owned(),
                })
                .collect(),
            max_records: None,
        }
    }

    /// A row of this table with every value empty.
    fn blank_row() -> Row {
        Row {
            table: Self::TABLE.to_owned(),
            values: vec![Value::Empty; Self::FIELDS.len()],
        }
    }
}

/// Writes `v` into a value slot of a fresh row: a number stays a number (see imdb::value).
pub(crate) fn put(slot: &mut Value, v: impl Into<Value>) {
    *slot = v.into();
}

/// `n / per` as a number (ticks → seconds, milliseconds → seconds).
pub(crate) fn put_ratio(slot: &mut Value, n: u64, per: u64) {
    if per == 0 {
        return;
    }
    // f64 is exact for integers up to 2^53 (≈ 2.8 million years of 100 Hz ticks); sinks write
    // the shortest text that reads back as the same number.
    put(slot, n as f64 / per as f64);
}

struct SystemProbe<C>(PhantomData<fn() -> C>);

impl<C: Collect> SystemProbe<C> {
    fn new() -> Self {
        Self(PhantomData)
    }
}

impl<C: Collect> Probe for SystemProbe<C> {
    fn name(&self) -> &str {
        C::TABLE
    }

    fn tables(&self) -> Vec<TableMeta> {
        vec![C::meta()]
    }

    fn run(&self, ctx: ProbeContext) -> ProbeFuture {
        Box::pin(run::<C>(ctx))
    }
}

async fn run<C: Collect>(mut ctx: ProbeContext) -> anyhow::Result<()> {
    let errors = ctx.metrics.counter(PROBE_ERRORS, &[("probe", C::TABLE)]);
    let rows_sent = ctx.metrics.counter(PROBE_ROWS, &[("probe", C::TABLE)]);
    let mut files = Files::new(C::FILES);
    let mut family = C::new();
    let mut warn = RateLimit::new(Duration::from_mins(1));
    let mut batch_len = 1;
    ctx.state.running();
    let mut tick = tokio::time::interval(ctx.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = ctx.stop.changed() => {
                if changed.is_err() || *ctx.stop.borrow() {
                    break;
                }
            }
            _ = tick.tick() => {
                // These are small in-memory kernel files (no disk behind them): reading them
                // takes microseconds, so it is done in place rather than on a blocking thread.
                let mut rows = Vec::with_capacity(batch_len);
                let result = files
                    .read()
                    .and_then(|texts| family.collect(texts, &mut rows).map_err(str::to_owned));
                if let Err(why) = result {
                    errors.inc();
                    if let Some(suppressed) = warn.allow() {
                        tracing::warn!(
                            probe = C::TABLE,
                            suppressed,
                            "{why}; retrying every interval (further errors logged once a minute)"
                        );
                    }
                }
                if rows.is_empty() {
                    continue;
                }
                batch_len = rows.len();
                rows_sent.add(rows.len() as u64);
                // A full channel (slow store) must not keep a stop request waiting.
                tokio::select! {
                    sent = ctx.rows.send(Batch::Rows(rows)) => if sent.is_err() { break },
                    _ = ctx.stop.wait_for(|stop| *stop) => break,
                }
            }
        }
    }
    Ok(())
}

/// The family's files and one reusable text buffer per file.
struct Files {
    paths: &'static [&'static str],
    texts: Vec<String>,
}

impl Files {
    fn new(paths: &'static [&'static str]) -> Self {
        Self {
            paths,
            texts: paths.iter().map(|_| String::with_capacity(4096)).collect(),
        }
    }

    /// Reads every file afresh. Reopening costs a few microseconds and keeps no descriptor
    /// open between intervals (nothing to leak or to go stale if /proc is remounted).
    fn read(&mut self) -> Result<&[String], String> {
        for (path, text) in self.paths.iter().zip(&mut self.texts) {
            text.clear();
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_string(text))
                .map_err(|e| format!("reading {path}: {e}"))?;
        }
        Ok(&self.texts)
    }
}

/// Lets one message through per period; reports how many were held back in between.
struct RateLimit {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(number suppressed since the last message)` when a message may go out now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests;
