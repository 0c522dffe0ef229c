//! nginx upstream connections, recorded once per connect (never per request byte or event).
//!
//! `ngx_event_connect_peer(ngx_peer_connection_t *pc)` is how every nginx proxy module (http
//! proxy/fastcgi/uwsgi/grpc/memcached, stream proxy) gets its upstream connection, including a
//! cached keepalive one (it then returns NGX_DONE). On return, `pc->connection`, the first
//! field of `ngx_peer_connection_t` since nginx 0.x, is the upstream `ngx_connection_t`; its
//! address is recorded in `PEERS` under the process. `ngx_close_connection(c)` removes it, so
//! `PEERS` holds the upstream connections alive now. Which session a connection serves and its
//! sockets are read by the agent from the process (see the agent's `probes/nginx`), because
//! that can change while the connection lives (keepalive reuse) and costs nothing here.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};
use gopher_common::{NGX_FULL_PEERS, NGX_FULL_PENDING, NginxPeer};

/// Live upstream connections (value unused). Sized by the agent (`max_sessions`).
#[map]
static PEERS: HashMap<NginxPeer, u8> = HashMap::with_max_entries(65536, 0);

/// `pc` of a `ngx_event_connect_peer` call in progress, by thread (pid_tgid).
#[map]
static PENDING: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// Inserts refused because a map was full (slots `NGX_FULL_*`).
#[map]
static NGX_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

fn full(slot: u32) {
    if let Some(n) = NGX_FULL.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *n += 1 };
    }
}

#[uprobe]
pub fn gopher_ngx_connect(ctx: ProbeContext) -> u32 {
    let Some(pc) = ctx.arg::<u64>(0) else {
        return 0;
    };
    if PENDING.insert(bpf_get_current_pid_tgid(), pc, 0).is_err() {
        full(NGX_FULL_PENDING);
    }
    0
}

#[uretprobe]
pub fn gopher_ngx_connect_ret(_ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pc) = (unsafe { PENDING.get(id) }).copied() else {
        return 0;
    };
    let _ = PENDING.remove(id);
    // SAFETY: reading user memory through the checked helper.
    let Ok(conn) = (unsafe { bpf_probe_read_user(pc as *const u64) }) else {
        return 0;
    };
    if conn == 0 {
        return 0;
    }
    let key = NginxPeer {
        tgid: (id >> 32) as u32,
        _pad: 0,
        conn,
    };
    if PEERS.insert(key, 0, 0).is_err() {
        full(NGX_FULL_PEERS);
    }
    0
}

#[uprobe]
pub fn gopher_ngx_close(ctx: ProbeContext) -> u32 {
    let Some(conn) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let key = NginxPeer {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        conn,
    };
    let _ = PEERS.remove(key);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
