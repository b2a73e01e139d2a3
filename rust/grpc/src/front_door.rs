//! Each listener carries gRPC and one other protocol (the daemon's HTTP/1.1 cache): each
//! connection's first bytes tell which. A gRPC client starts with the HTTP/2 connection preface;
//! an HTTP/1.1 client with a request line (`GET `, `PUT `, ...), which parts from the preface
//! by its second byte at the latest. Both speak first, so nothing waits on the server.

use crate::authority::LenientAuthority;
use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tonic::transport::server::Connected;

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a new connection may take to show which protocol it speaks.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted and told apart but not yet taken by the gRPC server.
const QUEUED: usize = 64;

/// The UNIX socket's HTTP/2 connections, each wrapped in [`LenientAuthority`] (any
/// `:authority`), for `Server::serve_with_incoming`; every other connection goes to `other`.
pub fn split_unix<F>(
    listener: UnixListener,
    other: F,
) -> impl Stream<Item = io::Result<LenientAuthority<UnixStream>>>
where
    F: Fn(Replayed<UnixStream>) + Send + Sync + 'static,
{
    split(
        UnixListenerStream::new(listener),
        LenientAuthority::with_received,
        other,
    )
}

/// A TCP listener's HTTP/2 connections (TCP_NODELAY set: without it a small reply can wait
/// for the client's delayed ACK, 40 ms, a round trip per action for Bazel); every other
/// connection goes to `other`.
pub fn split_tcp<F>(
    listener: TcpListener,
    other: F,
) -> impl Stream<Item = io::Result<Replayed<TcpStream>>>
where
    F: Fn(Replayed<TcpStream>) + Send + Sync + 'static,
{
    let accepted = TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    });
    split(accepted, Replayed::new, other)
}

/// The HTTP/2 connections of `accepted`, made into what the gRPC server takes by `grpc` (with
/// the bytes read from them so far); every other connection goes to `other` with those bytes
/// ([`Replayed`]). Accepting ends when the gRPC server drops the stream.
fn split<S, A, W, G, F>(accepted: A, grpc: G, other: F) -> impl Stream<Item = io::Result<W>>
where
    S: AsyncRead + Unpin + Send + 'static,
    A: Stream<Item = io::Result<S>> + Send + 'static,
    W: Send + 'static,
    G: Fn(S, BytesMut) -> W + Send + Sync + 'static,
    F: Fn(Replayed<S>) + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUED);
    let (grpc, other) = (Arc::new(grpc), Arc::new(other));
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        loop {
            let next = tokio::select! {
                next = accepted.next() => next,
                _ = tx.closed() => return,
            };
            let mut stream = match next {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    // Out of descriptors, say: the server hears of it, as it would have.
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                None => return,
            };
            let (tx, grpc, other) = (tx.clone(), grpc.clone(), other.clone());
            tokio::spawn(async move {
                let first = tokio::time::timeout(FIRST_BYTES_TIMEOUT, first_bytes(&mut stream));
                match first.await {
                    Ok(Ok((received, true))) => {
                        let _ = tx.send(Ok(grpc(stream, received))).await;
                    }
                    Ok(Ok((received, false))) => other(Replayed::new(stream, received)),
                    Ok(Err(e)) => tracing::debug!("new connection: {e}"),
                    Err(_) => {
                        tracing::debug!("new connection: nothing sent in {FIRST_BYTES_TIMEOUT:?}")
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Reads until the bytes are the whole preface (true) or part from it (false); what was read.
async fn first_bytes<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(BytesMut, bool)> {
    let mut received = BytesMut::with_capacity(PREFACE.len());
    loop {
        let n = received.len();
        if !PREFACE.starts_with(&received) {
            return Ok((received, false));
        }
        if n >= PREFACE.len() {
            return Ok((received, true));
        }
        if stream.read_buf(&mut received).await? == 0 {
            // Closed before it said anything that decides: nobody to answer.
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A connection whose first bytes were read already: reads give them again first.
pub struct Replayed<S> {
    received: BytesMut,
    inner: S,
}

impl<S> Replayed<S> {
    pub fn new(inner: S, received: BytesMut) -> Self {
        Replayed { received, inner }
    }
}

impl<S: Connected> Connected for Replayed<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.received.has_remaining() {
            let n = this.received.len().min(buf.remaining());
            buf.put_slice(&this.received[..n]);
            this.received.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

write_through!(Replayed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn http2_goes_to_the_server_and_the_rest_elsewhere_with_their_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let listener = UnixListener::bind(&path).unwrap();
        let (others_tx, mut others) = mpsc::unbounded_channel();
        let mut incoming = Box::pin(split_unix(listener, move |c| {
            others_tx.send(c).unwrap();
        }));

        // An HTTP/1.1 client, in two writes that part from the preface at the second byte.
        let mut client = UnixStream::connect(&path).await.unwrap();
        client.write_all(b"P").await.unwrap();
        client
            .write_all(b"UT /local/cas/x HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut other = others.recv().await.unwrap();
        let mut line = vec![0; 27];
        other.read_exact(&mut line).await.unwrap();
        assert_eq!(line, b"PUT /local/cas/x HTTP/1.1\r\n");
        other.write_all(b"answer").await.unwrap();
        let mut answer = [0; 6];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");

        // An HTTP/2 client: its preface reaches the server whole.
        let mut client = UnixStream::connect(&path).await.unwrap();
        client.write_all(PREFACE).await.unwrap();
        let mut server = incoming.next().await.unwrap().unwrap();
        let mut preface = vec![0; PREFACE.len()];
        server.read_exact(&mut preface).await.unwrap();
        assert_eq!(preface, PREFACE);
    }
}
