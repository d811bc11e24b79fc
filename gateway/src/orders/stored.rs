//! The order history's retention watermark on disk: per engine shard, the timestamp of
//! the last command whose reports the history file holds (see
//! [`tickgate_engine::Retention`]).
//!
//! Saved after each sync of the history file, never before, so it never claims more than
//! the file has; a stale one only makes recovery replay more (the store skips reports it
//! already has). Recovery starts from a snapshot at or before it, so reports that never
//! reached the file come back from the journal.
//!
//! The file is one line per shard, `<shard> <timestamp>`, after a version line, written
//! to a temporary file and renamed over the old one.

use std::io;
use std::path::Path;

/// The file's name in the history directory.
pub const FILE: &str = "stored";
const VERSION_LINE: &str = "tickgate-history-stored 1";

/// The marks saved in `dir`, in shard order; empty when there is no file yet (nothing is
/// known stored: recovery replays all it can).
pub fn load(dir: &Path) -> io::Result<Vec<u64>> {
    let text = match std::fs::read_to_string(dir.join(FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{FILE}: {what}"));
    let mut lines = text.lines();
    if lines.next() != Some(VERSION_LINE) {
        return Err(invalid("unknown version"));
    }
    let mut marks = Vec::new();
    for line in lines {
        let (shard, ts) = line.split_once(' ').ok_or_else(|| invalid("malformed line"))?;
        let shard: usize = shard.parse().map_err(|_| invalid("bad shard"))?;
        let ts: u64 = ts.parse().map_err(|_| invalid("bad timestamp"))?;
        if shard != marks.len() {
            return Err(invalid("shards out of order"));
        }
        marks.push(ts);
    }
    Ok(marks)
}

/// Replaces the marks saved in `dir`.
pub fn save(dir: &Path, marks: &[u64]) -> io::Result<()> {
    let mut text = format!("{VERSION_LINE}\n");
    for (shard, ts) in marks.iter().enumerate() {
        text.push_str(&format!("{shard} {ts}\n"));
    }
    crate::atomic_file::replace(&dir.join(FILE), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_a_damaged_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("tickgate-stored-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), Vec::<u64>::new(), "no file: nothing stored");
        save(&dir, &[5, 1_700_000_000_000_000_000]).unwrap();
        assert_eq!(load(&dir).unwrap(), vec![5, 1_700_000_000_000_000_000]);
        std::fs::write(dir.join(FILE), "tickgate-history-stored 1\n1 5\n").unwrap();
        assert!(load(&dir).is_err(), "shards out of order");
        std::fs::write(dir.join(FILE), "something else\n").unwrap();
        assert!(load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
