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
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use gopher_common::{LinkClosed, LinkInfo, LinkStats, OWNER_KNOWN, ROLE_CLIENT, ROLE_SERVER};

const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;
const TCP_CLOSE: u32 = 7;
/// Allow the operation (cgroup programs must say so explicitly).
const ALLOW: i32 = 1;

/// Live sockets by cookie. LRU so that sockets whose end the programs never see (a connect that
/// fails before the handshake starts) cannot fill it; the agent resizes it at load time.
#[map]
static LINKS: LruHashMap<u64, LinkInfo> = LruHashMap::with_max_entries(65536, 0);

/// Final counters of closed sockets, one event per socket.
#[map]
static CLOSED: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

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
        _pad: 0,
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

#[sock_ops]
pub fn gopher_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // Watch this socket's state so that a failed connect frees its LINKS entry.
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(&ctx, ROLE_CLIENT),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(&ctx, ROLE_SERVER),
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) == TCP_CLOSE {
                closed(&ctx);
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

fn established(ctx: &SockOpsContext, role: u8) {
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    let cookie = cookie(ctx);
    if let Some(info) = LINKS.get_ptr_mut(&cookie) {
        // SAFETY: pointer into a map value, valid while the program runs.
        unsafe { (*info).established = 1 };
        return;
    }
    // Softirq context here: the current task is not the owner, so record none.
    let info = LinkInfo {
        tgid: 0,
        role,
        owner: 0,
        established: 1,
        _pad: 0,
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
    // SAFETY: the kernel hands us a valid bpf_sock_ops; these are its stable-ABI fields.
    let (stats, family, local_port, remote_port, local_ip, remote_ip) = unsafe {
        let o = &*ops;
        let stats = LinkStats {
            bytes_received: o.bytes_received,
            bytes_acked: o.bytes_acked,
            segs_in: o.segs_in,
            segs_out: o.segs_out,
            total_retrans: o.total_retrans,
            lost_out: o.lost_out,
            srtt_us: o.srtt_us >> 3,
            snd_cwnd: o.snd_cwnd,
        };
        let (l, r) = if o.family == 2 {
            ([o.local_ip4, 0, 0, 0], [o.remote_ip4, 0, 0, 0])
        } else {
            (o.local_ip6, o.remote_ip6)
        };
        (
            stats,
            o.family,
            o.local_port,
            u32::from_be(o.remote_port),
            l,
            r,
        )
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
        _pad: 0,
        local_ip,
        remote_ip,
    };
    if CLOSED.output::<LinkClosed>(&event, 0).is_err() {
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
