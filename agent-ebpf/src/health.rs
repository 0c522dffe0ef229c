//! TCP health events the per-interval socket reads cannot see, counted per listening socket.
//!
//! Only rare events are hooked: a SYN-ACK retransmission (`tcp_retransmit_synack`, which fires
//! when a handshake's final ACK is late: a lossy path or a client gone, one event per
//! retransmitted SYN-ACK) runs this program; nothing runs per packet of an established
//! connection. A raw tracepoint (no tracefs needed); its first argument is the listening
//! socket, whose address, port and namespace are read at offsets from the kernel's BTF,
//! resolved by the agent and frozen into [`HEALTH_OFFSETS`] at load.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use core::ptr::read_volatile;

use gopher_common::{HEALTH_LISTENERS, ListenerKey, SockOffsets};

const AF_INET: u16 = 2;
const BPF_NOEXIST: u64 = 1;

/// Set by the agent at load time (its own global: each program sees one frozen copy).
#[unsafe(no_mangle)]
static HEALTH_OFFSETS: SockOffsets = SockOffsets::ZERO;

/// SYN-ACKs retransmitted, per listener; per CPU, so that an event costs no atomic operation
/// (the agent sums the CPUs).
#[map]
static SYNACK_RETRANS: PerCpuHashMap<ListenerKey, u64> =
    PerCpuHashMap::with_max_entries(HEALTH_LISTENERS, 0);

/// Events not counted because `SYNACK_RETRANS` was full.
#[map]
static HEALTH_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn off(field: *const u32) -> usize {
    // SAFETY: `field` points into an immutable static; volatile keeps it a `.rodata` load.
    unsafe { read_volatile(field) as usize }
}

/// A kernel field at `base + at`; zero when it cannot be read.
#[inline(always)]
fn read<T: Copy + Default>(base: u64, at: usize) -> T {
    // SAFETY: a probe read: a bad address yields an error, never a fault.
    unsafe { bpf_probe_read_kernel((base as usize + at) as *const T) }.unwrap_or_default()
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn gopher_synack_retrans(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        count(&listener(sk));
    }
    0
}

fn listener(sk: u64) -> ListenerKey {
    let o = &raw const HEALTH_OFFSETS;
    // SAFETY: field addresses inside an immutable static.
    let (family_at, port_at, v4_at, v6_at, net_at, cookie_at) = unsafe {
        (
            off(&raw const (*o).skc_family),
            off(&raw const (*o).skc_num),
            off(&raw const (*o).skc_rcv_saddr),
            off(&raw const (*o).skc_v6_rcv_saddr),
            off(&raw const (*o).skc_net),
            off(&raw const (*o).net_cookie),
        )
    };
    let family: u16 = read(sk, family_at);
    let mut addr = [0u32; 4];
    if family == AF_INET {
        addr[0] = read(sk, v4_at);
    } else {
        addr = read(sk, v6_at);
    }
    let net: u64 = read(sk, net_at);
    ListenerKey {
        netns_cookie: if net == 0 { 0 } else { read(net, cookie_at) },
        family,
        port: read(sk, port_at),
        _pad: 0,
        addr,
    }
}

fn count(key: &ListenerKey) {
    // Another CPU may insert the key between the lookup and the insert: then the insert fails
    // and the second lookup finds this CPU's slot.
    let slot = SYNACK_RETRANS.get_ptr_mut(key).or_else(|| {
        SYNACK_RETRANS
            .insert(key, &0, BPF_NOEXIST)
            .ok()
            .and_then(|()| SYNACK_RETRANS.get_ptr_mut(key))
            .or_else(|| SYNACK_RETRANS.get_ptr_mut(key))
    });
    match slot {
        // SAFETY: this CPU's value slot, no concurrent writer.
        Some(n) => unsafe { *n += 1 },
        None => {
            if let Some(n) = HEALTH_FULL.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, no concurrent writer.
                unsafe { *n += 1 };
            }
        }
    }
}
