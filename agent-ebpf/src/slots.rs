//! Where the destroy hooks keep a socket's entry: in its slot of `OWNER_SLOTS`, a
//! direct-mapped array (slot `cookie & mask`), or in the `LINKS` hash when another live socket
//! holds that slot.
//!
//! On this project's test VM (retpolines, SRSO "safe RET") a hash operation costs ~150–350 ns
//! of BPF run time: the inserts, lookups and removes of both ends' entries were most of what a
//! connection cost. An array lookup is inlined by the verifier (no helper call), so a socket
//! whose slot is free costs none of them: its connect or release claims the slot with a
//! compare-and-swap, its other hooks compare the cookie in it.
//!
//! * `connect()` (a client) and the last `close()` (`sock_release`: a server socket) claim
//!   slots. A claim marks the slot busy ([`SLOT_BUSY`]) while it writes the entry, then
//!   publishes the cookie: no reader (hook or agent) takes a half-written entry for its
//!   socket's.
//! * The reset and error hooks (`early.rs`) make an entry a socket lacks in `LINKS`, with
//!   `BPF_NOEXIST`. One that runs while the socket's release is claiming the slot (between the
//!   release's lookup and its publication: a reset arriving on another CPU then) makes a second
//!   entry there. Their later runs fold its bits into the slot's entry before they use it
//!   ([`entry_or_insert`]), and the destroy ([`take`]) merges the two (the release's owner,
//!   every reset bit, whether the close event went) and removes both. Nothing else of a socket
//!   runs during its `connect()`.
//! * `in_links` counts the `LINKS` entries whose cookie maps to the slot: incremented before an
//!   insert, decremented after a remove, so it is never below their number. While it is 0, a
//!   socket not in its slot has no entry in `LINKS`, and the hash is not searched.
//! * A slot is freed only by its socket's destroy, after the entry was read. A second
//!   `connect()` of a socket (after a refused one) overwrites its entry where it is.
//!
//! `max_links` bounds both together (the agent gives the slots the largest power of two up to
//! half of it, `LINKS` the rest), so a full table is still counted and still accounted.

use aya_ebpf::{macros::map, maps::Array};
use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd},
    ptr::{read_volatile, write_volatile},
};

use gopher_common::{LinkInfo, OWNER_KNOWN, OwnerSlot, SLOT_BUSY};

use crate::{Inserted, LINKS, copy_info, insert_new as links_insert_new, write_current_owner};

/// Sized by the agent (a power of two, see the module doc); 1 entry in the object.
#[map]
static OWNER_SLOTS: Array<OwnerSlot> = Array::with_max_entries(1, 0);

/// `cookie & SLOT_MASK` is a socket's slot: the number of slots minus one, set by the agent.
#[unsafe(no_mangle)]
static SLOT_MASK: u64 = 0;

/// 1 when the machine keeps stores in order with the loads and stores before them (x86's
/// total store order), set by the agent: a claimed slot's cookie is then published, and a
/// slot freed, with a plain store instead of a compare-and-swap (a locked instruction, tens
/// of ns, three per connection end). 0 (the compare-and-swaps) elsewhere: arm64 reorders
/// stores. Claiming a free slot is always a compare-and-swap (two CPUs may race for it).
#[unsafe(no_mangle)]
static STORES_ORDERED: u32 = 0;

#[inline(always)]
fn stores_ordered() -> bool {
    // SAFETY: an immutable static; volatile keeps it a `.rodata` load (the verifier then
    // prunes the branch not taken).
    unsafe { read_volatile(&raw const STORES_ORDERED) != 0 }
}

/// Sets a slot's cookie that only its holder changes (a publication after the entry was
/// written, or the free after it was read), ordered after the holder's accesses to the entry.
///
/// # Safety
/// `s` is a map value the caller holds (its cookie is `from`).
#[inline(always)]
unsafe fn set_held(s: *mut OwnerSlot, from: u64, to: u64) {
    // SAFETY: see the function's contract.
    unsafe {
        if stores_ordered() {
            write_volatile(&raw mut (*s).cookie, to);
        } else {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                &raw mut (*s).cookie,
                from,
                to,
            );
        }
    }
}

fn slot(cookie: u64) -> Option<*mut OwnerSlot> {
    // SAFETY: an immutable static; volatile keeps it a `.rodata` load.
    let mask = unsafe { read_volatile(&raw const SLOT_MASK) };
    #[allow(
        clippy::cast_possible_truncation,
        reason = "masked below 2^32 by the agent"
    )]
    OWNER_SLOTS.get_ptr_mut((cookie & mask) as u32)
}

/// Adds `delta` to the slot's count of `LINKS` entries (an atomic add: other CPUs count too).
fn count_in_links(slot: Option<*mut OwnerSlot>, delta: u64) {
    if let Some(s) = slot {
        // SAFETY: a map value, valid while the program runs; the add is atomic.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*s).in_links, delta)
        };
    }
}

/// Whether `LINKS` may hold an entry for a socket of this slot.
fn may_be_in_links(slot: Option<*mut OwnerSlot>) -> bool {
    // SAFETY: a map value, valid while the program runs.
    slot.is_none_or(|s| unsafe { read_volatile(&raw const (*s).in_links) } != 0)
}

/// The entry in the slot, when the slot holds this socket's.
fn in_slot(slot: Option<*mut OwnerSlot>, cookie: u64) -> Option<*mut LinkInfo> {
    let s = slot?;
    // SAFETY: a map value, valid while the program runs.
    (unsafe { read_volatile(&raw const (*s).cookie) } == cookie)
        // SAFETY: as above.
        .then(|| unsafe { &raw mut (*s).info })
}

/// The socket's entry, wherever it is.
pub(crate) fn get(cookie: u64) -> Option<*mut LinkInfo> {
    let s = slot(cookie);
    if let Some(info) = in_slot(s, cookie) {
        return Some(info);
    }
    if may_be_in_links(s) {
        LINKS.get_ptr_mut(&cookie)
    } else {
        None
    }
}

/// Claims the free slot `s` for `cookie`, the calling process's entry written in it with these
/// `flags` ([`owner_flags`]) before the cookie is published; false when it is not free.
#[inline(always)]
fn claim_current(s: *mut OwnerSlot, cookie: u64, flags: [u8; 8]) -> bool {
    // SAFETY: a map value, valid while the program runs; the claim is atomic, and only the
    // claimer writes a busy slot.
    let (_, claimed) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*s).cookie,
            0,
            SLOT_BUSY,
        )
    };
    if claimed {
        // SAFETY: as above; the cookie is published after the entry is written.
        unsafe {
            write_current_owner(&raw mut (*s).info, flags);
            set_held(s, SLOT_BUSY, cookie);
        }
    }
    claimed
}

/// A client's entry, at its connect, the calling process as its owner (`flags`: the other
/// fields, [`owner_flags`]): its slot when free, else `LINKS` (an entry it has already, from
/// an earlier connect of the same socket, is overwritten). False when the map is full
/// (counted).
#[inline(always)]
pub(crate) fn insert_client(cookie: u64, flags: [u8; 8]) -> bool {
    if let Some(entry) = get(cookie) {
        // SAFETY: pointer into a map value, valid while the program runs.
        unsafe { write_current_owner(entry, flags) };
        return true;
    }
    if slot(cookie).is_some_and(|s| claim_current(s, cookie, flags)) {
        return true;
    }
    let info = current_entry(flags);
    match insert_new(cookie, &info) {
        Inserted::New => true,
        Inserted::Present(entry) => {
            // SAFETY: pointer into a map value, valid while the program runs.
            unsafe { write_volatile(entry, info) };
            true
        }
        Inserted::Full => false,
    }
}

/// The owner's entry of a socket [`get`] found none for, at its release, the calling process
/// as its owner (`flags` as for [`insert_client`]): its slot when free, else `LINKS`
/// (`BPF_NOEXIST`: a reset on another CPU may have made the entry meanwhile, and keeps it). A
/// reset that runs between that lookup and the claim makes its own entry in `LINKS`: see the
/// module doc.
#[inline(always)]
pub(crate) fn insert_owner(cookie: u64, flags: [u8; 8]) -> Inserted {
    match slot(cookie) {
        Some(s) if claim_current(s, cookie, flags) => Inserted::New,
        _ => insert_new(cookie, &current_entry(flags)),
    }
}

/// The calling process's entry with these `flags`, for `LINKS`.
fn current_entry(flags: [u8; 8]) -> LinkInfo {
    let mut info = LinkInfo::default();
    // SAFETY: a stack value, whole.
    unsafe { write_current_owner(&raw mut info, flags) };
    info
}

/// Inserts `info` into `LINKS` for a socket that had no entry a moment ago (`BPF_NOEXIST`: an
/// entry another CPU made meanwhile is kept, not overwritten).
pub(crate) fn insert_new(cookie: u64, info: &LinkInfo) -> Inserted {
    let s = slot(cookie);
    count_in_links(s, 1);
    let done = links_insert_new(cookie, info);
    if !matches!(done, Inserted::New) {
        count_in_links(s, u64::MAX);
    }
    done
}

/// The socket's entry, `info` inserted first if it has none; None when the map is full. For
/// the reset and error hooks, which may run on another CPU while the socket's release claims
/// its slot (from its lookup to the publication of the cookie): a reset that found no entry
/// then made one in `LINKS`, and its bits (a reset, a close event already sent) are folded
/// into the slot's entry here, before anything is read from it or sent.
pub(crate) fn entry_or_insert(cookie: u64, info: &LinkInfo) -> Option<*mut LinkInfo> {
    let s = slot(cookie);
    if let Some(s) = s {
        // SAFETY: a map value, valid while the program runs. A compare-and-swap that leaves the
        // value as it is: a read that orders the entry's reads after it (these hooks may read
        // a slot another CPU has just published).
        let (_, mine) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                &raw mut (*s).cookie,
                cookie,
                cookie,
            )
        };
        if mine {
            // SAFETY: as above.
            let entry = unsafe { &raw mut (*s).info };
            if may_be_in_links(Some(s))
                && let Some(twin) = LINKS.get_ptr(&cookie)
            {
                // SAFETY: pointers into map values, valid while the program runs.
                unsafe { fold(&mut *entry, &*twin) };
            }
            return Some(entry);
        }
    }
    if may_be_in_links(s)
        && let Some(entry) = LINKS.get_ptr_mut(&cookie)
    {
        return Some(entry);
    }
    match insert_new(cookie, info) {
        Inserted::New => LINKS.get_ptr_mut(&cookie),
        Inserted::Present(entry) => Some(entry),
        Inserted::Full => None,
    }
}

/// Removes the socket's entry into `info` (its destroy); false when it has none. (Into the
/// caller's value, not returned: the destroy hook's stack is near the BPF limit.)
pub(crate) fn take(cookie: u64, info: &mut LinkInfo) -> bool {
    let s = slot(cookie);
    let mut found = false;
    if let (Some(s), Some(entry)) = (s, in_slot(s, cookie)) {
        // SAFETY: pointers into a map value, valid while the program runs. The entry is read
        // before the slot is freed (`set_held` orders the two).
        unsafe {
            copy_info(info, entry);
            set_held(s, cookie, 0);
        }
        found = true;
    }
    if !may_be_in_links(s) {
        return found;
    }
    let Some(entry) = LINKS.get_ptr(&cookie) else {
        return found;
    };
    // SAFETY: pointer into a map value, valid while the program runs (read before the remove).
    let links = unsafe { &*entry };
    if found {
        merge(info, links);
    } else {
        *info = *links;
    }
    if LINKS.remove(&cookie).is_ok() {
        count_in_links(s, u64::MAX);
    }
    true
}

/// One socket's entry made twice, a reset's in `LINKS` while its release was claiming the slot
/// (see [`entry_or_insert`]): the release's owner, and every bit either saw.
fn merge(slot: &mut LinkInfo, links: &LinkInfo) {
    if slot.owner != OWNER_KNOWN {
        let folded = fold_bits(slot, links);
        *slot = *links;
        (slot.rst, slot.fin_sent, slot.established) = folded;
    } else {
        fold(slot, links);
    }
}

/// ORs the twin's reset, FIN and sent bits into `slot`.
fn fold(slot: &mut LinkInfo, twin: &LinkInfo) {
    (slot.rst, slot.fin_sent, slot.established) = fold_bits(slot, twin);
}

fn fold_bits(a: &LinkInfo, b: &LinkInfo) -> (u8, u8, u8) {
    (
        a.rst | b.rst,
        a.fin_sent | b.fin_sent,
        a.established | b.established,
    )
}
