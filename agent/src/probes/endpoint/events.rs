//! The endpoint probe's eBPF side (`agent-ebpf/src/health.rs`): per-listener counters of rare
//! TCP events, kept in a kernel map and read once per interval.
//!
//! The object is the agent's one eBPF object; only the health programs are loaded from it, and
//! the maps of the others are shrunk to their minimum (aya creates every map of an object).

use std::collections::HashMap;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::RawTracePoint,
};
use gopher_common::{ListenerKey, SockOffsets};

use crate::probes::tcp::{bpf::OBJECT, btf};

/// The tcp probe's maps, not used here: made as small as the kernel allows.
const UNUSED_MAPS: [(&str, u32); 2] = [("LINKS", 1), ("CLOSED", 4096)];

pub struct Events {
    ebpf: Ebpf,
    /// Events lost to a full map, as last read (the kernel's count only grows).
    full_seen: u64,
}

impl Events {
    /// Loads and attaches the health programs.
    pub fn load() -> anyhow::Result<Self> {
        let offsets: SockOffsets = btf::sock_offsets(&btf::Btf::from_sys_fs()?)?;
        let mut loader = EbpfLoader::new();
        for (name, size) in UNUSED_MAPS {
            loader.map_max_entries(name, size);
        }
        loader.override_global("HEALTH_OFFSETS", &offsets, true);
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
        let prog: &mut RawTracePoint = ebpf
            .program_mut("gopher_synack_retrans")
            .ok_or_else(|| anyhow!("program gopher_synack_retrans missing"))?
            .try_into()?;
        prog.load().context("loading gopher_synack_retrans")?;
        prog.attach("tcp_retransmit_synack")
            .context("attaching to the raw tracepoint tcp_retransmit_synack")?;
        Ok(Self { ebpf, full_seen: 0 })
    }

    /// SYN-ACK retransmissions per listener; forgets listeners `live` says are gone (their
    /// entries would otherwise fill the map).
    pub fn synack_retrans(
        &mut self,
        live: impl Fn(&ListenerKey) -> bool,
    ) -> HashMap<ListenerKey, u64> {
        let Some(map) = self.ebpf.map_mut("SYNACK_RETRANS") else {
            return HashMap::new();
        };
        let Ok(mut map) = PerCpuHashMap::<&mut MapData, ListenerKey, u64>::try_from(map) else {
            return HashMap::new();
        };
        let all: HashMap<ListenerKey, u64> = map
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| (k, per_cpu.iter().sum()))
            .collect();
        let (kept, gone): (HashMap<_, _>, HashMap<_, _>) =
            all.into_iter().partition(|(k, _)| live(k));
        for k in gone.keys() {
            let _ = map.remove(k);
        }
        kept
    }

    /// Events lost to a full map since the last call.
    pub fn newly_full(&mut self) -> u64 {
        let total = self
            .ebpf
            .map("HEALTH_FULL")
            .and_then(|m| PerCpuArray::<&MapData, u64>::try_from(m).ok())
            .and_then(|a| a.get(&0, 0).ok())
            .map_or(0, |v| v.iter().sum());
        let new = total.saturating_sub(self.full_seen);
        self.full_seen = self.full_seen.max(total);
        new
    }
}
