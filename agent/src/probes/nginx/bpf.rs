//! Loads the nginx eBPF object (agent-ebpf `src/nginx.rs`) and attaches its uprobes to each
//! running nginx binary; detaches them when no process runs that binary any more.

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        UProbe,
        uprobe::{UProbeLinkId, UProbeScope},
    },
};
use gopher_common::NginxPeer;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gopher-nginx"));

/// (program, symbol) pairs: every binary gets all three.
const HOOKS: [(&str, &str); 3] = [
    ("gopher_ngx_connect", "ngx_event_connect_peer"),
    ("gopher_ngx_connect_ret", "ngx_event_connect_peer"),
    ("gopher_ngx_close", "ngx_close_connection"),
];

pub struct Programs {
    ebpf: Ebpf,
    /// Links per binary (device, inode).
    attached: HashMap<(u64, u64), Vec<(&'static str, UProbeLinkId)>>,
    /// Connections found already open (`backfill.rs`) that did not fit in `PEERS`.
    backfill_full: u64,
}

impl Programs {
    pub fn load(max_sessions: u32) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("PEERS", max_sessions)
            .load(OBJECT)
            .context("loading the nginx eBPF object")?;
        for (name, _) in HOOKS {
            uprobe(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading {name}"))?;
        }
        Ok(Self {
            ebpf,
            attached: HashMap::new(),
            backfill_full: 0,
        })
    }

    /// Binaries traced now.
    pub fn traced(&self) -> usize {
        self.attached.len()
    }

    pub fn is_attached(&self, id: (u64, u64)) -> bool {
        self.attached.contains_key(&id)
    }

    /// Attaches every hook to the binary at `path`; on failure nothing stays attached to it.
    pub fn attach(&mut self, id: (u64, u64), path: &Path) -> anyhow::Result<()> {
        let mut links = Vec::with_capacity(HOOKS.len());
        for (name, symbol) in HOOKS {
            let attached = uprobe(&mut self.ebpf, name).and_then(|p| {
                p.attach(symbol, path, UProbeScope::AllProcesses)
                    .with_context(|| format!("attaching {name} to {symbol} in {}: the binary must export or keep the symbol", path.display()))
            });
            match attached {
                Ok(link) => links.push((name, link)),
                Err(e) => {
                    self.release(links);
                    return Err(e);
                }
            }
        }
        self.attached.insert(id, links);
        Ok(())
    }

    /// Detaches from binaries not in `running`.
    pub fn retain(&mut self, running: impl Fn((u64, u64)) -> bool) {
        let gone: Vec<_> = self
            .attached
            .keys()
            .copied()
            .filter(|id| !running(*id))
            .collect();
        for id in gone {
            if let Some(links) = self.attached.remove(&id) {
                self.release(links);
            }
        }
    }

    fn release(&mut self, links: Vec<(&'static str, UProbeLinkId)>) {
        for (name, link) in links {
            if let Ok(p) = uprobe(&mut self.ebpf, name) {
                let _ = p.detach(link);
            }
        }
    }

    /// Every recorded upstream connection.
    pub fn peers(&self) -> anyhow::Result<Vec<NginxPeer>> {
        let map = self
            .ebpf
            .map("PEERS")
            .ok_or_else(|| anyhow!("map PEERS missing"))?;
        let peers = BpfHashMap::<&MapData, NginxPeer, u8>::try_from(map)
            .context("map PEERS is not a hash map")?;
        Ok(peers.keys().filter_map(Result::ok).collect())
    }

    /// Adds upstream connections found already open, as if the uprobe had seen them made.
    pub fn record(&mut self, found: &[NginxPeer]) {
        let Some(mut peers) = self.peers_mut() else {
            return;
        };
        let refused = found
            .iter()
            .filter(|peer| peers.insert(*peer, 0, 0).is_err())
            .count();
        self.backfill_full += refused as u64;
    }

    pub fn forget(&mut self, dead: &[NginxPeer]) {
        let Some(mut peers) = self.peers_mut() else {
            return;
        };
        for peer in dead {
            let _ = peers.remove(peer);
        }
    }

    fn peers_mut(&mut self) -> Option<BpfHashMap<&mut MapData, NginxPeer, u8>> {
        BpfHashMap::try_from(self.ebpf.map_mut("PEERS")?).ok()
    }

    /// Inserts refused because `slot` (`NGX_FULL_*`) was full, summed over CPUs.
    pub fn full(&self, slot: u32) -> u64 {
        let mine = if slot == gopher_common::NGX_FULL_PEERS {
            self.backfill_full
        } else {
            0
        };
        let Some(map) = self.ebpf.map("NGX_FULL") else {
            return mine;
        };
        let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return mine;
        };
        mine + arr.get(&slot, 0).map_or(0, |v| v.iter().sum::<u64>())
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the nginx eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a uprobe"))
}
