//! How many shards a data directory was written with. Instrument `i` belongs to shard
//! `i % shards`, so a directory recovered with another count would rebuild the wrong books
//! from the wrong journals (and the users' history over them): the count is recorded in
//! `<dir>/SHARDS` at the first start and every later start must match it.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::journal::JournalError;

/// The file that records the count.
pub const SHARDS_FILE: &str = "SHARDS";

/// The shard count `dir` was written with: its `SHARDS` file, or, for a directory from
/// before that file, the `shard-<i>` directories it holds (the highest `i` plus one);
/// `None` for a directory with neither (a new one).
pub fn recorded_shards(dir: &Path) -> Result<Option<usize>, JournalError> {
    let file = dir.join(SHARDS_FILE);
    match fs::read_to_string(&file) {
        Ok(text) => {
            return match text.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(JournalError::Corrupt {
                    path: file,
                    offset: 0,
                    what: format!("not a shard count: {text:?}"),
                }),
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(JournalError::io(&file, e)),
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JournalError::io(dir, e)),
    };
    let mut highest = None;
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        let shard = name.to_str().and_then(|n| n.strip_prefix("shard-")?.parse::<usize>().ok());
        if let Some(shard) = shard {
            highest = highest.max(Some(shard));
        }
    }
    Ok(highest.map(|h| h + 1))
}

/// Whether `dir` was written with `shards` shards, read only: `Some` (it was), `None` (it
/// says nothing: a new directory), or [`JournalError::ShardsChanged`].
pub fn matches_shards(dir: &Path, shards: usize) -> Result<Option<()>, JournalError> {
    match recorded_shards(dir)? {
        Some(recorded) if recorded != shards => {
            Err(JournalError::ShardsChanged { dir: dir.to_path_buf(), recorded, asked: shards })
        }
        recorded => Ok(recorded.map(|_| ())),
    }
}

/// Checks that `dir` was written with `shards` shards, or records it for a directory that
/// says nothing yet (or says it only through its `shard-<i>` folders). A different count is
/// [`JournalError::ShardsChanged`].
pub fn check_shards(dir: &Path, shards: usize) -> Result<(), JournalError> {
    match matches_shards(dir, shards)? {
        Some(()) if dir.join(SHARDS_FILE).exists() => Ok(()),
        _ => record(dir, shards),
    }
}

fn record(dir: &Path, shards: usize) -> Result<(), JournalError> {
    let file = dir.join(SHARDS_FILE);
    let tmp = dir.join(format!("{SHARDS_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{shards}")?;
        f.sync_all()?;
        fs::rename(&tmp, &file)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| JournalError::io(&file, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tickgate-layout-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn the_first_start_records_the_count_and_later_ones_must_match_it() {
        let d = dir("record");
        assert_eq!(recorded_shards(&d).expect("readable"), None);
        check_shards(&d, 3).expect("a new directory takes any count");
        assert_eq!(recorded_shards(&d).expect("readable"), Some(3));
        check_shards(&d, 3).expect("the same count");
        for other in [1, 2, 4] {
            let e = check_shards(&d, other).expect_err("another count");
            let text = e.to_string();
            assert!(
                text.contains("written with 3 shards") && text.contains("--shards 3"),
                "{text}"
            );
            assert!(!text.contains("  "), "one space between words: {text}");
        }
        fs::write(d.join(SHARDS_FILE), "three\n").expect("write");
        assert!(matches!(recorded_shards(&d), Err(JournalError::Corrupt { .. })));
        fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn a_directory_from_before_the_file_is_read_from_its_shard_directories() {
        let d = dir("infer");
        for name in ["shard-0", "shard-1", "shard-2", "history", "shard-x"] {
            fs::create_dir_all(d.join(name)).expect("dir");
        }
        assert_eq!(recorded_shards(&d).expect("readable"), Some(3));
        assert!(matches!(
            check_shards(&d, 2),
            Err(JournalError::ShardsChanged { recorded: 3, .. })
        ));
        check_shards(&d, 3).expect("the count it was written with");
        assert_eq!(fs::read_to_string(d.join(SHARDS_FILE)).expect("recorded"), "3\n");
        fs::remove_dir_all(&d).expect("cleanup");
    }
}
