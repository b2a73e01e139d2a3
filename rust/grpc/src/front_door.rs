//! The UNIX socket carries gRPC and one other protocol (the daemon's HTTP/1.1 cache): each
//! connection's first bytes tell which. A gRPC client starts with the HTTP/2 connection preface;
//! an HTTP/1.1 client with a request line (`GET `, `PUT `, ...), which parts from the preface
//! by its second byte at the latest. Both speak first, so nothing waits on the server.

use crate::authority::LenientAuthority;
use bytes::{Buf, BytesMut};
use futures::Stream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a new connection may take to show which protocol it speaks.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted and told apart but not yet taken by the gRPC server.
const QUEUED: usize = 64;

/// The HTTP/2 connections of `listener`, each wrapped in [`LenientAuthority`], for
/// `Server::serve_with_incoming`; every other connection goes to `other` with the bytes read
/// from it so far ([`Replayed`]). Accepting ends when the gRPC server drops the stream.
pub fn split_incoming<F>(
    listener: UnixListener,
    other: F,
) -> impl Stream<Item = io::Result<LenientAuthority<UnixStream>>>
where
    F: Fn(Replayed<UnixStream>) + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUED);
    let other = std::sync::Arc::new(other);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let mut stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: the server hears of it, as it would have.
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let (tx, other) = (tx.clone(), other.clone());
            tokio::spawn(async move {
                let first = tokio::time::timeout(FIRST_BYTES_TIMEOUT, first_bytes(&mut stream));
                match first.await {
                    Ok(Ok((received, true))) => {
                        let _ = tx
                            .send(Ok(LenientAuthority::with_received(stream, received)))
                            .await;
                    }
                    Ok(Ok((received, false))) => other(Replayed {
                        received,
                        inner: stream,
                    }),
                    Ok(Err(e)) => tracing::debug!("socket connection: {e}"),
                    Err(_) => tracing::debug!(
                        "socket connection: nothing sent in {FIRST_BYTES_TIMEOUT:?}"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Reads until the bytes are the whole preface (true) or part from it (false); what was read.
async fn first_bytes(stream: &mut UnixStream) -> io::Result<(BytesMut, bool)> {
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
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn http2_goes_to_the_server_and_the_rest_elsewhere_with_their_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let listener = UnixListener::bind(&path).unwrap();
        let (others_tx, mut others) = mpsc::unbounded_channel();
        let mut incoming = Box::pin(split_incoming(listener, move |c| {
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
