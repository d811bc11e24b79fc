//! The process's memory: transparent huge pages off unless asked for.
//!
//! mimalloc asks the kernel for transparent huge pages (`madvise(MADV_HUGEPAGE)`) on its
//! arenas, so the first touch of fresh heap zeroes 2 MiB in one page fault, on whichever
//! thread touched it. Thousands of connections arriving allocate fresh heap on the writer
//! thread and the network threads; with huge pages, 10,000 subscribers arriving put the p99
//! at 1.4 to 11 s in 9 of 10 runs (with resyncs in 6), against 0.38 to 0.67 s in 9 of 10
//! without them (docs/BENCHMARKS.md). So the binaries turn them off for the process
//! (`prctl(PR_SET_THP_DISABLE)`, which the kernel honours whatever the system setting or
//! `madvise` says); `--transparent-huge-pages` keeps them.

/// Turns transparent huge pages off for this process and its children, from now on
/// (memory already backed by huge pages stays so). An error means the kernel refused the
/// request (a kernel older than 3.15, or a non-Linux system): the process runs as before.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        rustix::thread::disable_transparent_huge_pages(true)?;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "Linux only"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anonymous memory backed by huge pages in this process, in kB.
    #[cfg(target_os = "linux")]
    fn huge_kb() -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
        let line = smaps.lines().find_map(|l| l.strip_prefix("AnonHugePages:"))?;
        line.trim().trim_end_matches("kB").trim().parse().ok()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_after_the_call() {
        disable_transparent_huge_pages().expect("the kernel takes PR_SET_THP_DISABLE");
        assert!(rustix::thread::transparent_huge_pages_are_disabled().expect("PR_GET_THP_DISABLE"));
        // Fresh memory touched after it gets no huge page, even where the system setting is
        // `always` (tests running beside this one get none either: the setting is the
        // process's).
        let before = huge_kb();
        let mut block = vec![0u8; 8 << 20];
        block.iter_mut().step_by(4096).for_each(|b| *b = 1);
        assert_eq!(block.iter().step_by(4096).filter(|&&b| b == 1).count(), 2048);
        if let (Some(before), Some(after)) = (before, huge_kb()) {
            assert!(after <= before, "huge pages grew from {before} kB to {after} kB");
        }
    }
}
