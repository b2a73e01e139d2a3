//! Any `:authority` on the UNIX socket.
//!
//! HTTP/2 requires a `:authority`, and over a UNIX socket it means nothing, so clients send what
//! they like: grpc-java (Bazel) the socket path, grpc C-core (Python grpcio, C++ tools) the
//! percent-encoded path, grpc-go `localhost`. hyper's h2 answers every stream whose authority is
//! not a valid URI authority with RST_STREAM(PROTOCOL_ERROR), and has no option to relax that
//! (hyperium/h2#487). [`LenientAuthority`] sits between the socket and the HTTP/2 server and
//! rewrites such an authority to `localhost` in what the client sends; the server then sees an
//! ordinary request and answers it as it would over TCP. The socket is private to its user
//! (mode 0600), so accepting any authority there gives nothing away; TCP listeners stay strict.

mod rewriter;

use bytes::BytesMut;
use rewriter::{Rewriter, Step};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tonic::transport::server::Connected;

/// How much to read at a time while a header block is being gathered.
const GATHER_CHUNK: usize = 16 << 10;

/// A server-side HTTP/2 connection whose client may send any `:authority` (see the module
/// documentation). Reads pass through uncopied except for header blocks, which are re-encoded;
/// writes pass through untouched.
pub struct LenientAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    /// The client's bytes from the first one not yet decided on (a partial frame header or a
    /// header block still arriving), and what came after them.
    held: BytesMut,
    /// Decided bytes the server has not read yet.
    ready: BytesMut,
}

impl<S> LenientAuthority<S> {
    pub fn new(inner: S) -> Self {
        LenientAuthority {
            inner,
            rewriter: Rewriter::default(),
            held: BytesMut::new(),
            ready: BytesMut::new(),
        }
    }

    /// A connection whose first bytes were read from it already (to tell its protocol).
    pub fn with_received(inner: S, received: BytesMut) -> Self {
        let mut connection = LenientAuthority::new(inner);
        connection.held = received;
        connection.drain_held();
        connection
    }

    /// Decides on as much of `held` as can be, moving the result to `ready`.
    fn drain_held(&mut self) {
        loop {
            match self.rewriter.step(&self.held) {
                Step::Pass(n) => {
                    let passed = self.held.split_to(n);
                    match self.ready.is_empty() {
                        true => self.ready = passed,
                        false => self.ready.extend_from_slice(&passed),
                    }
                }
                Step::Block(n) => {
                    let block = self.held.split_to(n);
                    self.rewriter.rewrite(&block, &mut self.ready);
                }
                Step::Need => return,
            }
        }
    }

    /// How many leading bytes of `read` (just read, in order) pass unchanged.
    fn unchanged(&mut self, read: &[u8]) -> usize {
        let mut offset = 0;
        while let Step::Pass(n) = self.rewriter.step(&read[offset..]) {
            offset += n;
        }
        offset
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LenientAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.held.is_empty() {
                // The usual case: read straight into the server's buffer, and keep back only
                // what starts at a header block.
                let start = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let read = &buf.filled()[start..];
                if read.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let unchanged = this.unchanged(read);
                if unchanged < read.len() {
                    this.held.extend_from_slice(&read[unchanged..]);
                    buf.set_filled(start + unchanged);
                    this.drain_held();
                }
                if unchanged > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                let len = this.held.len();
                this.held.resize(len + GATHER_CHUNK, 0);
                let mut chunk = ReadBuf::new(&mut this.held[len..]);
                let polled = Pin::new(&mut this.inner).poll_read(cx, &mut chunk);
                let n = chunk.filled().len();
                this.held.truncate(len + n);
                ready!(polled)?;
                if n == 0 {
                    // The client left mid-frame: the server gets what there is, then the end.
                    this.ready = std::mem::take(&mut this.held);
                    if this.ready.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                } else {
                    this.drain_held();
                }
            }
        }
    }
}

write_through!(LenientAuthority);

impl<S: Connected> Connected for LenientAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
