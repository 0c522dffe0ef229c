//! `system_inode`: in-memory inodes and open file handles, from /proc/sys/fs/inode-nr and
//! /proc/sys/fs/file-nr, one row.

use super::{Collect, Field, gauge, put};
use crate::imdb::Row;

pub(crate) struct Inode;

impl Collect for Inode {
    const TABLE: &'static str = "system_inode";
    const DESCRIPTION: &'static str =
        "Host inode and file-handle usage from /proc/sys/fs (gala-gopher system_inode)";
    const FIELDS: &'static [Field] = FIELDS;
    const FILES: &'static [&'static str] = &["/proc/sys/fs/inode-nr", "/proc/sys/fs/file-nr"];

    fn new() -> Self {
        Self
    }

    fn collect(&mut self, texts: &[String], out: &mut Vec<Row>) -> Result<(), &'static str> {
        let text = |i: usize| texts.get(i).map_or("", String::as_str);
        out.push(parse(text(0), text(1))?);
        Ok(())
    }
}

/// `src` is "<file> column <n>"; see [`parse`].
const FIELDS: &[Field] = &[
    gauge(
        "nr_inodes",
        "inode-nr 0",
        "Inodes the kernel has allocated in memory (inode-nr, first column)",
    ),
    gauge(
        "nr_free_inodes",
        "inode-nr 1",
        "Allocated in-memory inodes not in use, free for reuse (inode-nr, second column)",
    ),
    gauge(
        "file_handles_allocated",
        "file-nr 0",
        "File handles allocated, i.e. open files host-wide (file-nr, first column)",
    ),
    gauge(
        "file_handles_max",
        "file-nr 2",
        "Most file handles the kernel will allocate (fs.file-max)",
    ),
];

/// `inode-nr` is "nr_inodes nr_free_inodes"; `file-nr` is "allocated unused max" (unused has
/// been 0 since Linux 2.6). A file that does not have the expected numbers leaves its fields
/// empty; `Err` when neither has.
pub(crate) fn parse(inode_nr: &str, file_nr: &str) -> Result<Row, &'static str> {
    let mut row = Inode::blank_row();
    let inodes = numbers::<2>(inode_nr);
    let files = numbers::<3>(file_nr);
    if let Some([nr, free]) = inodes {
        put(&mut row.values[0], nr);
        put(&mut row.values[1], free);
    }
    if let Some([allocated, _, max]) = files {
        put(&mut row.values[2], allocated);
        put(&mut row.values[3], max);
    }
    if inodes.is_none() && files.is_none() {
        return Err("/proc/sys/fs/inode-nr and file-nr do not hold the expected numbers");
    }
    Ok(row)
}

/// The first `N` whitespace-separated numbers of `text`.
fn numbers<const N: usize>(text: &str) -> Option<[u64; N]> {
    let mut out = [0; N];
    let mut words = text.split_ascii_whitespace();
    for slot in &mut out {
        *slot = words.next()?.parse().ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::system::tests::{check_row, value};

    #[test]
    fn real_sample() {
        let row = parse(
            include_str!("testdata/inode-nr"),
            include_str!("testdata/file-nr"),
        )
        .unwrap();
        check_row::<Inode>(&row);
        let v = |n| value::<Inode>(&row, n);
        // inode-nr "96769\t0", file-nr "234\t0\t2466174"
        assert_eq!(v("nr_inodes"), "96769");
        assert_eq!(v("nr_free_inodes"), "0");
        assert_eq!(v("file_handles_allocated"), "234");
        assert_eq!(v("file_handles_max"), "2466174");
    }

    #[test]
    fn file_max_can_be_the_largest_long() {
        let row = parse("1 2\n", "5 0 9223372036854775807\n").unwrap();
        assert_eq!(
            value::<Inode>(&row, "file_handles_max"),
            "9223372036854775807"
        );
    }

    #[test]
    fn one_bad_file_leaves_its_fields_empty() {
        let row = parse("x y\n", "5 0 7\n").unwrap();
        assert_eq!(value::<Inode>(&row, "nr_inodes"), "");
        assert_eq!(value::<Inode>(&row, "file_handles_allocated"), "5");
        let row = parse("3 1\n", "5 0\n").unwrap();
        assert_eq!(value::<Inode>(&row, "nr_inodes"), "3");
        assert_eq!(value::<Inode>(&row, "file_handles_max"), "");
        assert!(parse("", "").is_err());
    }
}
