//! Loads the embedded eBPF object and attaches its programs to the cgroup2 root.
//!
//! Dropping [`Programs`] detaches everything: the kernel holds the programs through bpf links
//! owned by the `Ebpf` object.

use std::{fs::File, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupSock, CgroupSockAddr, RawTracePoint, SockOps, links::CgroupAttachMode,
    },
};
use gopher_common::{LinkInfo, OwnerSlot};

/// The eBPF object built by build.rs (aya-build) from `agent-ebpf`.
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gopher"));

pub struct Programs {
    pub ebpf: Ebpf,
    pub cgroup: PathBuf,
    /// Why the socket iterator's kernel offsets are unknown (it is then not loaded).
    pub iter_offsets: Option<super::btf::BtfError>,
    /// Which hooks account the sockets.
    pub hooks: Hooks,
    /// The owners' slots' index mask, when the hooks use them.
    slot_mask: Option<u64>,
}

/// The eBPF side's entries, as the collector looks them up for a socket new to it.
pub struct Entries<'a> {
    links: aya::maps::HashMap<&'a MapData, u64, LinkInfo>,
    slots: Option<(Array<&'a MapData, OwnerSlot>, u64)>,
}

impl Entries<'_> {
    /// The socket's entry: its slot's, when the slot holds it, else its `LINKS` one.
    pub fn get(&self, cookie: u64) -> Option<LinkInfo> {
        if cookie == 0 {
            return None;
        }
        if let Some((slots, mask)) = &self.slots
            && let Ok(index) = u32::try_from(cookie & mask)
            && let Ok(slot) = slots.get(&index, 0)
        {
            if slot.cookie == cookie {
                // The syscall copies the slot unlocked: if its socket's destroy freed it and
                // another socket claimed it meanwhile, a second copy differs.
                return slots
                    .get(&index, 0)
                    .ok()
                    .filter(|again| same(again, &slot))
                    .map(|_| slot.info);
            }
            if slot.in_links == 0 {
                return None;
            }
        }
        self.links.get(&cookie, 0).ok()
    }
}

fn same(a: &OwnerSlot, b: &OwnerSlot) -> bool {
    let (x, y) = (&a.info, &b.info);
    a.cookie == b.cookie
        && (
            x.tgid,
            x.role,
            x.owner,
            x.established,
            x.syn_acked,
            x.rst,
            x.born,
            x.comm,
        ) == (
            y.tgid,
            y.role,
            y.owner,
            y.established,
            y.syn_acked,
            y.rst,
            y.born,
            y.comm,
        )
}

/// The programs that see sockets start and end (`agent-ebpf/src/main.rs` tells the costs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    /// The default with kernel BTF: `tcp_destroy_sock` plus connect and release hooks, owners
    /// in `OWNER_SLOTS` and `LINKS` (`agent-ebpf/src/destroy.rs`, `slots.rs`).
    Destroy,
    /// sockops recording owners itself (no BTF tracing programs on this kernel).
    SockopsOwner,
    /// sockops plus connect and release hooks (`connect_hooks = true`, or a kernel that
    /// refuses the current-task helpers in sockops).
    SockopsConnect,
}

/// The destroy hooks: cgroup programs first (the verifier is where an older kernel refuses),
/// everything loaded before anything is attached, so that a refusal leaves nothing attached
/// for the sockops fallback to double.
const DESTROY_CGROUP: [&str; 3] = [
    "gopher_connect4_sk",
    "gopher_connect6_sk",
    "gopher_sock_release_sk",
];
const DESTROY_TRACEPOINTS: [(&str, &str); 4] = [
    ("gopher_tcp_destroy", "tcp_destroy_sock"),
    ("gopher_link_rst_in_sk", "tcp_receive_reset"),
    ("gopher_link_rst_out_sk", "tcp_send_reset"),
    ("gopher_sk_error_sk", "inet_sk_error_report"),
];

fn load_destroy(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    for name in DESTROY_CGROUP {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
        match prog {
            aya::programs::Program::CgroupSockAddr(p) => p.load(),
            aya::programs::Program::CgroupSock(p) => p.load(),
            _ => return Err(anyhow!("program {name} has an unexpected type")),
        }
        .with_context(|| format!("loading {name}"))?;
    }
    for (name, tracepoint) in DESTROY_TRACEPOINTS {
        let prog: &mut BtfTracePoint = program(ebpf, name)?;
        prog.load(tracepoint, &btf)
            .with_context(|| format!("loading {name}"))?;
    }
    Ok(())
}

fn attach_destroy(ebpf: &mut Ebpf, cg: &File) -> anyhow::Result<()> {
    for name in DESTROY_CGROUP {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
        match prog {
            aya::programs::Program::CgroupSockAddr(p) => {
                p.attach(cg, CgroupAttachMode::Single).map(drop)
            }
            aya::programs::Program::CgroupSock(p) => {
                p.attach(cg, CgroupAttachMode::Single).map(drop)
            }
            _ => return Err(anyhow!("program {name} has an unexpected type")),
        }
        .with_context(|| format!("attaching {name}"))?;
    }
    for (name, _) in DESTROY_TRACEPOINTS {
        let prog: &mut BtfTracePoint = program(ebpf, name)?;
        prog.attach().with_context(|| format!("attaching {name}"))?;
    }
    Ok(())
}

/// Finds the cgroup2 mount in /proc/mounts: it is /sys/fs/cgroup on unified hosts and
/// /sys/fs/cgroup/unified on hybrid ones, so it is never assumed.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    parse_cgroup2_root(&mounts).ok_or_else(|| anyhow!("no cgroup2 filesystem in /proc/mounts"))
}

fn parse_cgroup2_root(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        let (_dev, dir, fstype) = (it.next()?, it.next()?, it.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

/// How the destroy hooks share `max_links` between the owners' slots (`OWNER_SLOTS`, see
/// `agent-ebpf/src/slots.rs`) and `LINKS`: the slots get the largest power of two up to half of
/// it (a slot is the cookie masked), `LINKS` the rest. The sockops hooks keep every entry in
/// `LINKS`.
pub fn split(max_links: u32) -> (u32, u32) {
    let slots = 1u32 << (max_links / 2).max(1).ilog2();
    (slots, max_links - slots)
}

/// The object with its maps sized: with the owners' slots (destroy hooks) or without.
fn object(
    max_links: u32,
    slots: bool,
    offsets: Result<&super::iter_offsets::Offsets, &super::btf::BtfError>,
) -> anyhow::Result<(Ebpf, Option<u64>)> {
    let (n_slots, n_links) = if slots {
        split(max_links)
    } else {
        (1, max_links)
    };
    let mask = u64::from(n_slots - 1);
    let mut loader = EbpfLoader::new();
    loader.map_max_entries("LINKS", n_links);
    loader.map_max_entries("OWNER_SLOTS", n_slots);
    loader.override_global("SLOT_MASK", &mask, true);
    // x86 keeps stores in order: the slots' cookies are then set with plain stores (see
    // `agent-ebpf/src/slots.rs`).
    let ordered = u32::from(cfg!(target_arch = "x86_64"));
    loader.override_global("STORES_ORDERED", &ordered, true);
    if let Ok(o) = offsets {
        o.set(&mut loader);
    }
    let ebpf = loader.load(OBJECT).context("loading the tcp eBPF object")?;
    Ok((ebpf, slots.then_some(mask)))
}

/// `connect_hooks` forces the sockops fallback with connect and release hooks, which older
/// kernels get (tests exercise it here). `max_links` bounds what every design keeps (the
/// destroy hooks: slots and `LINKS` together, see [`split`]).
pub fn load(max_links: u32, connect_hooks: bool) -> anyhow::Result<Programs> {
    let cgroup = cgroup2_root()?;
    let offsets = super::iter_offsets::offsets();
    let cg = File::open(&cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;

    // The default: one program run per socket at its end instead of sockops on every op.
    // It reads the socket at the iterator's BTF offsets; without them, or on a kernel that
    // refuses a piece, the sockops hooks below.
    if !connect_hooks && offsets.is_ok() {
        let (mut ebpf, slot_mask) = object(max_links, true, offsets.as_ref())?;
        match load_destroy(&mut ebpf) {
            Ok(()) => {
                attach_destroy(&mut ebpf, &cg)?;
                return Ok(Programs {
                    ebpf,
                    cgroup,
                    iter_offsets: offsets.err(),
                    hooks: Hooks::Destroy,
                    slot_mask,
                });
            }
            Err(e) => tracing::info!("tcp_destroy_sock hooks unavailable ({e:#}); using sockops"),
        }
    }
    let (mut ebpf, slot_mask) = object(max_links, false, offsets.as_ref())?;

    // Prefer the sockops program that records owners itself; a kernel that refuses current-task
    // helpers there gets the plain one plus the connect and release hooks (two program runs
    // more per connection, three with both ends on the host).
    let owner_in_sockops = !connect_hooks && {
        let prog: &mut SockOps = program(&mut ebpf, "gopher_sockops_owner")?;
        match prog.load() {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(
                    "sockops cannot record owners on this kernel ({e}); using connect hooks"
                );
                false
            }
        }
    };
    let sockops = if owner_in_sockops {
        "gopher_sockops_owner"
    } else {
        "gopher_sockops"
    };
    if !owner_in_sockops {
        let prog: &mut CgroupSock = program(&mut ebpf, "gopher_sock_release")?;
        prog.load().context("loading gopher_sock_release")?;
        prog.attach(&cg, CgroupAttachMode::Single)
            .with_context(|| format!("attaching gopher_sock_release to {}", cgroup.display()))?;
        for name in ["gopher_connect4", "gopher_connect6"] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().with_context(|| format!("loading {name}"))?;
            prog.attach(&cg, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
        }
        let prog: &mut SockOps = program(&mut ebpf, sockops)?;
        prog.load().with_context(|| format!("loading {sockops}"))?;
    }
    let prog: &mut SockOps = program(&mut ebpf, sockops)?;
    prog.attach(&cg, CgroupAttachMode::Single)
        .with_context(|| format!("attaching {sockops} to {}", cgroup.display()))?;
    // The reset programs read socket fields at the iterator's offsets: without them the
    // links have no reset counts (they stay 0), the rest works.
    if offsets.is_ok()
        && let Err(e) = attach_resets(&mut ebpf)
    {
        tracing::warn!("tcp_link send_rsts/receive_rsts unavailable: {e:#}");
    }
    Ok(Programs {
        ebpf,
        cgroup,
        iter_offsets: offsets.err(),
        hooks: if owner_in_sockops {
            Hooks::SockopsOwner
        } else {
            Hooks::SockopsConnect
        },
        slot_mask,
    })
}

/// The raw tracepoints behind `send_rsts` / `receive_rsts` (`agent-ebpf/src/resets.rs`).
const RESET_TRACEPOINTS: [(&str, &str); 2] = [
    ("gopher_link_rst_in", "tcp_receive_reset"),
    ("gopher_link_rst_out", "tcp_send_reset"),
];

fn attach_resets(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    for (name, tracepoint) in RESET_TRACEPOINTS {
        let prog: &mut RawTracePoint = program(ebpf, name)?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach(tracepoint)
            .with_context(|| format!("attaching {name} to the raw tracepoint {tracepoint}"))?;
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    prog.try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

impl Programs {
    pub fn take_closed(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("CLOSED")
            .ok_or_else(|| anyhow!("map CLOSED missing"))?;
        RingBuf::try_from(map).context("map CLOSED is not a ring buffer")
    }

    pub fn links(&self) -> anyhow::Result<aya::maps::HashMap<&MapData, u64, LinkInfo>> {
        let map = self
            .ebpf
            .map("LINKS")
            .ok_or_else(|| anyhow!("map LINKS missing"))?;
        aya::maps::HashMap::try_from(map).context("map LINKS is not a hash map")
    }

    /// Where the collector looks up the entries of sockets new to it.
    pub fn entries(&self) -> anyhow::Result<Entries<'_>> {
        let slots = match self.slot_mask {
            Some(mask) => {
                let map = self
                    .ebpf
                    .map("OWNER_SLOTS")
                    .ok_or_else(|| anyhow!("map OWNER_SLOTS missing"))?;
                let slots = Array::try_from(map).context("map OWNER_SLOTS is not an array")?;
                Some((slots, mask))
            }
            None => None,
        };
        Ok(Entries {
            links: self.links()?,
            slots,
        })
    }

    /// Removes the given cookies from `LINKS` (entries whose socket is gone without a CLOSE
    /// callback: see [`super::collector::Collector`]'s sweep).
    pub fn forget(&mut self, cookies: &[u64]) -> usize {
        let Some(map) = self.ebpf.map_mut("LINKS") else {
            return 0;
        };
        let Ok(mut links) = aya::maps::HashMap::<&mut MapData, u64, LinkInfo>::try_from(map) else {
            return 0;
        };
        cookies.iter().filter(|c| links.remove(c).is_ok()).count()
    }

    /// Every cookie in `LINKS`.
    pub fn link_cookies(&self) -> Vec<u64> {
        self.links()
            .map(|m| m.keys().filter_map(Result::ok).collect())
            .unwrap_or_default()
    }

    /// Each loaded program's name, time spent running and run count, from the kernel's
    /// `bpf_prog_info`. The kernel counts only while stats are enabled
    /// (`sysctl kernel.bpf_stats_enabled=1`, or a process holding a `BPF_ENABLE_STATS` fd);
    /// otherwise both stay 0. A program the object holds but did not load is left out.
    pub fn run_stats(&self) -> Vec<(&str, std::time::Duration, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some((name, info.run_time(), info.run_count()))
            })
            .collect()
    }

    /// Close events the ring buffer had no room for, summed over CPUs.
    pub fn lost(&self) -> u64 {
        self.per_cpu_sum("LOST", 0)
    }

    /// `LINKS` inserts refused because the map was full, summed over CPUs.
    pub fn links_full(&self) -> u64 {
        self.per_cpu_sum("MAP_FULL", gopher_common::MAP_FULL_LINKS)
    }

    fn per_cpu_sum(&self, name: &str, slot: u32) -> u64 {
        let Some(map) = self.ebpf.map(name) else {
            return 0;
        };
        let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return 0;
        };
        arr.get(&slot, 0).map_or(0, |v| v.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_links_is_shared_by_slots_and_links_without_loss() {
        assert_eq!(split(1024), (512, 512));
        assert_eq!(split(2047), (512, 1535));
        assert_eq!(split(65536), (32768, 32768));
        assert_eq!(split(4_194_304), (1 << 21, 1 << 21));
        for n in [1024, 1025, 3000, 100_000, 262_144, 4_194_303] {
            let (slots, links) = split(n);
            assert!(
                slots.is_power_of_two() && slots <= n / 2 && slots > n / 4,
                "{n}"
            );
            assert_eq!(slots + links, n);
        }
    }

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            parse_cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            parse_cgroup2_root(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(parse_cgroup2_root("proc /proc proc rw 0 0\n"), None);
    }
}
