use super::rewriter::tests::{
    connection_start, encode, frame, request, rewrite_all, server_view, DATA, SETTINGS,
};
use super::rewriter::{END_HEADERS, END_STREAM, HEADERS};
use super::*;
use crate::{CapabilitiesService, Clusters};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use loona_hpack::{Decoder, Encoder};
use prost::Message;
use re::capabilities_server::CapabilitiesServer;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;

const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

/// Gives its bytes `chunk` at a time, as a socket may.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let end = (self.pos + self.chunk)
            .min(self.data.len())
            .min(self.pos + buf.remaining());
        buf.put_slice(&self.data[self.pos..end]);
        self.pos = end;
        Poll::Ready(Ok(()))
    }
}

/// A connection's worth of client bytes: three calls with the socket path as authority, the
/// second with a 100 KiB message (DATA frames the server must get uncopied and in order).
fn client_bytes() -> Vec<u8> {
    let mut encoder = Encoder::new();
    let mut input = connection_start();
    for (stream, size) in [(1, 5), (3, 100 << 10), (5, 5)] {
        let block = encode(&mut encoder, &request(Some("/home/me/.cache/clientd/grpc")));
        input.extend(frame(HEADERS, END_HEADERS, stream, &block));
        let message: Vec<u8> = (0..size).map(|i| i as u8).collect();
        for (i, part) in message.chunks(16 << 10).enumerate() {
            let last = (i + 1) * (16 << 10) >= size;
            input.extend(frame(DATA, if last { END_STREAM } else { 0 }, stream, part));
        }
    }
    input
}

#[tokio::test]
async fn reads_in_any_pieces_give_what_the_rewriter_gives_at_once() {
    let input = client_bytes();
    let expected = rewrite_all(&mut Rewriter::default(), &input);
    assert_eq!(server_view(&expected).len(), 1 + 3 + (1 + 7 + 1));
    for chunk in [1, 2, 5, 9, 10, 24, 100, 16 << 10, 1 << 20] {
        let mut lenient = LenientAuthority::new(Chunked {
            data: input.clone(),
            pos: 0,
            chunk,
        });
        let mut out = Vec::new();
        lenient.read_to_end(&mut out).await.unwrap();
        assert!(out == expected, "reads of {chunk} bytes");
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_frame_gets_its_bytes_through_then_the_end() {
    let input = client_bytes();
    let cut = connection_start().len() + 20;
    let mut lenient = LenientAuthority::new(Chunked {
        data: input[..cut].to_vec(),
        pos: 0,
        chunk: 7,
    });
    let mut out = Vec::new();
    lenient.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, input[..cut]);
}

/// What a real h2 server answered to a call on stream 1.
#[derive(Debug, PartialEq)]
enum Answer {
    GrpcStatus(String),
    Reset(u32),
    GoAway(u32),
}

/// A Capabilities server on a UNIX socket in a temporary directory, each connection through
/// [`LenientAuthority`] when `lenient`, as the daemon serves its socket ([`split_unix`]).
///
/// [`split_unix`]: crate::front_door::split_unix
fn serve(lenient: bool) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grpc");
    let listener = UnixListener::bind(&path).unwrap();
    let clusters: Arc<Clusters> = Arc::new(clientd_store::Router::new([(
        clientd_digest::InstanceName::local(),
        None,
    )]));
    let router = tonic::transport::Server::builder()
        .add_service(CapabilitiesServer::new(CapabilitiesService::new(clusters)));
    tokio::spawn(async move {
        match lenient {
            true => {
                let incoming = crate::front_door::split_unix(listener, |_| {});
                router.serve_with_incoming(incoming).await
            }
            false => {
                router
                    .serve_with_incoming(UnixListenerStream::new(listener))
                    .await
            }
        }
    });
    (dir, path)
}

/// Sends a handmade GetCapabilities call with `authority` for `instance_name` (or, with
/// `block`, that header block instead of a proper one) and reads the answer.
async fn call(
    socket: &std::path::Path,
    authority: &str,
    instance_name: &str,
    block: Option<&[u8]>,
) -> Answer {
    let mut client = UnixStream::connect(socket).await.unwrap();
    let message = re::GetCapabilitiesRequest {
        instance_name: instance_name.into(),
    }
    .encode_to_vec();
    let grpc_message = [&[0u8][..], &(message.len() as u32).to_be_bytes(), &message].concat();
    let proper = encode(&mut Encoder::new(), &request(Some(authority)));
    let sent = [
        connection_start(),
        frame(SETTINGS, ACK, 0, &[]),
        frame(HEADERS, END_HEADERS, 1, block.unwrap_or(&proper)),
        frame(DATA, END_STREAM, 1, &grpc_message),
    ]
    .concat();
    client.write_all(&sent).await.unwrap();

    let mut decoder = Decoder::new();
    loop {
        let mut header = [0u8; 9];
        client.read_exact(&mut header).await.unwrap();
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0; len];
        client.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        let code = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
        match (header[3], stream) {
            (RST_STREAM, 1) => return Answer::Reset(code(0)),
            (GOAWAY, 0) => return Answer::GoAway(code(4)),
            (HEADERS, 1) => {
                assert_ne!(header[4] & END_HEADERS, 0, "small blocks come whole");
                let headers = decoder.decode(&payload).unwrap();
                if let Some((_, status)) = headers.iter().find(|(n, _)| n == b"grpc-status") {
                    return Answer::GrpcStatus(String::from_utf8(status.clone()).unwrap());
                }
            }
            _ => {}
        }
    }
}

const PROTOCOL_ERROR: u32 = 0x1;

#[tokio::test]
async fn the_server_answers_calls_with_the_authorities_real_clients_send() {
    let (_dir, socket) = serve(true);
    // grpc-java (Bazel), grpc C-core (grpcio), empty, grpc-go.
    for authority in [
        "/home/me/.cache/clientd/grpc",
        "tmp%2Fx%2Fgrpc",
        "",
        "localhost",
    ] {
        assert_eq!(
            call(&socket, authority, "local/x", None).await,
            Answer::GrpcStatus("0".into()),
            "{authority:?}"
        );
    }
    // Bad content still gets its own status: INVALID_ARGUMENT (3) for an unknown instance.
    assert_eq!(
        call(&socket, "/tmp/x/grpc", "nowhere/x", None).await,
        Answer::GrpcStatus("3".into())
    );
}

/// The failure the wrapper exists for, so the test above is known to exercise it.
#[tokio::test]
async fn without_the_wrapper_h2_resets_the_socket_path_authority() {
    let (_dir, socket) = serve(false);
    assert_eq!(
        call(&socket, "/home/me/.cache/clientd/grpc", "local/x", None).await,
        Answer::Reset(PROTOCOL_ERROR)
    );
}

/// A header block that does not decode is the server's to refuse, as it would without the
/// wrapper: it ends that connection (GOAWAY), and goes on serving the others.
#[tokio::test]
async fn a_malformed_block_ends_its_connection_only() {
    let garbage: &[u8] = &[0xff, 0xff, 0xff, 0xff];
    let (_strict_dir, strict) = serve(false);
    let refused = call(&strict, "localhost", "local/x", Some(garbage)).await;
    assert!(
        matches!(refused, Answer::GoAway(code) if code != 0),
        "{refused:?}"
    );
    let (_dir, socket) = serve(true);
    assert_eq!(
        call(&socket, "/tmp/x/grpc", "local/x", Some(garbage)).await,
        refused
    );
    assert_eq!(
        call(&socket, "/tmp/x/grpc", "local/x", None).await,
        Answer::GrpcStatus("0".into())
    );
}
