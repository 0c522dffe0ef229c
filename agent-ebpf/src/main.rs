//! TCP link accounting with per-connection (never per-packet) hooks.
//!
//! * `cgroup/connect4|6` run inside `connect()`: the process context that owns a client socket.
//! * `cgroup/sock_release` runs inside the last `close()`: the owner of a server socket.
//! * `sockops` sees the handshake complete (role) and, through the state callback it enables on
//!   that socket only, the move to CLOSE, where it emits the socket's final counters. Counters of
//!   live sockets are read by the agent from sock_diag, so nothing here fires per send or recv.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use core::ptr::read_volatile;

use gopher_common::{LinkClosed, LinkInfo, LinkStats, OWNER_KNOWN, ROLE_CLIENT, ROLE_SERVER};

const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_CLOSE: u32 = 7;
const TCPHDR_FIN: u32 = 0x01;
/// Allow the operation (cgroup programs must say so explicitly).
const ALLOW: i32 = 1;

/// Live sockets by cookie. A plain preallocated hash: LRU maps cost twice as much per update,
/// and every entry has an owner that removes it (the CLOSE callback; failed connects included,
/// since the connect callback watches state). Entries the fallback connect hooks leave behind
/// for connects that fail before TCP starts are swept by the agent.
#[map]
static LINKS: HashMap<u64, LinkInfo> = HashMap::with_max_entries(65536, 0);

/// Final counters of closed sockets, one event per socket.
#[map]
static CLOSED: RingBuf = RingBuf::with_byte_size(CLOSED_BYTES, 0);
const CLOSED_BYTES: u32 = 4 << 20;
/// Wake the agent only once this much is waiting. A wake-up per event costs an IPI (a VM exit
/// on virtual machines) in the closing connection's path: at connection churn that was most of
/// the probe's cost. The agent also drains on a short timer, so events wait at most that long.
const WAKEUP_BYTES: u64 = (CLOSED_BYTES / 4) as u64;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Events that did not fit in `CLOSED`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

fn current_owner(role: u8) -> LinkInfo {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    LinkInfo {
        tgid,
        role,
        owner: OWNER_KNOWN,
        established: 0,
        syn_acked: 0,
        fin_seen: 0,
        _pad: [0; 3],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

fn connect(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    let (ty, proto) = unsafe { ((*ctx.sock_addr).type_, (*ctx.sock_addr).protocol) };
    if ty == SOCK_STREAM && proto == IPPROTO_TCP {
        // SAFETY: ctx is a sock_addr context, for which this helper is defined.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = LINKS.insert(&cookie, &current_owner(ROLE_CLIENT), 0);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn gopher_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn gopher_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx)
}

#[cgroup_sock(sock_release)]
pub fn gopher_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: valid bpf_sock for the program's lifetime.
    let proto = unsafe { (*ctx.sock).protocol };
    if proto != IPPROTO_TCP {
        return ALLOW;
    }
    // SAFETY: sock context; helper defined for it.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(info) = LINKS.get_ptr_mut(&cookie) {
        // SAFETY: pointer into a map value, valid while the program runs.
        let info = unsafe { &mut *info };
        // A client's owner is the process that connected; keep it.
        if info.owner != OWNER_KNOWN {
            let owner = current_owner(info.role);
            info.tgid = owner.tgid;
            info.comm = owner.comm;
            info.owner = OWNER_KNOWN;
        }
    }
    ALLOW
}

/// Records the client's owner itself in the connect callback (process context). Kernels that
/// refuse the current-task helpers in sockops programs get [`gopher_sockops`] plus the
/// `connect4|6` programs instead: one program run more per connection.
#[sock_ops]
pub fn gopher_sockops_owner(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        let _ = LINKS.insert(&cookie(&ctx), &current_owner(ROLE_CLIENT), 0);
    }
    sockops(&ctx)
}

#[sock_ops]
pub fn gopher_sockops(ctx: SockOpsContext) -> u32 {
    sockops(&ctx)
}

#[inline(always)]
fn sockops(ctx: &SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // Watch this socket's state so that a failed connect frees its LINKS entry.
            add_cb_flags(ctx, BPF_SOCK_OPS_STATE_CB_FLAG);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(ctx, ROLE_CLIENT),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(ctx, ROLE_SERVER),
        BPF_SOCK_OPS_STATE_CB => match ctx.arg(1) {
            TCP_CLOSE => closed(ctx),
            // We closed first. Whether the peer's FIN then reaches this socket (and is counted
            // in bytes_received) or a later time-wait socket is only visible in the segments,
            // so watch the few that still arrive.
            TCP_FIN_WAIT1 => {
                add_cb_flags(ctx, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG);
            }
            _ => {}
        },
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => {
            // SAFETY: valid bpf_sock_ops; skb_tcp_flags is defined in this callback.
            let flags = unsafe { read_volatile(&raw const (*ctx.ops).skb_tcp_flags) };
            if flags & TCPHDR_FIN != 0 {
                if let Some(info) = LINKS.get_ptr_mut(&cookie(ctx)) {
                    // SAFETY: pointer into a map value, valid while the program runs.
                    unsafe { (*info).fin_seen = 1 };
                }
            }
        }
        _ => {}
    }
    1
}

fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: sock_ops context; helper defined for it.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Adds to the socket's callback flags: setting them outright would clear flags another sockops
/// program (a CNI, a tracer) relies on.
fn add_cb_flags(ctx: &SockOpsContext, flags: u32) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() | flags) as i32);
}

fn established(ctx: &SockOpsContext, role: u8) {
    add_cb_flags(ctx, BPF_SOCK_OPS_STATE_CB_FLAG);
    let cookie = cookie(ctx);
    // SAFETY: valid bpf_sock_ops (full socket in the established callbacks).
    let syn_acked = u8::from(unsafe { read_volatile(&raw const (*ctx.ops).bytes_acked) } > 0);
    if let Some(info) = LINKS.get_ptr_mut(&cookie) {
        // SAFETY: pointer into a map value, valid while the program runs.
        unsafe {
            (*info).established = 1;
            (*info).syn_acked = syn_acked;
        }
        return;
    }
    // Softirq context here: the current task is not the owner, so record none.
    let info = LinkInfo {
        tgid: 0,
        role,
        owner: 0,
        established: 1,
        syn_acked,
        fin_seen: 0,
        _pad: [0; 3],
        comm: [0; 16],
    };
    let _ = LINKS.insert(&cookie, &info, 0);
}

fn closed(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    let Some(info) = LINKS.get_ptr(&cookie) else {
        return;
    };
    // SAFETY: pointer into a map value, valid while the program runs.
    let info = unsafe { *info };
    // Cookies are unique per boot, but the entry must go with the socket.
    let _ = LINKS.remove(&cookie);
    if info.established == 0 {
        return;
    }
    let ops = ctx.ops;
    // The verifier only accepts context loads at constant offsets from the context pointer, so
    // every field is read on its own (volatile keeps LLVM from merging them into a select).
    // SAFETY: the kernel hands us a valid bpf_sock_ops; these are its stable-ABI fields.
    let (stats, family, local_port, remote_port, local_ip, remote_ip, all_acked) = unsafe {
        let stats = LinkStats {
            bytes_received: read_volatile(&raw const (*ops).bytes_received),
            bytes_acked: read_volatile(&raw const (*ops).bytes_acked),
            segs_in: read_volatile(&raw const (*ops).segs_in),
            segs_out: read_volatile(&raw const (*ops).segs_out),
            total_retrans: read_volatile(&raw const (*ops).total_retrans),
            lost_out: read_volatile(&raw const (*ops).lost_out),
            srtt_us: read_volatile(&raw const (*ops).srtt_us) >> 3,
            snd_cwnd: read_volatile(&raw const (*ops).snd_cwnd),
        };
        let family = read_volatile(&raw const (*ops).family);
        let mut l = [0u32; 4];
        let mut r = [0u32; 4];
        if family == 2 {
            l[0] = read_volatile(&raw const (*ops).local_ip4);
            r[0] = read_volatile(&raw const (*ops).remote_ip4);
        } else {
            l[0] = read_volatile(&raw const (*ops).local_ip6[0]);
            l[1] = read_volatile(&raw const (*ops).local_ip6[1]);
            l[2] = read_volatile(&raw const (*ops).local_ip6[2]);
            l[3] = read_volatile(&raw const (*ops).local_ip6[3]);
            r[0] = read_volatile(&raw const (*ops).remote_ip6[0]);
            r[1] = read_volatile(&raw const (*ops).remote_ip6[1]);
            r[2] = read_volatile(&raw const (*ops).remote_ip6[2]);
            r[3] = read_volatile(&raw const (*ops).remote_ip6[3]);
        }
        let local_port = read_volatile(&raw const (*ops).local_port);
        let remote_port = u32::from_be(read_volatile(&raw const (*ops).remote_port));
        let all_acked = u32::from(
            read_volatile(&raw const (*ops).snd_una) == read_volatile(&raw const (*ops).snd_nxt),
        );
        (stats, family, local_port, remote_port, l, r, all_acked)
    };
    let event = LinkClosed {
        cookie,
        // SAFETY: sock_ops context; helper defined for it (5.15+).
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        info,
        stats,
        family,
        local_port,
        remote_port,
        old_state: ctx.arg(0),
        all_acked,
        _pad: 0,
        local_ip,
        remote_ip,
    };
    let wakeup = if CLOSED.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if CLOSED.output::<LinkClosed>(&event, wakeup).is_err() {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer.
            unsafe { *lost += 1 };
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
