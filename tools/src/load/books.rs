//! Book verification of the load probe: books rebuilt from snapshot + deltas, compared
//! with the REST snapshot at the same sequence.

use super::*;

/// Book verification counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BookCheck {
    /// Books equal to the REST snapshot at the same sequence.
    pub verified: u64,
    /// Books that differ from it: a lost or corrupted delta.
    pub mismatched: u64,
    /// Books that could not be brought to the REST snapshot's sequence in time.
    pub unverified: u64,
}

impl BookCheck {
    pub(crate) fn add(&mut self, o: BookCheck) {
        self.verified += o.verified;
        self.mismatched += o.mismatched;
        self.unverified += o.unverified;
    }
}

/// A followed book: its symbol and precisions (from the `subscribed` reply) and the book
/// rebuilt from snapshot + deltas.
pub(crate) struct Followed {
    pub(crate) symbol: String,
    pub(crate) price_precision: u8,
    pub(crate) qty_precision: u8,
    pub(crate) book: Option<L2Book>,
}

/// Learns channel ids, symbols and precisions of book channels from `subscribed` replies.
pub(crate) fn learn_channels(payload: &[u8], followed: &mut HashMap<u32, Followed>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else { return };
    if v["op"] != "subscribed" {
        return;
    }
    for c in v["channels"].as_array().into_iter().flatten() {
        let (Some(name), Some(id)) = (c["channel"].as_str(), c["channel_id"].as_u64()) else {
            continue;
        };
        let Some(symbol) = name.strip_prefix("book.") else { continue };
        followed.insert(
            id as u32,
            Followed {
                symbol: symbol.to_string(),
                price_precision: c["price_precision"].as_u64().unwrap_or(0) as u8,
                qty_precision: c["qty_precision"].as_u64().unwrap_or(0) as u8,
                book: None,
            },
        );
    }
}

/// Applies a binary frame's book snapshots and deltas to the followed books. A delta that
/// does not follow its book's sequence drops the book until the next snapshot (the
/// sequence check counts the break).
pub(crate) fn follow(payload: &[u8], followed: &mut HashMap<u32, Followed>) {
    for msg in protocol::decode(payload).map_while(Result::ok) {
        let Some(f) = followed.get_mut(&msg.channel) else { continue };
        match msg.msg_type {
            MsgType::BookSnapshot => {
                f.book = protocol::decode_book_snapshot(msg.body).map(|(bids, asks)| {
                    L2Book::from_snapshot(&BookSnapshot { seq: Seq(msg.seq), bids, asks })
                });
            }
            MsgType::BookDelta => {
                let (Some(book), Some(delta)) =
                    (f.book.as_mut(), protocol::decode_book_delta(&msg))
                else {
                    continue;
                };
                if book.apply(&delta).is_err() {
                    f.book = None;
                }
            }
            _ => {}
        }
    }
}

/// A REST book: its sequence and levels as decimal strings.
type RestBook = (u64, Vec<(String, String)>, Vec<(String, String)>);

pub(crate) async fn rest_book(addr: SocketAddr, symbol: &str) -> Option<RestBook> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "GET /api/v1/markets/{symbol}/book?depth={} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        protocol::SNAPSHOT_DEPTH_MAX
    );
    s.write_all(head.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let v: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()?;
    let levels = |side: &str| -> Option<Vec<(String, String)>> {
        v[side]
            .as_array()?
            .iter()
            .map(|l| Some((l[0].as_str()?.to_string(), l[1].as_str()?.to_string())))
            .collect()
    };
    Some((v["seq"].as_u64()?, levels("bids")?, levels("asks")?))
}

/// At the end of a run: brings each followed book to the sequence of a fresh REST snapshot
/// (reading on while the connection is open) and compares them level by level.
pub(crate) async fn verify_books(
    reader: &mut FrameReader,
    mut open: bool,
    rest: SocketAddr,
    followed: &mut HashMap<u32, Followed>,
) -> BookCheck {
    let mut check = BookCheck::default();
    let channels: Vec<u32> = followed.keys().copied().collect();
    for channel in channels {
        let mut outcome = None;
        for _attempt in 0..3 {
            let symbol = followed[&channel].symbol.clone();
            let Some((seq, bids, asks)) = rest_book(rest, &symbol).await else { break };
            let deadline = Instant::now() + Duration::from_secs(5);
            // Read on until the local book reaches the REST sequence.
            while open && followed[&channel].book.as_ref().is_some_and(|b| b.seq().0 < seq) {
                let left = deadline.saturating_duration_since(Instant::now());
                if !matches!(tokio::time::timeout(left, reader.fill()).await, Ok(Ok(true))) {
                    open = false;
                }
                loop {
                    match reader.next_frame() {
                        Ok(Some((OpCode::Binary, range))) => {
                            follow(reader.payload(range), followed);
                        }
                        Ok(Some((OpCode::Close, _))) | Err(_) => open = false,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                    }
                    if !open {
                        break;
                    }
                }
            }
            let f = &followed[&channel];
            let Some(book) = &f.book else { break };
            if book.seq().0 != seq {
                continue; // moved past it: take a newer REST snapshot
            }
            let (pp, qp) = (f.price_precision, f.qty_precision);
            let local = book.snapshot(bids.len().max(asks.len()));
            let fmt = |levels: &[(Price, Qty)], n: usize| -> Vec<(String, String)> {
                levels
                    .iter()
                    .take(n)
                    .map(|(p, q)| (format_fixed(p.0, pp), format_fixed(q.0, qp)))
                    .collect()
            };
            let same = fmt(&local.bids, bids.len()) == bids && fmt(&local.asks, asks.len()) == asks;
            outcome = Some(same);
            break;
        }
        match outcome {
            Some(true) => check.verified += 1,
            Some(false) => check.mismatched += 1,
            None => check.unverified += 1,
        }
    }
    check
}
