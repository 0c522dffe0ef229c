//! Kernel struct layouts from BTF, for the eBPF programs that read socket fields through BTF
//! pointers (tracing and iterator programs get a `struct sock *`, not the stable
//! `bpf_sock_ops` view).
//!
//! Rust eBPF has no CO-RE relocations, so the agent resolves each field's byte offset from
//! /sys/kernel/btf/vmlinux and hands the programs a [`SockOffsets`] as a frozen global. A small
//! parser of its own: aya parses BTF but keeps type and member lookup crate-private. It reads
//! only what offsets need (structs, unions, their members, the types that name or qualify them)
//! and checks each field's width, so a kernel that changed a field's type is refused instead of
//! read wrong.

use std::borrow::Cow;

use gopher_common::SockOffsets;

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;

// BTF_KIND_* (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("no struct {0} in kernel BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {path}")]
    NoMember { strukt: String, path: String },
    #[error("{strukt}.{path} is a bitfield")]
    Bitfield { strukt: String, path: String },
    #[error("{strukt}.{path} is {got} bytes wide, expected {want}")]
    Width {
        strukt: String,
        path: String,
        got: u32,
        want: u32,
    },
}

/// A member found by [`Btf::member`]: byte offset from the start of the outer struct, and width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

/// Parsed (native-endian) BTF: the raw bytes plus where each type id starts.
pub struct Btf {
    data: Vec<u8>,
    /// Byte position of type id `i + 1` in `data` (id 0 is void).
    types: Vec<usize>,
    strings: std::ops::Range<usize>,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        const PATH: &str = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(PATH).map_err(|source| BtfError::Read { path: PATH, source })?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let rd = Reader(&data);
        if data.len() < HEADER_MIN || rd.u16(0)? != MAGIC {
            return Err(BtfError::Malformed("bad magic (or foreign byte order)"));
        }
        let hdr_len = rd.u32(4)? as usize;
        let type_off = hdr_len + rd.u32(8)? as usize;
        let type_end = type_off + rd.u32(12)? as usize;
        let str_off = hdr_len + rd.u32(16)? as usize;
        let str_end = str_off + rd.u32(20)? as usize;
        if type_end > data.len() || str_end > data.len() {
            return Err(BtfError::Malformed("sections past the end"));
        }
        let mut types = Vec::new();
        let mut pos = type_off;
        while pos < type_end {
            types.push(pos);
            let info = rd.u32(pos + 4)?;
            let vlen = (info & 0xffff) as usize;
            pos += 12
                + match kind(info) {
                    KIND_INT | 14 /* VAR */ | 17 /* DECL_TAG */ => 4,
                    KIND_ARRAY => 12,
                    KIND_STRUCT | KIND_UNION | 15 /* DATASEC */ | KIND_ENUM64 => 12 * vlen,
                    KIND_ENUM | 13 /* FUNC_PROTO */ => 8 * vlen,
                    KIND_PTR | 7 /* FWD */ | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST
                    | KIND_RESTRICT | 12 /* FUNC */ | 16 /* FLOAT */ | KIND_TYPE_TAG => 0,
                    _ => return Err(BtfError::Malformed("unknown type kind")),
                };
        }
        Ok(Self {
            data,
            types,
            strings: str_off..str_end,
        })
    }

    /// `path` is dot-separated member names from `strukt` (`__sk_common.skc_daddr`); members of
    /// anonymous structs and unions are found as if they were the parent's own, as in C.
    pub fn member(&self, strukt: &str, path: &str) -> Result<Member, BtfError> {
        let no_member = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            path: path.to_owned(),
        };
        let mut id = self
            .struct_id(strukt)?
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let (mut bits, mut bitfield) = (0u32, false);
        for name in path.split('.') {
            let m = self
                .find_member(self.strip(id)?, name)?
                .ok_or_else(no_member)?;
            bits += m.bits;
            id = m.ty;
            bitfield = m.bitfield;
        }
        if bitfield || bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.to_owned(),
                path: path.to_owned(),
            });
        }
        Ok(Member {
            offset: bits / 8,
            size: self.size(id)?,
        })
    }

    /// [`Self::member`], refusing a member of another width than the program reads.
    pub fn offset(&self, strukt: &str, path: &str, want: u32) -> Result<u32, BtfError> {
        let m = self.member(strukt, path)?;
        if m.size != want {
            return Err(BtfError::Width {
                strukt: strukt.to_owned(),
                path: path.to_owned(),
                got: m.size,
                want,
            });
        }
        Ok(m.offset)
    }

    /// The value of the enumerator `name` (of any enum), as a kernel of another build numbers
    /// it (`SKB_DROP_REASON_*` values move between versions); `None` when no enum has it.
    pub fn enum_value(&self, name: &str) -> Result<Option<i64>, BtfError> {
        for &pos in &self.types {
            let info = self.rd().u32(pos + 4)?;
            let (width, k) = match kind(info) {
                KIND_ENUM => (8, KIND_ENUM),
                KIND_ENUM64 => (12, KIND_ENUM64),
                _ => continue,
            };
            for m in 0..(info & 0xffff) as usize {
                let at = pos + 12 + width * m;
                if self.str_at(self.rd().u32(at)?)? != name {
                    continue;
                }
                let lo = self.rd().u32(at + 4)?;
                return Ok(Some(if k == KIND_ENUM {
                    i64::from(lo.cast_signed())
                } else {
                    (i64::from(self.rd().u32(at + 8)?) << 32) | i64::from(lo)
                }));
            }
        }
        Ok(None)
    }

    fn struct_id(&self, name: &str) -> Result<Option<u32>, BtfError> {
        for (i, &pos) in self.types.iter().enumerate() {
            let info = self.rd().u32(pos + 4)?;
            // A struct with no members is a forward declaration's twin: keep looking.
            if kind(info) == KIND_STRUCT && info & 0xffff != 0 && self.name(pos)? == name {
                return Ok(u32::try_from(i + 1).ok());
            }
        }
        Ok(None)
    }

    /// Bit offset and type of member `name` of the struct or union `id`, looking into anonymous
    /// members depth first.
    fn find_member(&self, id: u32, name: &str) -> Result<Option<Found>, BtfError> {
        let pos = self.pos(id)?;
        let info = self.rd().u32(pos + 4)?;
        if !matches!(kind(info), KIND_STRUCT | KIND_UNION) {
            return Ok(None);
        }
        let bitfields = info >> 31 == 1;
        for m in 0..(info & 0xffff) as usize {
            let at = pos + 12 + 12 * m;
            let (name_off, ty, raw) = (
                self.rd().u32(at)?,
                self.rd().u32(at + 4)?,
                self.rd().u32(at + 8)?,
            );
            // With kind_flag set the top byte holds a bitfield's size.
            let (off, bitfield) = if bitfields {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            if name_off == 0 {
                if let Some(inner) = self.find_member(self.strip(ty)?, name)? {
                    return Ok(Some(Found {
                        bits: off + inner.bits,
                        ..inner
                    }));
                }
            } else if self.str_at(name_off)? == name {
                return Ok(Some(Found {
                    bits: off,
                    ty,
                    bitfield,
                }));
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn strip(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..32 {
            let info = self.rd().u32(self.pos(id)? + 4)?;
            match kind(info) {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = self.rd().u32(self.pos(id)? + 8)?;
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::Malformed("typedef loop"))
    }

    fn size(&self, id: u32) -> Result<u32, BtfError> {
        let id = self.strip(id)?;
        let pos = self.pos(id)?;
        let info = self.rd().u32(pos + 4)?;
        match kind(info) {
            KIND_PTR => Ok(8),
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => self.rd().u32(pos + 8),
            KIND_ARRAY => {
                let (elem, n) = (self.rd().u32(pos + 12)?, self.rd().u32(pos + 20)?);
                Ok(self.size(elem)? * n)
            }
            _ => Err(BtfError::Malformed("member of a type without a size")),
        }
    }

    fn pos(&self, id: u32) -> Result<usize, BtfError> {
        let i = (id as usize)
            .checked_sub(1)
            .ok_or(BtfError::Malformed("void member"))?;
        self.types
            .get(i)
            .copied()
            .ok_or(BtfError::Malformed("type id out of range"))
    }

    fn name(&self, pos: usize) -> Result<Cow<'_, str>, BtfError> {
        self.str_at(self.rd().u32(pos)?)
    }

    fn str_at(&self, off: u32) -> Result<Cow<'_, str>, BtfError> {
        let start = self.strings.start + off as usize;
        let bytes = self
            .data
            .get(start..self.strings.end)
            .ok_or(BtfError::Malformed("string offset out of range"))?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Ok(String::from_utf8_lossy(&bytes[..end]))
    }

    fn rd(&self) -> Reader<'_> {
        Reader(&self.data)
    }
}

/// A member inside one struct or union: bit offset, type id, whether it is a bitfield.
struct Found {
    bits: u32,
    ty: u32,
    bitfield: bool,
}

fn kind(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> Result<[u8; N], BtfError> {
        self.0
            .get(at..at + N)
            .and_then(|b| b.try_into().ok())
            .ok_or(BtfError::Malformed("truncated"))
    }

    fn u32(&self, at: usize) -> Result<u32, BtfError> {
        self.bytes(at).map(u32::from_ne_bytes)
    }

    fn u16(&self, at: usize) -> Result<u16, BtfError> {
        self.bytes(at).map(u16::from_ne_bytes)
    }
}

/// Every offset the socket-reading programs need, widths checked.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, BtfError> {
    // The tcp_sock fields are read from the `struct sock *`: that holds only while a tcp_sock
    // starts with its sock (and a sock with its sock_common, which C guarantees for a first
    // member).
    let sk_in_tcp = btf.member("tcp_sock", "inet_conn.icsk_inet.sk")?;
    if sk_in_tcp.offset != 0 {
        return Err(BtfError::Malformed("tcp_sock does not start with its sock"));
    }
    let tcp = |f: &str, w: u32| btf.offset("tcp_sock", f, w);
    let skc = |f: &str, w: u32| btf.offset("sock", &format!("__sk_common.{f}"), w);
    Ok(SockOffsets {
        bytes_received: tcp("bytes_received", 8)?,
        bytes_acked: tcp("bytes_acked", 8)?,
        segs_in: tcp("segs_in", 4)?,
        segs_out: tcp("segs_out", 4)?,
        total_retrans: tcp("total_retrans", 4)?,
        lost_out: tcp("lost_out", 4)?,
        srtt_us: tcp("srtt_us", 4)?,
        snd_cwnd: tcp("snd_cwnd", 4)?,
        snd_una: tcp("snd_una", 4)?,
        snd_nxt: tcp("snd_nxt", 4)?,
        write_seq: tcp("write_seq", 4)?,
        rcv_nxt: tcp("rcv_nxt", 4)?,
        copied_seq: tcp("copied_seq", 4)?,
        skc_family: skc("skc_family", 2)?,
        skc_state: skc("skc_state", 1)?,
        skc_num: skc("skc_num", 2)?,
        skc_dport: skc("skc_dport", 2)?,
        skc_rcv_saddr: skc("skc_rcv_saddr", 4)?,
        skc_daddr: skc("skc_daddr", 4)?,
        skc_v6_rcv_saddr: skc("skc_v6_rcv_saddr", 16)?,
        skc_v6_daddr: skc("skc_v6_daddr", 16)?,
        skc_net: skc("skc_net.net", 8)?,
        skc_cookie: skc("skc_cookie", 8)?,
        sk_socket: btf.offset("sock", "sk_socket", 8)?,
        socket_file: btf.offset("socket", "file", 8)?,
        file_inode: btf.offset("file", "f_inode", 8)?,
        inode_ino: btf.offset("inode", "i_ino", 8)?,
        net_cookie: btf.offset("net", "net_cookie", 8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Option<Btf> {
        match Btf::from_sys_fs() {
            Ok(btf) => Some(btf),
            Err(e) => {
                assert!(
                    std::env::var_os("GOPHER_STRICT_TESTS").is_none(),
                    "no kernel BTF: {e}"
                );
                eprintln!("skipped: no kernel BTF ({e})");
                None
            }
        }
    }

    /// `bpftool btf dump ... format raw` prints `'<member>' type_id=N bits_offset=B` under
    /// `STRUCT '<name>'`: the parser must agree with it on every field the programs read.
    fn bpftool_offset(raw: &str, strukt: &str, member: &str) -> Option<u32> {
        let head = format!("STRUCT '{strukt}' size=");
        let body = raw.split("\n[").find(|t| {
            t.split_once("] ")
                .is_some_and(|(_, r)| r.starts_with(&head))
        })?;
        body.lines().find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix(&format!("'{member}' "))?;
            let bits = rest
                .split("bits_offset=")
                .nth(1)?
                .split_whitespace()
                .next()?;
            bits.parse::<u32>().ok().map(|b| b / 8)
        })
    }

    #[test]
    fn offsets_match_bpftool() {
        let Some(btf) = kernel() else { return };
        let out = match std::process::Command::new("bpftool")
            .args([
                "btf",
                "dump",
                "file",
                "/sys/kernel/btf/vmlinux",
                "format",
                "raw",
            ])
            .output()
        {
            Ok(o) if o.status.success() => o,
            other => {
                assert!(
                    std::env::var_os("GOPHER_STRICT_TESTS").is_none(),
                    "bpftool: {other:?}"
                );
                eprintln!("skipped: bpftool unavailable");
                return;
            }
        };
        let raw = String::from_utf8_lossy(&out.stdout);
        let o = sock_offsets(&btf).expect("offsets resolve on this kernel");
        for (strukt, member, got) in [
            ("tcp_sock", "bytes_received", o.bytes_received),
            ("tcp_sock", "bytes_acked", o.bytes_acked),
            ("tcp_sock", "snd_una", o.snd_una),
            ("tcp_sock", "copied_seq", o.copied_seq),
            ("tcp_sock", "total_retrans", o.total_retrans),
            ("sock", "sk_socket", o.sk_socket),
            ("socket", "file", o.socket_file),
            ("file", "f_inode", o.file_inode),
            ("inode", "i_ino", o.inode_ino),
            ("net", "net_cookie", o.net_cookie),
        ] {
            assert_eq!(
                Some(got),
                bpftool_offset(&raw, strukt, member),
                "{strukt}.{member}"
            );
        }
        // Direct members of sock_common (struct sock starts with it).
        for (member, got) in [
            ("skc_family", o.skc_family),
            ("skc_state", o.skc_state),
            ("skc_v6_daddr", o.skc_v6_daddr),
            ("skc_cookie", o.skc_cookie),
            ("skc_net", o.skc_net),
        ] {
            assert_eq!(
                Some(got),
                bpftool_offset(&raw, "sock_common", member),
                "{member}"
            );
        }
    }

    #[test]
    fn anonymous_members_follow_the_uapi_layout() {
        let Some(btf) = kernel() else { return };
        let o = sock_offsets(&btf).expect("offsets resolve on this kernel");
        // sock_common opens with the address pair then the port pair (after a 4-byte hash):
        // the layout inet_diag and every tracer rely on; daddr comes first in each pair.
        assert_eq!((o.skc_daddr, o.skc_rcv_saddr), (0, 4));
        assert_eq!((o.skc_dport, o.skc_num), (12, 14));
        assert_eq!(o.skc_v6_rcv_saddr, o.skc_v6_daddr + 16);
    }

    #[test]
    fn refuses_missing_members_bitfields_and_wrong_widths() {
        let Some(btf) = kernel() else { return };
        assert!(matches!(
            btf.member("sock", "no_such_field"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member("no_such_struct", "x"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(matches!(
            btf.member("sock", "__sk_common.skc_reuse"),
            Err(BtfError::Bitfield { .. })
        ));
        assert!(matches!(
            btf.offset("tcp_sock", "snd_una", 8),
            Err(BtfError::Width { got: 4, .. })
        ));
    }

    #[test]
    fn enum_values_come_from_the_kernel() {
        let Some(btf) = kernel() else { return };
        // TCP_LISTEN is 10 in every kernel (uapi); the drop reason moves between versions.
        assert_eq!(btf.enum_value("TCP_LISTEN").unwrap(), Some(10));
        assert_eq!(
            btf.enum_value("SKB_DROP_REASON_NOT_SPECIFIED").unwrap(),
            Some(2)
        );
        assert_eq!(btf.enum_value("NO_SUCH_ENUMERATOR").unwrap(), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(vec![0; 64]),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(
            Btf::parse(vec![0x9f, 0xeb]),
            Err(BtfError::Malformed(_))
        ));
    }
}
