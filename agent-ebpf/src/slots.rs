//! Where the destroy hooks keep a socket's entry: a client's in `OWNER_SLOTS`, a direct-mapped
//! array (slot `cookie & mask`), anything else in the `LINKS` hash.
//!
//! On this project's test VM (retpolines, SRSO "safe RET") a hash operation costs ~150–350 ns
//! of BPF run time: the client's insert, its release's lookup, its destroy's lookup and remove
//! were half of what a connection cost. An array lookup is inlined by the verifier (no helper
//! call), so a client whose slot is free costs none of them: its connect claims the slot with
//! one compare-and-swap, its release and destroy compare the cookie in it.
//!
//! * Only `connect()` claims slots: nothing else of the socket runs then (no segment was sent),
//!   so a socket's entry is never made twice at once, once in its slot and once in `LINKS`. The
//!   hooks that can race for one socket (its release, a reset, an error report) insert into
//!   `LINKS` with `BPF_NOEXIST`, as before.
//! * A claim marks the slot busy ([`SLOT_BUSY`]) while it writes the entry, then publishes the
//!   cookie: no reader (hook or agent) takes a half-written entry for its socket's.
//! * `in_links` counts the `LINKS` entries whose cookie maps to the slot: incremented before an
//!   insert, decremented after a remove, so it is never below their number. While it is 0, a
//!   socket not in its slot has no entry at all, and the hash is not searched (a server socket's
//!   release, most destroys).
//! * A slot is freed only by its socket's destroy, after the entry was read. A connect that
//!   finds its slot taken by another live socket uses `LINKS`; one that finds its own entry
//!   (a second `connect()` of the socket after a failed one) overwrites it where it is.
//!
//! `max_links` bounds both together (the agent gives the slots the largest power of two up to
//! half of it, `LINKS` the rest), so a full table is still counted and still accounted.

use aya_ebpf::{macros::map, maps::Array};
use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd},
    ptr::{read_volatile, write_volatile},
};

use gopher_common::{LinkInfo, OwnerSlot, SLOT_BUSY};

use crate::{Inserted, LINKS, insert_new as links_insert_new};

/// Sized by the agent (a power of two, see the module doc); 1 entry in the object.
#[map]
static OWNER_SLOTS: Array<OwnerSlot> = Array::with_max_entries(1, 0);

/// `cookie & SLOT_MASK` is a socket's slot: the number of slots minus one, set by the agent.
#[unsafe(no_mangle)]
static SLOT_MASK: u64 = 0;

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

/// A client's entry, at its connect: its slot when free, else `LINKS` (an entry it has already,
/// from an earlier connect of the same socket, is overwritten). False when the map is full
/// (counted).
pub(crate) fn insert_client(cookie: u64, info: &LinkInfo) -> bool {
    let s = slot(cookie);
    if let Some(entry) = get(cookie) {
        // SAFETY: pointer into a map value, valid while the program runs.
        unsafe { write_volatile(entry, *info) };
        return true;
    }
    if let Some(s) = s {
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
                write_volatile(&raw mut (*s).info, *info);
                atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                    &raw mut (*s).cookie,
                    SLOT_BUSY,
                    cookie,
                );
            }
            return true;
        }
    }
    matches!(
        insert_new(cookie, info),
        Inserted::New | Inserted::Present(_)
    )
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

/// The socket's entry, `info` inserted first if it has none; None when the map is full.
pub(crate) fn entry_or_insert(cookie: u64, info: &LinkInfo) -> Option<*mut LinkInfo> {
    if let Some(entry) = get(cookie) {
        return Some(entry);
    }
    match insert_new(cookie, info) {
        Inserted::New => LINKS.get_ptr_mut(&cookie),
        Inserted::Present(entry) => Some(entry),
        Inserted::Full => None,
    }
}

/// Removes the socket's entry and returns it (its destroy).
pub(crate) fn take(cookie: u64) -> Option<LinkInfo> {
    let s = slot(cookie);
    if let Some(entry) = in_slot(s, cookie) {
        // SAFETY: pointer into a map value, valid while the program runs. The entry is read
        // before the slot is freed (an atomic exchange orders the two).
        unsafe {
            let info = read_volatile(entry);
            if let Some(s) = s {
                atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                    &raw mut (*s).cookie,
                    cookie,
                    0,
                );
            }
            return Some(info);
        }
    }
    if !may_be_in_links(s) {
        return None;
    }
    // SAFETY: pointer into a map value, valid while the program runs.
    let info = unsafe { *LINKS.get_ptr(&cookie)? };
    if LINKS.remove(&cookie).is_ok() {
        count_in_links(s, u64::MAX);
    }
    Some(info)
}
