use super::rewriter::tests::{
    connection_start, encode, frame, request, rewrite_all, server_view, DATA, SETTINGS,
};
use super::*;
use crate::{CapabilitiesService, Clusters};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use loona_hpack::{Decoder, Encoder};
use prost::Message;
use re::capabilities_server::CapabilitiesServer;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
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

/// What a real h2 server answered to a GetCapabilities call on stream 1.
#[derive(Debug, PartialEq)]
enum Answer {
    GrpcStatus(String),
    Reset(u32),
}

/// Serves Capabilities on one end of a socket pair (through [`LenientAuthority`] when
/// `lenient`), sends a handmade GetCapabilities call with `authority` from the other end, and
/// reads the answer.
async fn call_with_authority(authority: &str, instance_name: &str, lenient: bool) -> Answer {
    let (server_end, mut client) = UnixStream::pair().unwrap();
    let clusters: Arc<Clusters> = Arc::new(clientd_store::Router::new([("local".into(), None)]));
    let router = tonic::transport::Server::builder()
        .add_service(CapabilitiesServer::new(CapabilitiesService::new(clusters)));
    let server = tokio::spawn(async move {
        let result = match lenient {
            true => {
                let incoming =
                    futures::stream::iter([Ok::<_, io::Error>(LenientAuthority::new(server_end))]);
                router.serve_with_incoming(incoming).await
            }
            false => {
                let incoming = futures::stream::iter([Ok::<_, io::Error>(server_end)]);
                router.serve_with_incoming(incoming).await
            }
        };
        result.unwrap();
    });

    let message = re::GetCapabilitiesRequest {
        instance_name: instance_name.into(),
    }
    .encode_to_vec();
    let grpc_message = [&[0u8][..], &(message.len() as u32).to_be_bytes(), &message].concat();
    let block = encode(&mut Encoder::new(), &request(Some(authority)));
    let sent = [
        connection_start(),
        frame(SETTINGS, ACK, 0, &[]),
        frame(HEADERS, END_HEADERS, 1, &block),
        frame(DATA, END_STREAM, 1, &grpc_message),
    ]
    .concat();
    client.write_all(&sent).await.unwrap();

    let mut decoder = Decoder::new();
    let answer = loop {
        let mut header = [0u8; 9];
        client.read_exact(&mut header).await.unwrap();
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0; len];
        client.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        match (header[3], stream) {
            (RST_STREAM, 1) => {
                break Answer::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()))
            }
            (HEADERS, 1) => {
                assert_ne!(header[4] & END_HEADERS, 0, "small blocks come whole");
                let headers = decoder.decode(&payload).unwrap();
                if let Some((_, status)) = headers.iter().find(|(n, _)| n == b"grpc-status") {
                    break Answer::GrpcStatus(String::from_utf8(status.clone()).unwrap());
                }
            }
            _ => {}
        }
    };
    drop(client);
    server.abort();
    answer
}

const PROTOCOL_ERROR: u32 = 0x1;

#[tokio::test]
async fn the_server_answers_calls_with_the_authorities_real_clients_send() {
    // grpc-java (Bazel), grpc C-core (grpcio), empty, grpc-go.
    for authority in [
        "/home/me/.cache/clientd/grpc",
        "tmp%2Fx%2Fgrpc",
        "",
        "localhost",
    ] {
        assert_eq!(
            call_with_authority(authority, "local/x", true).await,
            Answer::GrpcStatus("0".into()),
            "{authority:?}"
        );
    }
    // Bad content still gets its own status: INVALID_ARGUMENT (3) for an unknown instance.
    assert_eq!(
        call_with_authority("/tmp/x/grpc", "nowhere/x", true).await,
        Answer::GrpcStatus("3".into())
    );
}

/// The failure the wrapper exists for, so the test above is known to exercise it.
#[tokio::test]
async fn without_the_wrapper_h2_resets_the_socket_path_authority() {
    assert_eq!(
        call_with_authority("/home/me/.cache/clientd/grpc", "local/x", false).await,
        Answer::Reset(PROTOCOL_ERROR)
    );
}
