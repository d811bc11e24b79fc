//! A small WebSocket client over fastwebsockets, for tests, tools and examples.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use http_body_util::Empty;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

/// A connected client.
pub type Client = WebSocket<TokioIo<Upgraded>>;

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn(fut);
    }
}

/// Opens a WebSocket to `ws://addr{path_and_query}`.
pub async fn connect(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<Client> {
    connect_with(addr, path_and_query, None).await
}

/// Like [`connect`], with a fixed kernel receive buffer (to play a slow reader).
pub async fn connect_with(
    addr: SocketAddr,
    path_and_query: &str,
    recv_buffer_bytes: Option<u32>,
) -> anyhow::Result<Client> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(bytes) = recv_buffer_bytes {
        socket.set_recv_buffer_size(bytes)?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    connect_stream(stream, &addr.to_string(), path_and_query, &[]).await
}

/// Opens a WebSocket over `stream` (a TCP or TLS stream already connected to `host`),
/// with extra request headers (`Origin`, `Cookie`).
pub async fn connect_stream<S>(
    stream: S,
    host: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Client>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut req = Request::builder()
        .method("GET")
        // Origin form (`GET /ws`): the absolute form is for proxies, and servers such as
        // uWebSockets refuse it (RFC 9112, section 3.2).
        .uri(path_and_query)
        .header("Host", host)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
        .header("Sec-WebSocket-Version", "13");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let (mut ws, _) =
        fastwebsockets::handshake::client(&SpawnExecutor, req.body(Empty::<Bytes>::new())?, stream)
            .await?;
    ws.set_auto_pong(true);
    ws.set_max_message_size(64 << 20);
    Ok(ws)
}

/// Sends a JSON text message.
pub async fn send_json(ws: &mut Client, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = value.to_string();
    ws.write_frame(Frame::text(Payload::Owned(text.into_bytes()))).await?;
    Ok(())
}

/// A frame as plain owned data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Text (control replies, JSON market data).
    Text(String),
    /// Binary market data.
    Binary(Vec<u8>),
    /// Close with its code and reason.
    Close(Option<u16>, String),
}

/// Reads the next data or close frame (pings are answered automatically).
pub async fn next(ws: &mut Client) -> anyhow::Result<Message> {
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Text => return Ok(Message::Text(String::from_utf8(frame.payload.to_vec())?)),
            OpCode::Binary => return Ok(Message::Binary(frame.payload.to_vec())),
            OpCode::Close => {
                let p = frame.payload.to_vec();
                let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default()).into_owned();
                return Ok(Message::Close(code, reason));
            }
            _ => continue,
        }
    }
}
