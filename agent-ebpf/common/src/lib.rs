//! `#[repr(C)]` types shared by the eBPF programs and the agent. Changing one changes the ABI
//! between the two halves: both are always built together from this workspace.
#![no_std]

/// Role of the local end of a TCP link, as gala-gopher reports it.
pub const ROLE_SERVER: u8 = 0;
pub const ROLE_CLIENT: u8 = 1;
/// The destroy hooks' role of a socket that was not `connect()`ed under the probe and that they
/// did not see its process close (no entry, or an entry a reset made): an accepted socket or
/// one older than the probe. The agent decides, as for a socket it finds live without an entry
/// (`agent/src/probes/tcp/role.rs`).
pub const ROLE_UNKNOWN: u8 = 2;

/// TCP states, numbered as in the kernel's include/net/tcp_states.h: `bpf_sock_ops` state
/// callbacks, [`LinkClosed::old_state`] and sock_diag's `idiag_state` all use these numbers.
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_SYN_SENT: u32 = 2;
pub const TCP_SYN_RECV: u32 = 3;
pub const TCP_FIN_WAIT1: u32 = 4;
pub const TCP_FIN_WAIT2: u32 = 5;
pub const TCP_TIME_WAIT: u32 = 6;
pub const TCP_CLOSE: u32 = 7;
pub const TCP_CLOSE_WAIT: u32 = 8;
pub const TCP_LAST_ACK: u32 = 9;
pub const TCP_LISTEN: u32 = 10;
pub const TCP_CLOSING: u32 = 11;
pub const TCP_NEW_SYN_RECV: u32 = 12;

/// Slots of the eBPF `MAP_FULL` per-CPU counters: inserts a full map refused.
pub const MAP_FULL_LINKS: u32 = 0;
pub const MAP_FULL_SLOTS: u32 = 1;

/// The owner field was captured in the owning process's own context (connect or close).
pub const OWNER_KNOWN: u8 = 1;
/// In a close event: the socket had no `LINKS` entry (the map was full when it started, or it
/// was established under an earlier agent whose callback flags it still carries).
pub const OWNER_NO_ENTRY: u8 = 2;

/// What the agent knows about one live TCP socket, keyed by socket cookie in `LINKS` (or in a
/// slot of `OWNER_SLOTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkInfo {
    /// Process (tgid) that connected (client) or that closed the socket (server).
    pub tgid: u32,
    pub role: u8,
    pub owner: u8,
    /// 1 when a CLOSE of this socket ends a connection that carried data: set from the start,
    /// since the CLOSE callback is only switched on at the handshake. With the destroy hooks:
    /// 1 once the close event was sent (at this end's abort).
    pub established: u8,
    /// 1 when `bytes_acked` counts our SYN (active open): not a data byte.
    pub syn_acked: u8,
    /// In close events of a socket that closed first: 1 when the peer's FIN reached the full
    /// socket (the kernel's `SOCK_DONE`, or without BTF a segment with FIN seen after our close);
    /// tells whether `bytes_received` at CLOSE counts the peer's FIN. Unused in `LINKS`.
    pub fin_seen: u8,
    /// [`RST_SENT`] / [`RST_RECEIVED`]: the connection was reset (set by the reset
    /// tracepoints while the socket still had its `LINKS` entry; carried by its close event).
    pub rst: u8,
    /// 1 when this probe saw the socket start (its connect, or its handshake in the sockops
    /// fallback): all of its counters are new traffic. A close of a socket not born under the
    /// probe, before the agent's first dump, may carry lifetime totals (see the collector).
    pub born: u8,
    /// Storage of the destroy hooks: a reset found the socket in a state past our FIN
    /// (FIN_WAIT1/2, CLOSING, LAST_ACK).
    pub fin_sent: u8,
    pub comm: [u8; 16],
}

/// One slot of `OWNER_SLOTS`, the destroy hooks' direct-mapped table of sockets' owners (slot
/// `cookie & mask`): what a `LINKS` entry holds, reached without hashing (see
/// `agent-ebpf/src/slots.rs`). `cookie` is 0 when free, [`SLOT_BUSY`] while a connect or a
/// release writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnerSlot {
    pub cookie: u64,
    /// `LINKS` entries whose cookie maps to this slot: while 0, a socket not in the slot has no
    /// entry anywhere, and no hash lookup is made for it.
    pub in_links: u64,
    pub info: LinkInfo,
}

/// `OwnerSlot::cookie` while a connect or a release claims the slot and writes its entry.
pub const SLOT_BUSY: u64 = u64::MAX;

/// `LinkInfo::rst` bits: this end reset the connection (an abort: `SO_LINGER` 0, close with
/// unread data), or the peer's RST reset it.
pub const RST_SENT: u8 = 1;
pub const RST_RECEIVED: u8 = 2;

/// `LinkClosed::kind`: a socket's close (its final counters), or a reset of a socket that had
/// no `LINKS` entry any more (the kernel sends an abort's RST after the move to CLOSE) or never
/// had one; the agent gives the reset to the link that socket was (or is) counted in.
pub const EVENT_CLOSE: u32 = 0;
pub const EVENT_RESET: u32 = 1;

/// Final counters of a socket, read from `struct bpf_sock_ops` (stable ABI) when it reaches CLOSE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub total_retrans: u32,
    pub lost_out: u32,
    /// Smoothed RTT in microseconds (the kernel's srtt_us >> 3).
    pub srtt_us: u32,
    pub snd_cwnd: u32,
}

/// Ring-buffer event: one per TCP socket that was established and has now closed (or, with
/// [`EVENT_RESET`], one per reset the close event could not carry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkClosed {
    pub cookie: u64,
    pub netns_cookie: u64,
    pub info: LinkInfo,
    pub stats: LinkStats,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u32,
    /// Host byte order.
    pub local_port: u32,
    pub remote_port: u32,
    /// State the socket left for CLOSE (TCP_* numbering). From the destroy hook, which runs
    /// once the socket is in CLOSE: the state equivalent to what it did (LAST_ACK: both FINs,
    /// FIN_WAIT1: ours only, CLOSE_WAIT: the peer's only, ESTABLISHED: neither).
    pub old_state: u32,
    /// 1 when everything we sent, FIN included, was acknowledged (snd_una == snd_nxt).
    pub all_acked: u32,
    /// [`EVENT_CLOSE`], or [`EVENT_RESET`]: then only `cookie` and `info.rst` are set.
    pub kind: u32,
    /// Network byte order; IPv4 in the first word.
    pub local_ip: [u32; 4],
    pub remote_ip: [u32; 4],
}

impl LinkClosed {
    /// A reset its socket's close event does not carry ([`EVENT_RESET`]): the agent gives it
    /// to the link the socket was counted in.
    #[must_use]
    pub fn reset(cookie: u64, rst: u8) -> Self {
        Self {
            cookie,
            info: LinkInfo {
                rst,
                ..LinkInfo::default()
            },
            kind: EVENT_RESET,
            ..Self::default()
        }
    }
}

/// Byte offsets of the kernel socket fields the tracing programs read through BTF pointers
/// (`struct sock *` and what hangs off it), resolved by the agent from /sys/kernel/btf/vmlinux
/// and handed to the programs as read-only globals. Rust eBPF has no CO-RE relocations, and
/// these layouts change between kernel builds: a frozen `.rodata` value is a constant to the
/// verifier, so `ptr + offset` loads still verify as BTF pointer accesses.
///
/// Every `tcp_sock`, `sock_common` and `sock` field is relative to the `struct sock *` (a
/// `tcp_sock` starts with its `sock`, which starts with its `sock_common`); the others are
/// relative to a pointer to their own struct. Each field's width is checked at resolution (see
/// the agent's `probes::tcp::btf`), so a program reads exactly that width.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `tcp_sock`: u64.
    pub bytes_received: u32,
    /// `tcp_sock`: u64.
    pub bytes_acked: u32,
    /// `tcp_sock`, this and the rest of its fields: u32.
    pub segs_in: u32,
    pub segs_out: u32,
    pub total_retrans: u32,
    pub lost_out: u32,
    /// The kernel's smoothed RTT, in 1/8 µs.
    pub srtt_us: u32,
    pub snd_cwnd: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub write_seq: u32,
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    /// `sock_common`: u16.
    pub skc_family: u32,
    /// `sock_common`: u8.
    pub skc_state: u32,
    /// `sock_common`: u16, host byte order.
    pub skc_num: u32,
    /// `sock_common`: u16, network byte order.
    pub skc_dport: u32,
    /// `sock_common`: 4 bytes, network byte order.
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    /// `sock_common`: 16 bytes.
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    /// `sock_common`: the `struct net *` inside `skc_net` (possible_net_t).
    pub skc_net: u32,
    /// `sock_common`: u64 (atomic64_t), the socket cookie once one was asked for (0 before).
    pub skc_cookie: u32,
    /// `sock`: `struct socket *`, NULL once the socket is orphaned.
    pub sk_socket: u32,
    /// `socket.file`: `struct file *`.
    pub socket_file: u32,
    /// `file.f_inode`: `struct inode *`.
    pub file_inode: u32,
    /// `inode.i_ino`: u64.
    pub inode_ino: u32,
    /// `net.net_cookie`: u64.
    pub net_cookie: u32,
}

impl SockOffsets {
    /// All zero: what a program's offsets global holds until the agent sets it at load.
    pub const ZERO: Self = Self {
        bytes_received: 0,
        bytes_acked: 0,
        segs_in: 0,
        segs_out: 0,
        total_retrans: 0,
        lost_out: 0,
        srtt_us: 0,
        snd_cwnd: 0,
        snd_una: 0,
        snd_nxt: 0,
        write_seq: 0,
        rcv_nxt: 0,
        copied_seq: 0,
        skc_family: 0,
        skc_state: 0,
        skc_num: 0,
        skc_dport: 0,
        skc_rcv_saddr: 0,
        skc_daddr: 0,
        skc_v6_rcv_saddr: 0,
        skc_v6_daddr: 0,
        skc_net: 0,
        skc_cookie: 0,
        sk_socket: 0,
        socket_file: 0,
        file_inode: 0,
        inode_ino: 0,
        net_cookie: 0,
    };
}

/// A listening socket as the health programs key their per-listener counters: its network
/// namespace, family, bound address and port (what sock_diag reports for the listener).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// `net.net_cookie` (what `SO_NETNS_COOKIE` returns inside the namespace).
    pub netns_cookie: u64,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
    /// Network byte order; IPv4 in the first word.
    pub addr: [u32; 4],
}

/// Per-connection events of a listening socket, per [`ListenerKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    /// SYN-ACKs retransmitted (`tcp:tcp_retransmit_synack`).
    pub retran_synacks: u64,
    /// Connections created from a completed handshake (a child socket cloned from the
    /// listener: what `TcpPassiveOpens` counts).
    pub passive_open: u64,
    /// Handshake-completing ACKs dropped because the accept queue was full (drop reason
    /// `TCP_LISTEN_OVERFLOW`).
    pub accept_overflow: u64,
}

/// A handshake in progress on a listener (a request socket), as the kernel's request socket,
/// the child socket made from it and sock_diag all show it. The addresses of an IPv4
/// handshake on a dual-stack IPv6 listener are not reliable in all three (the request socket
/// keeps them in its IPv4 fields, under the IPv6 family): only an IPv4 listener's remote
/// address is part of the key, so two handshakes from one client port of two IPv6 (or mapped)
/// clients to one port at once are one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReqKey {
    pub netns_cookie: u64,
    /// The client's IPv4 address (network byte order) on an AF_INET listener, else 0.
    pub remote_v4: u32,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
}

/// A client socket's counters' key: the connecting process and the destination it asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectKey {
    pub netns_cookie: u64,
    pub tgid: u32,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Destination port, host byte order.
    pub port: u16,
    /// Destination address, network byte order; IPv4 in the first word.
    pub addr: [u32; 4],
}

/// Per-connection events of client sockets, per [`ConnectKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectCounts {
    /// `connect()`s that started a handshake.
    pub active_open: u64,
    /// Handshakes refused (ECONNREFUSED: a RST, or an ICMP port unreachable, to the SYN).
    pub refused: u64,
    /// Handshakes timed out (ETIMEDOUT: SYN retransmissions exhausted).
    pub timed_out: u64,
    /// Handshakes failed with any other error (EHOSTUNREACH, ENETUNREACH, ...).
    pub failed_other: u64,
    /// Established connections this end reset (abort, `SO_LINGER` 0, close with unread data).
    pub send_rsts: u64,
    /// Established connections the peer reset.
    pub receive_rsts: u64,
}

/// Client destinations the health programs keep counters for; past it, events are counted in
/// slot 1 of `HEALTH_FULL`.
pub const HEALTH_CONNECTS: u32 = 16384;
/// Client sockets whose owner the health programs remember (an LRU map: the oldest go first).
pub const HEALTH_SOCKETS: u32 = 65536;

/// Listeners the health programs keep counters for; past it, a new listener's events are
/// counted in slot 0 of `HEALTH_FULL`.
pub const HEALTH_LISTENERS: u32 = 4096;
/// Handshakes in progress the endpoint probe follows at once (`REQS`): the sum of the SYN queues
/// of the node's listeners (each at most its backlog, capped by `net.core.somaxconn`).
pub const HEALTH_REQS: u32 = 65536;

/// TCP states whose sockets the `iter/tcp` program reports: the link-carrying states (the
/// agent's `LINK_STATES`: ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING) and LISTEN.
pub const ITER_STATES: u32 =
    (1 << 1) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11);

/// One TCP socket as the `iter/tcp` program writes it: the facts a sock_diag dump with
/// `tcp_info` gives the agent, in a fixed-size record (no netlink framing, no attributes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IterSocket {
    pub cookie: u64,
    /// Inode of the socket (0: none, an orphan being closed), as sock_diag reports it.
    pub inode: u64,
    /// The counters, as a close event carries them.
    pub stats: LinkStats,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// TCP_* numbering.
    pub state: u8,
    pub _pad: u8,
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    /// Network byte order; IPv4 in the first word.
    pub local_ip: [u32; 4],
    pub remote_ip: [u32; 4],
}

/// One nginx upstream (peer) connection, as the nginx probe's uprobes record it: the process
/// and the address of its `ngx_connection_t` in that process. The agent reads the rest (which
/// session it serves, the two sockets) from the process itself, so this is all the kernel keeps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NginxPeer {
    pub tgid: u32,
    pub _pad: u32,
    /// User-space address of the upstream `ngx_connection_t`.
    pub conn: u64,
}

/// Slots of the nginx probe's `NGX_FULL` per-CPU counters.
pub const NGX_FULL_PEERS: u32 = 0;
pub const NGX_FULL_PENDING: u32 = 1;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::NginxPeer {}
    // SAFETY: plain-old-data, `#[repr(C)]`, every bit pattern valid.
    unsafe impl aya::Pod for super::LinkInfo {}
    unsafe impl aya::Pod for super::OwnerSlot {}
    unsafe impl aya::Pod for super::LinkStats {}
    unsafe impl aya::Pod for super::LinkClosed {}
    unsafe impl aya::Pod for super::SockOffsets {}
    unsafe impl aya::Pod for super::IterSocket {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerCounts {}
    unsafe impl aya::Pod for super::ReqKey {}
    unsafe impl aya::Pod for super::ConnectKey {}
    unsafe impl aya::Pod for super::ConnectCounts {}
}
