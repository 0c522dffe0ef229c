//! The endpoint probe's eBPF side (`agent-ebpf/src/health.rs`, `listen.rs`): per-listener and
//! per-client counters of per-connection TCP events, kept in kernel maps and read once per
//! interval.
//!
//! The object is the agent's one eBPF object; only the health programs are loaded from it, and
//! the maps of the others are shrunk to their minimum (aya creates every map of an object).

use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{CgroupSockAddr, RawTracePoint, SockOps, links::CgroupAttachMode},
};
use gopher_common::{
    ConnectCounts, ConnectKey, HEALTH_CONNECTS, HEALTH_LISTENERS, HEALTH_REQS, HEALTH_SOCKETS,
    ListenerCounts, ListenerKey, ReqKey, SockOffsets,
};

use crate::probes::tcp::{
    bpf::{OBJECT, cgroup2_root},
    btf,
};

/// The health programs' maps, declared with one entry in the object (the tcp probe loads them
/// too and does not use them), sized here.
const SIZES: [(&str, u32); 4] = [
    ("LISTENERS", HEALTH_LISTENERS),
    ("CONNECTS", HEALTH_CONNECTS),
    ("SOCKETS", HEALTH_SOCKETS),
    ("REQS", HEALTH_REQS),
];

/// The raw tracepoints, by program.
const TRACEPOINTS: [(&str, &str); 5] = [
    ("gopher_synack_retrans", "tcp_retransmit_synack"),
    ("gopher_listen_passive", "inet_sock_set_state"),
    ("gopher_health_error", "inet_sk_error_report"),
    ("gopher_health_rst_in", "tcp_receive_reset"),
    ("gopher_health_rst_out", "tcp_send_reset"),
];

/// The tcp probe's maps, not used here: made as small as the kernel allows.
const UNUSED_MAPS: [(&str, u32); 2] = [("LINKS", 1), ("CLOSED", 4096)];

pub struct Events {
    ebpf: Ebpf,
    /// Events lost to a full map, per slot, as last read (the kernel's counts only grow).
    full_seen: [u64; 3],
    /// Whether accept-queue overflows are counted: the kernel names the drop reason and the
    /// program attached.
    pub overflows: bool,
    /// Whether handshakes in progress are followed (their sock_ops program attached).
    pub reqs: bool,
}

impl Events {
    /// Loads and attaches the health programs.
    pub fn load() -> anyhow::Result<Self> {
        let btf = btf::Btf::from_sys_fs()?;
        let offsets: SockOffsets = btf::sock_offsets(&btf)?;
        let sk_err = btf.offset("sock", "sk_err", 4)?;
        let mut loader = EbpfLoader::new();
        for (name, size) in UNUSED_MAPS.into_iter().chain(SIZES) {
            loader.map_max_entries(name, size);
        }
        loader.override_global("HEALTH_OFFSETS", &offsets, true);
        loader.override_global("HEALTH_SK_ERR", &sk_err, true);
        // Older kernels have no such reason (or give the drop no socket): no count then.
        let reason = btf
            .enum_value("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")?
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0);
        loader.override_global("LISTEN_OVERFLOW_REASON", &reason, true);
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
        for (name, tracepoint) in TRACEPOINTS {
            let prog: &mut RawTracePoint = program(&mut ebpf, name)?.try_into()?;
            prog.load().with_context(|| format!("loading {name}"))?;
            prog.attach(tracepoint)
                .with_context(|| format!("attaching {name} to the raw tracepoint {tracepoint}"))?;
        }
        let root = cgroup2_root()?;
        let cg = std::fs::File::open(&root)
            .with_context(|| format!("opening cgroup {}", root.display()))?;
        for name in ["gopher_health_connect4", "gopher_health_connect6"] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
            prog.load().with_context(|| format!("loading {name}"))?;
            prog.attach(&cg, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", root.display()))?;
        }
        let overflows = reason != 0
            && attach_drop(&mut ebpf)
                .inspect_err(|e| tracing::warn!("endpoint probe: {e:#}"))
                .is_ok();
        let reqs = attach_reqs(&mut ebpf, &cg)
            .inspect_err(|e| tracing::warn!("endpoint probe: {e:#}"))
            .is_ok();
        Ok(Self {
            ebpf,
            full_seen: [0; 3],
            overflows,
            reqs,
        })
    }

    /// The listeners (as the programs key them) of the handshakes that ended without a
    /// connection since the last call: handshakes in `REQS` that `pending` (the request sockets
    /// alive now, read after `REQS`) no longer holds and that no child took out of `REQS` in the
    /// meantime (the agent's removal is the one that succeeds).
    pub fn failed_handshakes(
        &mut self,
        pending: impl FnOnce() -> HashSet<ReqKey>,
    ) -> Vec<ListenerKey> {
        let Some(map) = self.ebpf.map_mut("REQS") else {
            return Vec::new();
        };
        let Ok(mut map) = BpfHashMap::<&mut MapData, ReqKey, ListenerKey>::try_from(map) else {
            return Vec::new();
        };
        let started: Vec<(ReqKey, ListenerKey)> = map.iter().filter_map(Result::ok).collect();
        let alive = pending();
        started
            .into_iter()
            .filter(|(k, _)| !alive.contains(k))
            .filter(|(k, _)| map.remove(k).is_ok())
            .map(|(_, l)| l)
            .collect()
    }

    /// Client events per process and destination, summed over CPUs; forgets processes `live`
    /// says are gone.
    pub fn connects(
        &mut self,
        live: impl Fn(&ConnectKey) -> bool,
    ) -> HashMap<ConnectKey, ConnectCounts> {
        let Some(map) = self.ebpf.map_mut("CONNECTS") else {
            return HashMap::new();
        };
        let Ok(mut map) = PerCpuHashMap::<&mut MapData, ConnectKey, ConnectCounts>::try_from(map)
        else {
            return HashMap::new();
        };
        let all: Vec<(ConnectKey, ConnectCounts)> = map
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| (k, per_cpu.iter().fold(ConnectCounts::default(), add)))
            .collect();
        let mut kept = HashMap::new();
        for (k, v) in all {
            if live(&k) {
                kept.insert(k, v);
            } else {
                let _ = map.remove(&k);
            }
        }
        kept
    }

    /// Listener events per listener, summed over CPUs; forgets listeners `live` says are gone
    /// (their entries would otherwise fill the map).
    pub fn listeners(
        &mut self,
        live: impl Fn(&ListenerKey) -> bool,
    ) -> HashMap<ListenerKey, ListenerCounts> {
        let Some(map) = self.ebpf.map_mut("LISTENERS") else {
            return HashMap::new();
        };
        let Ok(mut map) = PerCpuHashMap::<&mut MapData, ListenerKey, ListenerCounts>::try_from(map)
        else {
            return HashMap::new();
        };
        let all: HashMap<ListenerKey, ListenerCounts> = map
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| {
                (
                    k,
                    per_cpu.iter().fold(ListenerCounts::default(), add_listener),
                )
            })
            .collect();
        let (kept, gone): (HashMap<_, _>, HashMap<_, _>) =
            all.into_iter().partition(|(k, _)| live(k));
        for k in gone.keys() {
            let _ = map.remove(k);
        }
        kept
    }

    /// Events lost to a full map since the last call: `[listeners, connects, reqs]`.
    pub fn newly_full(&mut self) -> [u64; 3] {
        let total = |slot: u32| {
            self.ebpf
                .map("HEALTH_FULL")
                .and_then(|m| PerCpuArray::<&MapData, u64>::try_from(m).ok())
                .and_then(|a| a.get(&slot, 0).ok())
                .map_or(0, |v| v.iter().sum::<u64>())
        };
        let now = [total(0), total(1), total(2)];
        let new = std::array::from_fn(|i| now[i].saturating_sub(self.full_seen[i]));
        self.full_seen = std::array::from_fn(|i| self.full_seen[i].max(now[i]));
        new
    }
}

fn add(a: ConnectCounts, b: &ConnectCounts) -> ConnectCounts {
    ConnectCounts {
        active_open: a.active_open + b.active_open,
        refused: a.refused + b.refused,
        timed_out: a.timed_out + b.timed_out,
        failed_other: a.failed_other + b.failed_other,
        send_rsts: a.send_rsts + b.send_rsts,
        receive_rsts: a.receive_rsts + b.receive_rsts,
    }
}

fn add_listener(a: ListenerCounts, b: &ListenerCounts) -> ListenerCounts {
    ListenerCounts {
        retran_synacks: a.retran_synacks + b.retran_synacks,
        passive_open: a.passive_open + b.passive_open,
        accept_overflow: a.accept_overflow + b.accept_overflow,
    }
}

/// Attaches the accept-queue overflow counter to `skb:kfree_skb`; refused by a kernel whose
/// tracepoint has no `rx_sk` argument.
fn attach_drop(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let prog: &mut RawTracePoint = program(ebpf, "gopher_listen_drop")?.try_into()?;
    prog.load().context("loading gopher_listen_drop")?;
    prog.attach("kfree_skb")
        .context("attaching gopher_listen_drop to the raw tracepoint kfree_skb")?;
    Ok(())
}

/// Attaches the handshake follower (`gopher_listen_reqs`) to the cgroup2 root `cg`.
fn attach_reqs(ebpf: &mut Ebpf, cg: &std::fs::File) -> anyhow::Result<()> {
    let prog: &mut SockOps = program(ebpf, "gopher_listen_reqs")?.try_into()?;
    prog.load().context("loading gopher_listen_reqs")?;
    prog.attach(cg, CgroupAttachMode::Single)
        .context("attaching gopher_listen_reqs to the cgroup2 root")?;
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))
}
