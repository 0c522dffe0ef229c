//! TCP link accounting with per-connection (never per-packet) hooks.
//!
//! Two designs; the agent picks the first that loads (`agent/src/probes/tcp/bpf.rs`):
//!
//! * The default with kernel BTF ([`destroy`]): each socket is accounted once, when the kernel
//!   destroys it (`tp_btf/tcp_destroy_sock`), its final counters read from the `tcp_sock` at
//!   BTF offsets; owners are written by `cgroup/connect4|6` (a client's, in `connect()`) and
//!   `cgroup/sock_release` (a server's, in the last `close()`), into the socket's slot of
//!   `OWNER_SLOTS` or, when another socket holds it, into `LINKS` ([`slots`]). No sockops
//!   program is attached, so no socket pays for the ops every sockops program is called for.
//!   A loopback connection, both ends watched: 5 runs (connect 1, sock_release 2, destroy 2;
//!   a reset adds one per end that sees it).
//! * The sockops fallback (no BTF, or `connect_hooks = true`), below. `sockops`
//!   ([`gopher_sockops_owner`]) records a client's owner in the connect callback (the
//!   connecting process's context) and switches the state callback on for that socket only; it
//!   sees the handshake complete (role), the close (`close()` or `shutdown()` moves the socket
//!   to FIN_WAIT1 or LAST_ACK in the closing process's context: the owner of a server socket)
//!   and the move to CLOSE, where it emits the socket's final counters. Kernels that refuse the
//!   current-task helpers in sockops (or `connect_hooks = true`) get [`gopher_sockops`] plus
//!   `cgroup/connect4|6` (in `connect()`: a client's owner) and `cgroup/sock_release` (in the
//!   last `close()`: a server's owner, and the entry of a connect that never completed).
//!
//! Counters of live sockets are read by the agent from the socket iterator or sock_diag, so
//! nothing here fires per send or recv.
//!
//! What a connection costs is counted in program runs (the kernel's `run_cnt`; `bench/run.sh`
//! reports them per op). With sockops, a loopback connection whose server closes first, both
//! ends watched, counted per op: 9 ops every sockops program pays whether it asked or not (RTO
//! init, receive window init and ECN once per end, on the server's request socket; connect;
//! active and passive established) and 8 state callbacks (client: SYN_SENT → ESTABLISHED →
//! CLOSE_WAIT → LAST_ACK → CLOSE; server: SYN_RECV → ESTABLISHED, which the kernel moves right
//! after the passive established callback switched it on, → FIN_WAIT1 → FIN_WAIT2 → CLOSE):
//! 17, plus a `LINKS` insert, lookup and remove (200–400 ns each). Whether the peer's FIN
//! arrived is read from the socket itself at CLOSE (`SOCK_DONE`, through BTF); without BTF a
//! header-parsing callback on the segments after our FIN is the fallback.
//!
//! In the sockops design, every program runs for every op of every socket in the cgroup, so
//! ops we do not need return at once. A socket whose `LINKS` insert failed (map full) still has
//! its state callback and still emits its close event, with the owner left unknown: its bytes
//! are banked, and the failed insert is counted in `MAP_FULL`. In the destroy design, such a
//! socket's close event comes from the destroy hook all the same.
#![no_std]
#![no_main]
// Atomic compare-and-swap and add on map values (`slots.rs`): the BPF target has no `Atomic*`
// read-modify-write API in `core` (its spec turns `atomic-cas` off); LLVM emits the 64-bit
// ones for every BPF CPU (kernel 5.12 and later run them).
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "core_intrinsics: see above")]

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use core::ptr::read_volatile;

mod destroy;
mod early;
mod entry;
mod health;
mod iter;
mod listen;
mod resets;
mod slots;

pub(crate) use entry::{
    copy_info, current_owner, link_info, owner_flags, set_owner, write_current_owner, zero_info,
};

use gopher_common::{
    EVENT_CLOSE, LinkClosed, LinkInfo, LinkStats, MAP_FULL_LINKS, MAP_FULL_SLOTS, OWNER_NO_ENTRY,
    ROLE_CLIENT, ROLE_SERVER, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT1,
    TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_SYN_RECV, TCP_SYN_SENT,
};

pub(crate) const IPPROTO_TCP: u32 = 6;
pub(crate) const SOCK_STREAM: u32 = 1;
const TCPHDR_FIN: u32 = 0x01;
/// Allow the operation (cgroup programs must say so explicitly).
pub(crate) const ALLOW: i32 = 1;

/// Offset of `sock.sk_flags` (an unsigned long), set by the agent from the kernel's BTF at load
/// (frozen `.rodata`: a constant to the verifier, so the load below is a checked BTF access and
/// the branch not taken is never verified). 0 when unknown (no BTF): sk_flags never sits at 0,
/// the socket starts with its `sock_common`.
#[unsafe(no_mangle)]
static SOCKOPS_SK_FLAGS: u32 = 0;
/// `enum sock_flags`' `SOCK_DONE` (bit 1 since Linux 2.x): set by `tcp_fin()` only, right after
/// the peer's FIN moved `rcv_nxt` (so `bytes_received` counts it); cleared by `tcp_disconnect()`.
pub(crate) const SOCK_DONE: u64 = 1 << 1;
/// Offset of `sock.sk_shutdown` (a u8), from BTF like [`SOCKOPS_SK_FLAGS`]; 0 when unknown.
#[unsafe(no_mangle)]
static SOCKOPS_SK_SHUTDOWN: u32 = 0;
/// `RCV_SHUTDOWN | SEND_SHUTDOWN`.
const SHUTDOWN_MASK: u8 = 3;

/// Live sockets by cookie. A plain preallocated hash: LRU maps cost twice as much per update,
/// and every entry has an owner that removes it: the CLOSE callback, or for a connect that never
/// completed, `sock_release` (watching the state from the connect on would cost a program run
/// per connection more). Entries of sockets never released through a file (kernel sockets) are
/// swept by the agent.
#[map]
static LINKS: HashMap<u64, LinkInfo> = HashMap::with_max_entries(65536, 0);

/// Final counters of closed sockets, one event per socket.
#[map]
static CLOSED: RingBuf = RingBuf::with_byte_size(CLOSED_BYTES, 0);
const CLOSED_BYTES: u32 = 4 << 20;
/// Wake the agent only once this much is waiting. A wake-up per event costs an IPI (a VM exit
/// on virtual machines) in the closing connection's path: at connection churn that was most of
/// the probe's cost. The agent reads the ring on a short timer anyway (every 250 ms, at 10 k
/// connections/s a fifth of the ring); the wake-up is for when it is late.
const WAKEUP_BYTES: u64 = (CLOSED_BYTES / 2) as u64;
/// How full `CLOSED` is, is asked once per this many close events of a CPU (a helper call,
/// tens of ns with return-stack mitigations, twice per connection when asked every time): the
/// wake-up then comes at most 64 events (9 KiB) per CPU later, against half of 4 MiB.
const QUERY_EVERY: u32 = 64;

/// Close events this CPU sent since it last asked how full `CLOSED` is (an approximate count:
/// a program interrupted on its CPU by another one may lose an increment, which only moves
/// the next question by one event).
#[map]
static SINCE_QUERY: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Events that did not fit in `CLOSED`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Inserts refused by a full map, per map (`MAP_FULL_*` slots).
#[map]
static MAP_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAP_FULL_SLOTS, 0);

fn bump(counter: &PerCpuArray<u64>, slot: u32) {
    if let Some(n) = counter.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *n += 1 };
    }
}

/// Records a live socket; a refusal (the map is full) is counted, and the socket then closes
/// with an unknown owner. Returns whether it was recorded.
fn insert_link(cookie: u64, info: &LinkInfo) -> bool {
    if LINKS.insert(&cookie, info, 0).is_err() {
        bump(&MAP_FULL, MAP_FULL_LINKS);
        return false;
    }
    true
}

/// What [`insert_new`] did.
enum Inserted {
    New,
    /// Another CPU made the socket's entry meanwhile: kept, not overwritten.
    Present(*mut LinkInfo),
    /// The map is full (counted).
    Full,
}

/// Inserts `info` for a socket that had no entry a moment ago.
fn insert_new(cookie: u64, info: &LinkInfo) -> Inserted {
    const BPF_NOEXIST: u64 = 1;
    const EEXIST: i64 = 17;
    match LINKS.insert(&cookie, info, BPF_NOEXIST) {
        Ok(()) => Inserted::New,
        Err(e) if i64::from(e) == -EEXIST => LINKS
            .get_ptr_mut(&cookie)
            .map_or(Inserted::Full, Inserted::Present),
        Err(_) => {
            bump(&MAP_FULL, MAP_FULL_LINKS);
            Inserted::Full
        }
    }
}

/// Marks a server socket, so that its close event still says "server" when it has no `LINKS`
/// entry (the map was full), and so that the close callbacks know, without a map lookup, that its
/// owner is still to be recorded: the RTO callback flag, which costs a program run only when a
/// retransmission timer fires and is otherwise unused here (the socket itself is the only storage
/// that needs no map).
const SERVER_MARK: u32 = BPF_SOCK_OPS_RTO_CB_FLAG;

fn connect(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    let (ty, proto) = unsafe { ((*ctx.sock_addr).type_, (*ctx.sock_addr).protocol) };
    if ty == SOCK_STREAM && proto == IPPROTO_TCP {
        // SAFETY: ctx is a sock_addr context, for which this helper is defined.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = insert_link(cookie, &current_owner(ROLE_CLIENT));
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
    let (proto, state) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).state) };
    if proto != IPPROTO_TCP {
        return ALLOW;
    }
    // SAFETY: sock context; helper defined for it.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(info) = LINKS.get_ptr_mut(&cookie) {
        // With the connect hooks, a connect that failed (or is abandoned) never gets a CLOSE
        // callback: the state callback is only switched on at the handshake. Its entry goes now.
        if matches!(state, TCP_SYN_SENT | TCP_CLOSE) {
            let _ = LINKS.remove(&cookie);
            return ALLOW;
        }
        // SAFETY: pointer into a map value, valid while the program runs.
        set_owner(unsafe { &mut *info });
    }
    ALLOW
}

/// Records owners itself, in process context: a client's in the connect callback, a server's
/// when its process closes it (FIN_WAIT1 or LAST_ACK, or CLOSE when it aborts the connection), so that no `sock_release` program runs
/// for every socket. The state callback is on from the connect, so a connect that fails still
/// reaches CLOSE and its entry goes then (one run more per connection than switching it on at
/// the handshake, one less than `sock_release` on both ends). Kernels that refuse the
/// current-task helpers here get [`gopher_sockops`] plus the `connect4|6` and `sock_release`
/// programs instead.
#[sock_ops]
pub fn gopher_sockops_owner(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        let _ = insert_link(cookie(&ctx), &current_owner(ROLE_CLIENT));
        add_cb_flags(&ctx, BPF_SOCK_OPS_STATE_CB_FLAG);
        return 1;
    }
    sockops(&ctx, true)
}

#[sock_ops]
pub fn gopher_sockops(ctx: SockOpsContext) -> u32 {
    sockops(&ctx, false)
}

/// `owners`: this program records server owners itself (no `sock_release` program runs).
#[inline(always)]
fn sockops(ctx: &SockOpsContext, owners: bool) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(ctx, ROLE_CLIENT),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(ctx, ROLE_SERVER),
        BPF_SOCK_OPS_STATE_CB => match ctx.arg(1) {
            TCP_CLOSE => closed(ctx, owners),
            new @ (TCP_FIN_WAIT1 | TCP_LAST_ACK) => {
                // Only `close()` and `shutdown()` move a socket here: the closing process's
                // context.
                if owners && ctx.cb_flags() & SERVER_MARK != 0 {
                    if let Some(info) = LINKS.get_ptr_mut(&cookie(ctx)) {
                        // SAFETY: pointer into a map value, valid while the program runs.
                        set_owner(unsafe { &mut *info });
                    }
                }
                // We closed first. Whether the peer's FIN then reaches this socket (and is
                // counted in bytes_received) or a later time-wait socket is read at CLOSE from
                // the socket (`fin_received`). Without its offset (no BTF) it is only visible in
                // the segments, so watch the few that still arrive, until the FIN.
                if new == TCP_FIN_WAIT1 && sk_flags_offset() == 0 {
                    add_cb_flags(ctx, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG);
                }
            }
            _ => {}
        },
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => {
            // SAFETY: valid bpf_sock_ops; skb_tcp_flags is defined in this callback.
            let flags = unsafe { read_volatile(&raw const (*ctx.ops).skb_tcp_flags) };
            if flags & TCPHDR_FIN != 0 {
                // The FIN is here: no segment after it matters, so stop parsing (a half-closed
                // receiver would otherwise run this for every data segment until the end).
                // The cleared flag itself records the FIN (see `closed`): no map access, and
                // it works for sockets that have no `LINKS` entry.
                clear_cb_flags(ctx, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG);
            }
        }
        _ => {}
    }
    1
}

#[inline(always)]
pub(crate) fn sk_flags_offset() -> usize {
    // SAFETY: an immutable static; volatile keeps it a `.rodata` load instead of the 0 LLVM
    // would fold in.
    unsafe { read_volatile(&raw const SOCKOPS_SK_FLAGS) as usize }
}

/// Whether the peer's FIN reached this socket (and `bytes_received` counts it), asked at CLOSE
/// of a socket that closed first.
#[inline(always)]
fn fin_received(ctx: &SockOpsContext) -> bool {
    let off = sk_flags_offset();
    if off == 0 {
        // The fallback: the parse flag is set on entering FIN_WAIT1 and cleared when the FIN
        // arrives.
        return ctx.cb_flags() & BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG == 0;
    }
    let tp = tcp_sock(ctx);
    if tp.is_null() {
        return false;
    }
    // SAFETY: `off` is the BTF offset of `sock.sk_flags` (an unsigned long) in the tcp_sock
    // that starts with its sock; the verifier checks the access against BTF.
    let flags = unsafe { read_volatile(tp.add(off).cast::<u64>()) };
    flags & SOCK_DONE != 0
}

/// The full socket of a state callback as bytes to read BTF-checked fields from; null if none.
#[inline(always)]
fn tcp_sock(ctx: &SockOpsContext) -> *const u8 {
    // SAFETY: valid bpf_sock_ops; `sk` is the full socket in the state callback (checked).
    let sk = unsafe { read_volatile(&raw const (*ctx.ops).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return core::ptr::null();
    }
    // SAFETY: sk is a socket the verifier knows; the helper checks it is a TCP one.
    unsafe { bpf_skc_to_tcp_sock(sk.cast()) }.cast::<u8>()
}

/// Whether this move to CLOSE is the socket's own process closing it with a reset (`close()`
/// with unread data, `SO_LINGER` 0): `__tcp_close` sets both shutdown bits before it moves an
/// established socket to CLOSE, while a received reset or a timeout (`tcp_done`) sets them only
/// after the move, so only the process's own close finds them set here.
#[inline(always)]
fn aborted_by_its_process(ctx: &SockOpsContext, old_state: u32) -> bool {
    if !matches!(old_state, TCP_ESTABLISHED | TCP_CLOSE_WAIT) {
        return false;
    }
    // SAFETY: an immutable static; volatile keeps it a `.rodata` load (see sk_flags_offset).
    let off = unsafe { read_volatile(&raw const SOCKOPS_SK_SHUTDOWN) } as usize;
    if off == 0 {
        return false;
    }
    let tp = tcp_sock(ctx);
    if tp.is_null() {
        return false;
    }
    // SAFETY: `off` is the BTF offset of `sock.sk_shutdown` (a u8) in the tcp_sock that starts
    // with its sock; the verifier checks the access against BTF.
    let shutdown = unsafe { read_volatile(tp.add(off)) };
    shutdown & SHUTDOWN_MASK == SHUTDOWN_MASK
}

fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: sock_ops context; helper defined for it.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Adds to the socket's callback flags: setting them outright would clear flags another sockops
/// program (a CNI, a tracer) relies on. Flags already set cost no helper call.
fn add_cb_flags(ctx: &SockOpsContext, flags: u32) {
    let now = ctx.cb_flags();
    if now & flags != flags {
        let _ = ctx.set_cb_flags((now | flags) as i32);
    }
}

fn clear_cb_flags(ctx: &SockOpsContext, flags: u32) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() & !flags) as i32);
}

/// Switches the state callback on (for the CLOSE; a client's may be on from its connect). A
/// client's entry was made at connect; a server socket is new here (its cookie too), so it is
/// inserted without a lookup first, and marked (one helper call for both flags).
fn established(ctx: &SockOpsContext, role: u8) {
    if role == ROLE_CLIENT {
        add_cb_flags(ctx, BPF_SOCK_OPS_STATE_CB_FLAG);
        return;
    }
    add_cb_flags(ctx, BPF_SOCK_OPS_STATE_CB_FLAG | SERVER_MARK);
    // SAFETY: valid bpf_sock_ops (full socket in the established callbacks).
    let syn_acked = u8::from(unsafe { read_volatile(&raw const (*ctx.ops).bytes_acked) } > 0);
    // Softirq context here: the current task is not the owner, so record none.
    let info = link_info(role, 0, syn_acked, 0, [0; 16]);
    let _ = insert_link(cookie(ctx), &info);
}

fn closed(ctx: &SockOpsContext, owners: bool) {
    let cookie = cookie(ctx);
    let old_state = ctx.arg(0);
    let mut info = if let Some(info) = LINKS.get_ptr(&cookie) {
        // SAFETY: pointer into a map value, valid while the program runs.
        let mut info = unsafe { *info };
        // Cookies are unique per boot, but the entry must go with the socket.
        let _ = LINKS.remove(&cookie);
        // A server socket its process aborts (unread data, `SO_LINGER` 0) goes straight to
        // CLOSE, in that process's context: its owner is recorded here, as at FIN_WAIT1.
        if owners && info.role == ROLE_SERVER && aborted_by_its_process(ctx, old_state) {
            set_owner(&mut info);
        }
        info
    } else {
        // No entry: the map was full when this socket started (counted then), or an earlier
        // agent switched its callbacks on. A failed connect never carried data; anything else
        // did get established.
        if matches!(old_state, TCP_SYN_SENT | TCP_SYN_RECV) {
            return;
        }
        let role = if ctx.cb_flags() & SERVER_MARK == 0 {
            ROLE_CLIENT
        } else {
            ROLE_SERVER
        };
        LinkInfo {
            born: 0,
            ..link_info(
                role,
                OWNER_NO_ENTRY,
                u8::from(role == ROLE_CLIENT),
                0,
                [0; 16],
            )
        }
    };
    // A connect that failed (its callback is on from the connect) never carried data.
    if info.established == 0 || old_state == TCP_SYN_SENT {
        return;
    }
    info.fin_seen =
        u8::from(matches!(old_state, TCP_FIN_WAIT1 | TCP_FIN_WAIT2) && fin_received(ctx));
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
        old_state,
        all_acked,
        kind: EVENT_CLOSE,
        local_ip,
        remote_ip,
    };
    emit(&event, true);
}

/// Queues an event in `CLOSED` (counted in `LOST` when it has no room). A close may wake the
/// agent once enough is waiting; a rare reset event never does (the agent drains on a short
/// timer anyway).
#[inline(always)]
pub(crate) fn emit(event: &LinkClosed, close: bool) {
    if CLOSED.output::<LinkClosed>(event, wakeup(close)).is_err() {
        bump(&LOST, 0);
    }
}

/// A record of `CLOSED` for a close event the caller writes straight into it, then hands to
/// [`submit_close`]; None when the ring has no room (counted in `LOST`).
#[inline(always)]
pub(crate) fn reserve_close() -> Option<RingBufEntry<LinkClosed>> {
    let entry = CLOSED.reserve::<LinkClosed>(0);
    if entry.is_none() {
        bump(&LOST, 0);
    }
    entry
}

/// Queues a close event written by the caller; it may wake the agent, as [`emit`].
#[inline(always)]
pub(crate) fn submit_close(entry: RingBufEntry<LinkClosed>) {
    entry.submit(wakeup(true));
}

/// The ring buffer flag of an event: a close wakes the agent once enough is waiting.
#[inline(always)]
fn wakeup(close: bool) -> u64 {
    if close && time_to_query() && CLOSED.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Whether this close event is the one of [`QUERY_EVERY`] that asks how full `CLOSED` is (a
/// per-CPU array lookup, which the verifier inlines: no call).
#[inline(always)]
fn time_to_query() -> bool {
    let Some(n) = SINCE_QUERY.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot; a racing program on the same CPU only skews the count.
    unsafe {
        *n += 1;
        if *n < QUERY_EVERY {
            return false;
        }
        *n = 0;
    }
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
