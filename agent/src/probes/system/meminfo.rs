//! `system_meminfo`: /proc/meminfo, one row, every size in bytes.

use super::{Collect, Field, gauge, put};
use crate::imdb::Row;

pub(crate) struct Meminfo;

impl Collect for Meminfo {
    const TABLE: &'static str = "system_meminfo";
    const DESCRIPTION: &'static str =
        "Host memory usage from /proc/meminfo (gala-gopher system_meminfo)";
    const FIELDS: &'static [Field] = FIELDS;
    const FILES: &'static [&'static str] = &["/proc/meminfo"];

    fn new() -> Self {
        Self
    }

    fn collect(&mut self, texts: &[String], out: &mut Vec<Row>) -> Result<(), &'static str> {
        out.push(parse(texts.first().map_or("", String::as_str))?);
        Ok(())
    }
}

const FIELDS: &[Field] = &[
    gauge(
        "mem_total_bytes",
        "MemTotal",
        "Usable RAM (physical memory minus reserved memory and the kernel image), bytes",
    ),
    gauge(
        "mem_free_bytes",
        "MemFree",
        "RAM not used for anything, bytes",
    ),
    gauge(
        "mem_available_bytes",
        "MemAvailable",
        "Kernel estimate of the memory available for new work without swapping, bytes",
    ),
    gauge(
        "buffers_bytes",
        "Buffers",
        "Memory in block-device buffers, bytes",
    ),
    gauge(
        "cached_bytes",
        "Cached",
        "Memory in the page cache (file data, shmem and tmpfs; not swap cache), bytes",
    ),
    gauge(
        "swap_cached_bytes",
        "SwapCached",
        "Swapped-out memory that is back in RAM and still in the swap file, bytes",
    ),
    gauge(
        "active_bytes",
        "Active",
        "Memory used recently and not reclaimed unless needed, bytes",
    ),
    gauge(
        "inactive_bytes",
        "Inactive",
        "Memory used less recently, first in line for reclaim, bytes",
    ),
    gauge(
        "active_anon_bytes",
        "Active(anon)",
        "Anonymous memory on the active list, bytes",
    ),
    gauge(
        "inactive_anon_bytes",
        "Inactive(anon)",
        "Anonymous memory on the inactive list, bytes",
    ),
    gauge(
        "active_file_bytes",
        "Active(file)",
        "File-backed memory on the active list, bytes",
    ),
    gauge(
        "inactive_file_bytes",
        "Inactive(file)",
        "File-backed memory on the inactive list, bytes",
    ),
    gauge(
        "unevictable_bytes",
        "Unevictable",
        "Memory that cannot be reclaimed (mlocked, ramfs, ...), bytes",
    ),
    gauge(
        "mlocked_bytes",
        "Mlocked",
        "Memory locked with mlock(), bytes",
    ),
    gauge("swap_total_bytes", "SwapTotal", "Total swap space, bytes"),
    gauge("swap_free_bytes", "SwapFree", "Unused swap space, bytes"),
    gauge(
        "dirty_bytes",
        "Dirty",
        "Memory waiting to be written back to disk, bytes",
    ),
    gauge(
        "writeback_bytes",
        "Writeback",
        "Memory being written back to disk now, bytes",
    ),
    gauge(
        "anon_pages_bytes",
        "AnonPages",
        "Anonymous (not file-backed) pages mapped into user page tables, bytes",
    ),
    gauge(
        "mapped_bytes",
        "Mapped",
        "Files mapped into memory with mmap, bytes",
    ),
    gauge("shmem_bytes", "Shmem", "Shared memory and tmpfs, bytes"),
    gauge(
        "kreclaimable_bytes",
        "KReclaimable",
        "Kernel allocations the kernel will reclaim under memory pressure, bytes",
    ),
    gauge("slab_bytes", "Slab", "Kernel slab allocator memory, bytes"),
    gauge(
        "sreclaimable_bytes",
        "SReclaimable",
        "Reclaimable part of the slab (caches such as dentries and inodes), bytes",
    ),
    gauge(
        "sunreclaim_bytes",
        "SUnreclaim",
        "Part of the slab that cannot be reclaimed, bytes",
    ),
    gauge(
        "kernel_stack_bytes",
        "KernelStack",
        "Kernel stacks of all tasks, bytes",
    ),
    gauge(
        "page_tables_bytes",
        "PageTables",
        "Memory for page tables, bytes",
    ),
    gauge(
        "commit_limit_bytes",
        "CommitLimit",
        "Memory that can be committed under strict overcommit (vm.overcommit_memory=2), bytes",
    ),
    gauge(
        "committed_as_bytes",
        "Committed_AS",
        "Memory currently committed (allocated address space that may need backing), bytes",
    ),
    gauge(
        "vmalloc_used_bytes",
        "VmallocUsed",
        "Kernel vmalloc area in use, bytes",
    ),
    gauge(
        "percpu_bytes",
        "Percpu",
        "Memory for per-CPU kernel allocations, bytes",
    ),
    gauge(
        "anon_huge_pages_bytes",
        "AnonHugePages",
        "Anonymous transparent huge pages, bytes",
    ),
    gauge(
        "huge_pages",
        "HugePages_Total",
        "Huge pages in the pool (a count of pages, see huge_page_size_bytes)",
    ),
    gauge(
        "huge_pages_free",
        "HugePages_Free",
        "Huge pages in the pool not yet allocated (a count of pages)",
    ),
    gauge(
        "huge_page_size_bytes",
        "Hugepagesize",
        "Size of one default huge page, bytes",
    ),
    gauge(
        "hugetlb_bytes",
        "Hugetlb",
        "Memory taken by huge pages of every size, bytes",
    ),
];

/// One row from /proc/meminfo's `Name:   value [kB]` lines. Unknown names are ignored and
/// names this kernel lacks stay empty; `Err` when no known name is present at all.
pub(crate) fn parse(text: &str) -> Result<Row, &'static str> {
    let mut row = Meminfo::blank_row();
    let mut found = false;
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(i) = FIELDS.iter().position(|f| f.src == name) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(n) = words.next().and_then(|w| w.parse::<u64>().ok()) else {
            continue;
        };
        // Sizes are printed in kB (meaning KiB); the HugePages_* counts carry no unit.
        let value = match (words.next(), words.next()) {
            (Some("kB"), None) => n.checked_mul(1024),
            (None, _) => Some(n),
            _ => None,
        };
        if let (Some(v), Some(slot)) = (value, row.values.get_mut(i)) {
            put(slot, v);
            found = true;
        }
    }
    if found {
        Ok(row)
    } else {
        Err("/proc/meminfo has none of the expected fields")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::system::tests::{check_row, value};

    const SAMPLE: &str = include_str!("testdata/meminfo");

    #[test]
    fn real_sample_in_bytes() {
        let row = parse(SAMPLE).unwrap();
        check_row::<Meminfo>(&row);
        let v = |n| value::<Meminfo>(&row, n);
        assert_eq!(v("mem_total_bytes"), (24_683_656u64 * 1024).to_string());
        assert_eq!(v("mem_available_bytes"), (24_232_832u64 * 1024).to_string());
        assert_eq!(v("swap_total_bytes"), "0");
        assert_eq!(v("active_anon_bytes"), (1532u64 * 1024).to_string());
        assert_eq!(v("committed_as_bytes"), (56428u64 * 1024).to_string());
        assert_eq!(v("huge_pages"), "0");
        assert_eq!(v("huge_page_size_bytes"), (2048u64 * 1024).to_string());
        // Every field this table defines is present in a 6.x meminfo.
        assert!(row.values.iter().all(|v| !v.is_empty()), "{row:?}");
    }

    #[test]
    fn old_kernel_without_some_fields_leaves_them_empty() {
        // A 3.10 kernel: no MemAvailable before 3.14, no KReclaimable/Percpu/Hugetlb.
        let text = "MemTotal:        1012376 kB\nMemFree:          100000 kB\n\
                    Buffers:            1000 kB\nHugePages_Total:       4\n";
        let row = parse(text).unwrap();
        assert_eq!(value::<Meminfo>(&row, "mem_total_bytes"), "1036673024");
        assert_eq!(value::<Meminfo>(&row, "mem_available_bytes"), "");
        assert_eq!(value::<Meminfo>(&row, "huge_pages"), "4");
    }

    #[test]
    fn garbage_is_skipped_or_refused() {
        assert!(parse("").is_err());
        assert!(parse("hello\nworld: 1 2 3\n").is_err());
        let row =
            parse("MemTotal: x kB\nMemFree: 1 MB\nShmem: 18446744073709551615 kB\nSlab: 2 kB\n")
                .unwrap();
        assert_eq!(value::<Meminfo>(&row, "mem_total_bytes"), "");
        assert_eq!(value::<Meminfo>(&row, "mem_free_bytes"), "");
        assert_eq!(
            value::<Meminfo>(&row, "shmem_bytes"),
            "",
            "overflow is no value"
        );
        assert_eq!(value::<Meminfo>(&row, "slab_bytes"), "2048");
    }
}
