//! Files replaced whole, atomically: what a reader (or the next start) finds is the old
//! content or the new, never part of one.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `file` with `bytes`: written to `<file>.tmp`, synced, renamed over `file`, and
/// the directory synced (so the rename survives a power loss). On any failure the
/// temporary file is removed, so a full disk is not left fuller (and `file` is as it was).
pub fn replace(file: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let temp = temp_of(file);
    let written = (|| {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&temp, file)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// `<file>.tmp`.
fn temp_of(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    file.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_a_failed_write_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("tickgate-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("state.json");
        replace(&file, b"one").unwrap();
        replace(&file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert_eq!(temp_of(&file), dir.join("state.json.tmp"));
        assert!(!temp_of(&file).exists());
        // A rename that cannot happen (a directory stands at the target): the error comes
        // back, the temporary file does not stay.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(replace(&blocked, b"x").is_err());
        assert!(!temp_of(&blocked).exists(), "the temporary file was removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
