//! Fuzzed capture reader (property-based, stable toolchain): a capture file with flipped
//! bytes, big length fields or a cut tail is read or refused with an error; never a panic
//! or an allocation sized by a damaged length. Longer run:
//! `PROPTEST_CASES=100000 cargo test --release -p tickgate-tools --test fuzz`.

use proptest::prelude::*;
use tickgate_tools::capture::{self, CaptureWriter, CapturedFrame, KIND_BINARY};

fn valid_capture() -> Vec<u8> {
    let header = serde_json::json!({"version": 1, "started_ns": 0, "server": "127.0.0.1:8080",
        "channels": ["book.BTC-USD"], "instruments": [{"symbol": "BTC-USD"}]});
    let mut w = CaptureWriter::new(Vec::new(), &header).expect("writer");
    for n in 0..6u8 {
        let frame =
            CapturedFrame { received_ns: u64::from(n), kind: KIND_BINARY, payload: vec![n; 40] };
        w.frame(&frame).expect("frame");
    }
    w.finish().expect("finish")
}

/// The capture the fuzzing damages reads whole (else every case would stop at its header).
#[test]
fn the_undamaged_capture_reads() {
    let path = std::env::temp_dir().join(format!("tickgate-fuzz-whole-{}.tgc", std::process::id()));
    std::fs::write(&path, valid_capture()).expect("write");
    let read = capture::read(&path).map(|c| c.frames.len());
    let _ = std::fs::remove_file(&path);
    assert_eq!(read.ok(), Some(6));
}

/// `PROPTEST_CASES` when set (a longer run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn damaged_captures_read_or_refuse(
        edits in prop::collection::vec((any::<usize>(), prop_oneof![Just(0xffu8), Just(0x7f), any::<u8>()]), 1..4),
        cut in prop::option::of(any::<usize>()),
    ) {
        let mut bytes = valid_capture();
        for (at, byte) in &edits {
            let at = at % bytes.len();
            bytes[at] = *byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        let path = std::env::temp_dir().join(format!("tickgate-fuzz-capture-{}.tgc", std::process::id()));
        std::fs::write(&path, &bytes).expect("write");
        if let Ok(c) = capture::read(&path) {
            prop_assert!(c.frames.len() <= 6);
        }
    }
}
