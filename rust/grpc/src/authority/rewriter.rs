//! The byte-level half of [`super::LenientAuthority`]: finds the header blocks in what an HTTP/2
//! client sends, and re-encodes each with an invalid `:authority` replaced.
//!
//! HPACK is stateful: every header block may add entries to a dynamic table that later blocks
//! refer to by index. Once one block is re-encoded, the server's table no longer matches the
//! client's, so every block of the connection goes through the decoder (which follows the
//! client's table) and the encoder (which leads the server's), not only those that needed a change.
//! Everything else (the preface, DATA, SETTINGS, WINDOW_UPDATE, ...) is passed on unchanged and
//! uncopied.

use bytes::{BufMut, BytesMut};
use loona_hpack::{Decoder, Encoder};

/// The client connection preface ("PRI * HTTP/2.0...") that precedes the first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
pub(super) const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
pub(super) const END_STREAM: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The stream dependency and weight a HEADERS frame with PRIORITY carries before its block.
const PRIORITY_LEN: usize = 5;
/// The largest frame payload every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's minimum).
const MAX_FRAME_PAYLOAD: usize = 16 << 10;
/// The dynamic table size both HPACK contexts start with, and that the server never changes
/// (hyper does not send SETTINGS_HEADER_TABLE_SIZE), so a client may not exceed it.
const HEADER_TABLE_SIZE: usize = 4096;
/// A header block larger than this is not gathered: the server refuses header lists over
/// 16 KiB anyway, and a peer must not make the daemon buffer without bound.
const MAX_BLOCK_BYTES: usize = 1 << 20;
/// What an invalid `:authority` becomes; over a UNIX socket it carries no meaning.
const REPLACEMENT: &[u8] = b"localhost";

/// What to do with the bytes at the start of some input.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The first n (> 0) bytes go to the server unchanged.
    Pass(usize),
    /// The first n bytes are a complete header block (a HEADERS frame and its CONTINUATIONs):
    /// give them to [`Rewriter::rewrite`].
    Block(usize),
    /// Nothing can be decided before more bytes arrive.
    Need,
}

/// The state of one connection's client-to-server byte stream.
pub(super) struct Rewriter {
    preface_left: usize,
    /// Payload bytes of the current passed-on frame still to come.
    payload_left: usize,
    /// Set when the peer breaks the protocol: from then on everything passes unchanged, and the
    /// server, which sees the same violation, ends the connection with the right error.
    passthrough: bool,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn parse(input: &[u8]) -> Option<FrameHeader> {
        let h = input.get(..FRAME_HEADER_LEN)?;
        Some(FrameHeader {
            len: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
            kind: h[3],
            flags: h[4],
            stream_id: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }

    fn write(&self, out: &mut BytesMut) {
        let len = u32::try_from(self.len).expect("frame payloads are at most 16 KiB");
        out.put_slice(&len.to_be_bytes()[1..]);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream_id);
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            preface_left: PREFACE_LEN,
            payload_left: 0,
            passthrough: false,
            decoder,
            encoder: Encoder::new(),
        }
    }
}

impl Rewriter {
    /// Decides about the start of `input`, the client's bytes that follow everything earlier
    /// steps passed or took as blocks. Passing bytes advances the state; `Block` and `Need` do
    /// not, so the same bytes (and more) come back.
    pub(super) fn step(&mut self, input: &[u8]) -> Step {
        if input.is_empty() {
            return Step::Need;
        }
        if self.passthrough {
            return Step::Pass(input.len());
        }
        for left in [&mut self.preface_left, &mut self.payload_left] {
            if *left > 0 {
                let n = (*left).min(input.len());
                *left -= n;
                return Step::Pass(n);
            }
        }
        let Some(frame) = FrameHeader::parse(input) else {
            return Step::Need;
        };
        match frame.kind {
            HEADERS => self.header_block(input),
            // A CONTINUATION not following a HEADERS frame is a connection error.
            CONTINUATION => self.give_up(input),
            _ => {
                let n = (FRAME_HEADER_LEN + frame.len).min(input.len());
                self.payload_left = FRAME_HEADER_LEN + frame.len - n;
                Step::Pass(n)
            }
        }
    }

    /// A HEADERS frame starts `input`: its block ends with the frame flagged END_HEADERS.
    fn header_block(&mut self, input: &[u8]) -> Step {
        let mut offset = 0;
        loop {
            let Some(frame) = FrameHeader::parse(&input[offset..]) else {
                return Step::Need;
            };
            if offset > 0 && frame.kind != CONTINUATION {
                return self.give_up(input);
            }
            let end = offset + FRAME_HEADER_LEN + frame.len;
            if end > MAX_BLOCK_BYTES {
                return self.give_up(input);
            }
            if input.len() < end {
                return Step::Need;
            }
            if frame.flags & END_HEADERS != 0 {
                return Step::Block(end);
            }
            offset = end;
        }
    }

    fn give_up(&mut self, input: &[u8]) -> Step {
        self.passthrough = true;
        Step::Pass(input.len())
    }

    /// Appends `block` (from [`Step::Block`]) to `out`, re-encoded, with an `:authority` that is
    /// not a valid URI authority replaced by `localhost`. Padding is dropped; the stream, its
    /// END_STREAM flag and its priority are kept. A block that does not decode goes out as it
    /// came, and so does everything after it.
    pub(super) fn rewrite(&mut self, block: &[u8], out: &mut BytesMut) {
        match self.decode(block) {
            Some((first, priority, headers)) => {
                let encoded = self
                    .encoder
                    .encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
                write_block(out, &first, priority, &encoded);
            }
            None => {
                self.passthrough = true;
                out.extend_from_slice(block);
            }
        }
    }

    /// The first frame's header, its priority fields, and the headers with the authority fixed.
    #[allow(clippy::type_complexity)]
    fn decode<'b>(
        &mut self,
        block: &'b [u8],
    ) -> Option<(FrameHeader, Option<&'b [u8]>, Vec<(Vec<u8>, Vec<u8>)>)> {
        let first = FrameHeader::parse(block)?;
        let mut payload = block.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + first.len)?;
        if first.flags & PADDED != 0 {
            let (&pad, rest) = payload.split_first()?;
            payload = rest.get(..rest.len().checked_sub(usize::from(pad))?)?;
        }
        let priority = match first.flags & PRIORITY {
            0 => None,
            _ => {
                let (fields, rest) = payload.split_at_checked(PRIORITY_LEN)?;
                payload = rest;
                Some(fields)
            }
        };
        let mut fragment = payload.to_vec();
        let mut offset = FRAME_HEADER_LEN + first.len;
        while offset < block.len() {
            let frame = FrameHeader::parse(&block[offset..])?;
            offset += FRAME_HEADER_LEN;
            fragment.extend_from_slice(block.get(offset..offset + frame.len)?);
            offset += frame.len;
        }
        let mut headers = Vec::new();
        self.decoder
            .decode_with_cb(&fragment, |name, value| {
                let value = match &*name == b":authority" && !valid_authority(&value) {
                    true => REPLACEMENT.to_vec(),
                    false => value.into_owned(),
                };
                headers.push((name.into_owned(), value));
            })
            .ok()?;
        Some((first, priority, headers))
    }
}

/// What h2 accepts as `:authority` (it parses the value as an [`http::uri::Authority`]).
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A HEADERS frame (and CONTINUATIONs when `encoded` does not fit) on `first`'s stream.
fn write_block(out: &mut BytesMut, first: &FrameHeader, priority: Option<&[u8]>, encoded: &[u8]) {
    let priority = priority.unwrap_or_default();
    let (head, mut rest) = encoded.split_at(encoded.len().min(MAX_FRAME_PAYLOAD - priority.len()));
    let mut frame = FrameHeader {
        len: priority.len() + head.len(),
        kind: HEADERS,
        flags: first.flags & (END_STREAM | PRIORITY),
        stream_id: first.stream_id,
    };
    let mut payload = [priority, head];
    loop {
        if rest.is_empty() {
            frame.flags |= END_HEADERS;
        }
        frame.write(out);
        payload.iter().for_each(|part| out.put_slice(part));
        if rest.is_empty() {
            return;
        }
        let (next, after) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        frame = FrameHeader {
            len: next.len(),
            kind: CONTINUATION,
            flags: 0,
            stream_id: first.stream_id,
        };
        payload = [&[], next];
        rest = after;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub(crate) const DATA: u8 = 0x0;
    pub(crate) const SETTINGS: u8 = 0x4;

    pub(crate) type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    pub(crate) fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        FrameHeader {
            len: payload.len(),
            kind,
            flags,
            stream_id,
        }
        .write(&mut out);
        out.put_slice(payload);
        out.to_vec()
    }

    pub(crate) fn request(authority: Option<&str>) -> Headers {
        let mut headers = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (
                ":path",
                "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
            ),
        ];
        headers.extend(authority.map(|a| (":authority", a)));
        headers.extend([("content-type", "application/grpc"), ("te", "trailers")]);
        headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    pub(crate) fn with_authority(mut headers: Headers, authority: &str) -> Headers {
        for (name, value) in &mut headers {
            if name == b":authority" {
                *value = authority.as_bytes().to_vec();
            }
        }
        headers
    }

    pub(crate) fn encode(encoder: &mut Encoder, headers: &Headers) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// What a client connection starts with: the preface and an empty SETTINGS frame.
    pub(crate) fn connection_start() -> Vec<u8> {
        [PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()
    }

    /// Runs `input` through a rewriter the way a connection does, all of it at once.
    pub(crate) fn rewrite_all(rewriter: &mut Rewriter, mut input: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        loop {
            let n = match rewriter.step(input) {
                Step::Pass(n) => {
                    out.put_slice(&input[..n]);
                    n
                }
                Step::Block(n) => {
                    rewriter.rewrite(&input[..n], &mut out);
                    n
                }
                Step::Need => {
                    assert!(input.is_empty(), "{} bytes left undecided", input.len());
                    return out.to_vec();
                }
            };
            input = &input[n..];
        }
    }

    /// A frame as the server sees it: header blocks decoded, other payloads as they are.
    #[derive(Debug, PartialEq)]
    pub(crate) enum Seen {
        Headers {
            stream: u32,
            flags: u8,
            priority: Option<Vec<u8>>,
            headers: Headers,
        },
        Frame {
            kind: u8,
            flags: u8,
            payload: Vec<u8>,
        },
    }

    /// Parses what the rewriter gave the server, checking every frame's size on the way.
    pub(crate) fn server_view(out: &[u8]) -> Vec<Seen> {
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let mut decoder = Decoder::new();
        let mut rest = &out[PREFACE.len()..];
        let mut seen = Vec::new();
        let next = |rest: &mut &[u8]| {
            let frame = FrameHeader::parse(rest).expect("a whole frame header");
            assert!(frame.len <= MAX_FRAME_PAYLOAD, "a {}-byte frame", frame.len);
            let payload = rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + frame.len].to_vec();
            *rest = &rest[FRAME_HEADER_LEN + frame.len..];
            (frame, payload)
        };
        while !rest.is_empty() {
            let (frame, mut payload) = next(&mut rest);
            if frame.kind != HEADERS {
                seen.push(Seen::Frame {
                    kind: frame.kind,
                    flags: frame.flags,
                    payload,
                });
                continue;
            }
            assert_eq!(frame.flags & PADDED, 0, "padding is dropped");
            let priority = (frame.flags & PRIORITY != 0).then(|| payload.drain(..5).collect());
            let mut last = frame.flags;
            while last & END_HEADERS == 0 {
                let (continuation, more) = next(&mut rest);
                assert_eq!(continuation.kind, CONTINUATION);
                assert_eq!(continuation.stream_id, frame.stream_id);
                payload.extend(more);
                last = continuation.flags;
            }
            seen.push(Seen::Headers {
                stream: frame.stream_id,
                flags: frame.flags & !END_HEADERS,
                priority,
                headers: decoder
                    .decode(&payload)
                    .expect("the server decodes the block"),
            });
        }
        seen
    }

    fn settings() -> Seen {
        Seen::Frame {
            kind: SETTINGS,
            flags: 0,
            payload: vec![],
        }
    }

    fn headers(stream: u32, flags: u8, headers: Headers) -> Seen {
        Seen::Headers {
            stream,
            flags,
            priority: None,
            headers,
        }
    }

    #[test]
    fn authorities_h2_refuses_become_localhost_and_the_rest_is_unchanged() {
        let message = [0u8, 0, 0, 0, 0];
        // What grpc-java, grpc C-core and a client that sends an empty value send.
        for authority in ["/home/me/.cache/clientd/grpc", "tmp%2Fx%2Fgrpc", ""] {
            assert!(!valid_authority(authority.as_bytes()) || authority.contains('%'));
            let input = [
                connection_start(),
                frame(
                    HEADERS,
                    END_HEADERS,
                    1,
                    &encode(&mut Encoder::new(), &request(Some(authority))),
                ),
                frame(DATA, END_STREAM, 1, &message),
            ]
            .concat();
            let out = rewrite_all(&mut Rewriter::default(), &input);
            let expected = match valid_authority(authority.as_bytes()) {
                true => authority,
                false => "localhost",
            };
            assert_eq!(
                server_view(&out),
                [
                    settings(),
                    headers(1, 0, with_authority(request(Some(authority)), expected)),
                    Seen::Frame {
                        kind: DATA,
                        flags: END_STREAM,
                        payload: message.to_vec(),
                    },
                ],
                "{authority:?}"
            );
        }
    }

    #[test]
    fn valid_or_absent_authorities_are_kept() {
        for headers_sent in [request(Some("localhost:8980")), request(None)] {
            let input = [
                connection_start(),
                frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    1,
                    &encode(&mut Encoder::new(), &headers_sent),
                ),
            ]
            .concat();
            let out = rewrite_all(&mut Rewriter::default(), &input);
            assert_eq!(
                server_view(&out),
                [settings(), headers(1, END_STREAM, headers_sent)]
            );
        }
    }

    /// Later blocks refer to entries earlier blocks put in the client's dynamic table; the
    /// server, whose table the rewriter's encoder fills instead, still decodes them all.
    #[test]
    fn every_block_of_a_connection_decodes_against_the_client_table() {
        let mut client = Encoder::new();
        let mut input = connection_start();
        let mut expected = vec![settings()];
        let mut first_len = None;
        for stream in [1, 3, 5] {
            let mut sent = request(Some("/tmp/x/grpc"));
            sent.push((b"x-call".to_vec(), b"same".to_vec()));
            let block = encode(&mut client, &sent);
            let first_len = *first_len.get_or_insert(block.len());
            if stream > 1 {
                assert!(block.len() < first_len, "the client refers to its table");
            }
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            expected.push(headers(stream, 0, with_authority(sent, "localhost")));
        }
        let out = rewrite_all(&mut Rewriter::default(), &input);
        assert_eq!(server_view(&out), expected);
    }

    #[test]
    fn padding_is_dropped_and_priority_kept() {
        let block = encode(&mut Encoder::new(), &request(Some("/tmp/x/grpc")));
        let priority = [0x80, 0, 0, 3, 200];
        let payload = [&[4u8][..], &priority, &block, &[0; 4]].concat();
        let flags = END_HEADERS | END_STREAM | PADDED | PRIORITY;
        let input = [connection_start(), frame(HEADERS, flags, 7, &payload)].concat();
        let out = rewrite_all(&mut Rewriter::default(), &input);
        assert_eq!(
            server_view(&out),
            [
                settings(),
                Seen::Headers {
                    stream: 7,
                    flags: END_STREAM | PRIORITY,
                    priority: Some(priority.to_vec()),
                    headers: with_authority(request(Some("/tmp/x/grpc")), "localhost"),
                }
            ]
        );
    }

    #[test]
    fn large_blocks_arrive_and_leave_in_continuations() {
        let mut sent = request(Some("/tmp/x/grpc"));
        sent.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block = encode(&mut Encoder::new(), &sent);
        let mut input = connection_start();
        let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME_PAYLOAD).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let flags = if i + 1 == chunks.len() {
                END_HEADERS
            } else {
                0
            };
            input.extend(frame(kind, flags, 1, chunk));
        }
        assert_eq!(chunks.len(), 3);
        let out = rewrite_all(&mut Rewriter::default(), &input);
        assert_eq!(
            server_view(&out),
            [settings(), headers(1, 0, with_authority(sent, "localhost"))]
        );
    }

    #[test]
    fn a_block_that_does_not_decode_and_all_after_it_pass_unchanged() {
        let input = [
            connection_start(),
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]),
            frame(
                HEADERS,
                END_HEADERS,
                3,
                &encode(&mut Encoder::new(), &request(Some("/tmp/x/grpc"))),
            ),
        ]
        .concat();
        assert_eq!(rewrite_all(&mut Rewriter::default(), &input), input);
    }

    #[test]
    fn protocol_errors_pass_unchanged_for_the_server_to_report() {
        let block = encode(&mut Encoder::new(), &request(Some("/tmp/x/grpc")));
        let stray_continuation = frame(CONTINUATION, END_HEADERS, 1, &block);
        let interleaved = [
            frame(HEADERS, 0, 1, &block),
            frame(DATA, END_STREAM, 1, &[0; 5]),
        ]
        .concat();
        for frames in [stray_continuation, interleaved] {
            let input = [connection_start(), frames].concat();
            assert_eq!(rewrite_all(&mut Rewriter::default(), &input), input);
        }
    }

    #[test]
    fn an_oversized_block_is_not_gathered() {
        let mut rewriter = Rewriter::default();
        let start = connection_start();
        assert_eq!(rewrite_all(&mut rewriter, &start), start);
        let header = frame(HEADERS, 0, 1, &[]);
        let mut huge = header.clone();
        huge[..3].copy_from_slice(&[0x10, 0, 0]);
        assert_eq!(rewriter.step(&huge), Step::Pass(huge.len()));
        assert_eq!(rewriter.step(&header), Step::Pass(header.len()));
    }

    #[test]
    fn nothing_is_decided_on_a_partial_frame_header() {
        let mut rewriter = Rewriter::default();
        assert_eq!(rewriter.step(PREFACE), Step::Pass(PREFACE.len()));
        let settings = frame(SETTINGS, 0, 0, &[0; 6]);
        assert_eq!(rewriter.step(&settings[..8]), Step::Need);
        assert_eq!(rewriter.step(&settings[..10]), Step::Pass(10));
        assert_eq!(rewriter.step(&settings[10..]), Step::Pass(5));
    }
}
