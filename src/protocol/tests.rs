//! The wire format's tests: every message round-trips, and no byte sequence a peer can send
//! makes the decoder panic or allocate beyond its limits.

use super::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn frame(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(msg, &mut out).unwrap();
    out
}

/// A correctly delimited frame with arbitrary contents.
fn raw(version: u8, kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(BODY_HEADER + payload.len()).unwrap();
    let mut out = len.to_be_bytes().to_vec();
    out.push(version);
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

fn every_variant() -> Vec<Message> {
    vec![
        Message::Hello {
            pid: 4242,
            role: Role::Generation,
            ready_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_millis(1500),
            probation: Duration::from_secs(10),
            program: Some(Program {
                exe: "/srv/app/releases/v2/app".into(),
                args: vec!["0.0.0.0:8080".into(), "--config".into(), "".into()],
                cwd: "/srv/app".into(),
            }),
            addresses: vec![
                crate::net::Target::Tcp(vec![
                    "[::1]:8080".parse().expect("v6"),
                    "127.0.0.1:8080".parse().expect("v4"),
                ]),
                crate::net::Target::Tcp(vec!["0.0.0.0:0".parse().expect("any")]),
                #[cfg(unix)]
                crate::net::Target::Unix("/run/app/http.sock".into()),
            ],
        },
        Message::Hello {
            pid: u32::MAX,
            role: Role::Control,
            ready_timeout: Duration::ZERO,
            drain_timeout: Duration::from_millis(u64::MAX),
            probation: Duration::ZERO,
            program: None,
            addresses: Vec::new(),
        },
        Message::Listeners {
            generation: 0,
            sockets: vec![],
        },
        Message::Listeners {
            generation: 3,
            sockets: vec![vec![], vec![], vec![]],
        },
        Message::Listeners {
            generation: u64::MAX,
            sockets: vec![vec![1, 2, 3], vec![], vec![0xff; 628]],
        },
        Message::Ready,
        Message::Superseded,
        Message::Upgrade,
        Message::Upgraded { generation: 7 },
        Message::Shutdown,
        Message::StopRequested,
        Message::Stopping,
        Message::Probation,
        Message::Reinstated,
        Message::SteppedAside,
        Message::HandoffTo {
            pid: 77,
            pipe: String::new(),
        },
        Message::HandoffFrom {
            pid: u32::MAX,
            pipe: r"\\.\pipe\risefront-S-1-5-21-1-app-handoff-0123abcd".to_owned(),
        },
        Message::Ping,
        Message::Pong,
        Message::ReExec { program: None },
        Message::ReExec {
            program: Some(Program {
                exe: "/srv/app/releases/v3/app".into(),
                args: vec!["[::]:8080".into()],
                cwd: "/".into(),
            }),
        },
        Message::Connections { moved: vec![] },
        Message::Connections {
            moved: vec![
                Moved::default(),
                Moved {
                    socket: vec![9; 372],
                    unread: b"GET / HTTP/1.1\r\nHo".to_vec(),
                },
            ],
        },
        Message::Received { taken: vec![] },
        Message::Received {
            taken: vec![true, false, true],
        },
        Message::Busy {
            reason: "generation 3 is starting".to_owned(),
        },
        Message::Error {
            reason: String::new(),
        },
        Message::Error {
            reason: "bind: адрес уже используется 🔥 — 端口".to_owned(),
        },
    ]
}

fn drain(dec: &mut FrameDecoder, into: &mut Vec<Message>) {
    while let Some(msg) = dec.next_message().unwrap() {
        into.push(msg);
    }
}

#[test]
fn round_trips_every_variant() {
    for msg in every_variant() {
        let bytes = frame(&msg);
        assert_eq!(decode(&bytes), Ok(Some((msg, bytes.len()))));
    }
}

#[test]
fn wire_format_is_fixed() {
    let cases: [(Message, &[u8]); 10] = [
        (
            Message::ReExec { program: None },
            &[0, 0, 0, 4, 8, 21, 0, 0],
        ),
        (
            Message::Hello {
                pid: 0x0102_0304,
                role: Role::Generation,
                ready_timeout: Duration::from_millis(0x0506),
                drain_timeout: Duration::from_millis(7),
                probation: Duration::from_millis(0x0809),
                program: None,
                addresses: Vec::new(),
            },
            &[
                0, 0, 0, 35, 8, 1, 1, 2, 3, 4, 1, 0, 0, 0, 0, 0, 0, 5, 6, 0, 0, 0, 0, 0, 0, 0, 7,
                0, 0, 0, 0, 0, 0, 8, 9, 0, 0, 0, 0,
            ],
        ),
        (
            Message::Hello {
                pid: 9,
                role: Role::Control,
                ready_timeout: Duration::MAX,
                drain_timeout: Duration::ZERO,
                probation: Duration::ZERO,
                program: None,
                addresses: Vec::new(),
            },
            &[
                0, 0, 0, 35, 8, 1, 0, 0, 0, 9, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
        (
            Message::Listeners {
                generation: 5,
                sockets: vec![vec![0xaa], vec![]],
            },
            &[
                0, 0, 0, 17, 8, 2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 2, 0, 1, 0xaa, 0, 0,
            ],
        ),
        (
            Message::Upgraded {
                generation: 0x0102_0304_0506_0708,
            },
            &[0, 0, 0, 10, 8, 6, 1, 2, 3, 4, 5, 6, 7, 8],
        ),
        (
            Message::Error {
                reason: "hé".to_owned(),
            },
            &[0, 0, 0, 7, 8, 8, 0, 3, b'h', 0xc3, 0xa9],
        ),
        (Message::Ready, &[0, 0, 0, 2, 8, 3]),
        (
            Message::Connections {
                moved: vec![
                    Moved {
                        socket: vec![],
                        unread: b"GE".to_vec(),
                    },
                    Moved {
                        socket: vec![0xbb],
                        unread: vec![],
                    },
                ],
            },
            &[
                0, 0, 0, 15, 8, 17, 0, 2, 0, 0, 0, 2, b'G', b'E', 0, 1, 0xbb, 0, 0,
            ],
        ),
        (
            Message::Received {
                taken: vec![true, false],
            },
            &[0, 0, 0, 6, 8, 18, 0, 2, 1, 0],
        ),
        (
            Message::HandoffTo {
                pid: 0x0102_0304,
                pipe: "p".to_owned(),
            },
            &[0, 0, 0, 9, 8, 15, 1, 2, 3, 4, 0, 1, b'p'],
        ),
    ];
    for (msg, bytes) in cases {
        assert_eq!(frame(&msg), bytes, "{msg:?}");
    }
    let bare = [
        (Message::Superseded, 4),
        (Message::Upgrade, 5),
        (Message::Shutdown, 7),
        (Message::StopRequested, 9),
        (Message::Stopping, 10),
        (Message::Probation, 12),
        (Message::Reinstated, 13),
        (Message::SteppedAside, 14),
        (Message::Ping, 19),
        (Message::Pong, 20),
    ];
    for (msg, kind) in bare {
        assert_eq!(frame(&msg), [0, 0, 0, 2, VERSION, kind]);
    }
}

#[test]
fn oversized_prefix_is_refused_before_the_body() {
    assert_eq!(
        decode(&[0xff, 0xff, 0xff, 0xff]),
        Err(ProtocolError::TooLarge { len: 0xffff_ffff })
    );
    let just_over = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes();
    assert_eq!(
        decode(&just_over),
        Err(ProtocolError::TooLarge { len: MAX_FRAME + 1 })
    );
    let at_limit = u32::try_from(MAX_FRAME).unwrap().to_be_bytes();
    assert_eq!(decode(&at_limit), Ok(None));
}

#[test]
fn largest_frame_fits_and_one_more_byte_does_not() {
    // Body: version, kind, generation, count, one blob length, the blob.
    let room = MAX_FRAME - (2 + 8 + 2 + 2);
    let msg = Message::Listeners {
        generation: 1,
        sockets: vec![vec![7; room]],
    };
    let bytes = frame(&msg);
    assert_eq!(bytes.len(), LEN_PREFIX + MAX_FRAME);
    assert_eq!(decode(&bytes), Ok(Some((msg, bytes.len()))));

    let mut out = vec![0xee];
    let too_big = Message::Listeners {
        generation: 1,
        sockets: vec![vec![7; room + 1]],
    };
    assert_eq!(
        encode(&too_big, &mut out),
        Err(ProtocolError::TooLarge { len: MAX_FRAME + 1 })
    );
    assert_eq!(out, [0xee], "a failed encode must leave `out` alone");
}

#[test]
fn listeners_too_large_are_refused_not_truncated() {
    let mut out = Vec::new();
    let huge_blob = Message::Listeners {
        generation: 1,
        sockets: vec![vec![0; 100_000]],
    };
    assert!(matches!(
        encode(&huge_blob, &mut out),
        Err(ProtocolError::TooLarge { .. })
    ));
    let many_blobs = Message::Listeners {
        generation: 1,
        sockets: vec![vec![0; 1000]; 100],
    };
    assert!(matches!(
        encode(&many_blobs, &mut out),
        Err(ProtocolError::TooLarge { .. })
    ));
    let too_many = Message::Listeners {
        generation: 1,
        sockets: vec![vec![]; MAX_SOCKETS + 1],
    };
    assert_eq!(
        encode(&too_many, &mut out),
        Err(ProtocolError::Malformed("too many sockets"))
    );
    assert!(out.is_empty());

    let most = Message::Listeners {
        generation: 1,
        sockets: vec![vec![]; MAX_SOCKETS],
    };
    let bytes = frame(&most);
    assert_eq!(decode(&bytes), Ok(Some((most, bytes.len()))));
}

#[test]
fn long_reason_is_truncated_at_a_char_boundary() {
    // "a" then 3-byte chars: the byte limit lands inside a char.
    let reason = format!("a{}", "€".repeat(30_000));
    assert!(!reason.is_char_boundary(MAX_REASON));
    let bytes = frame(&Message::Error {
        reason: reason.clone(),
    });
    assert!(bytes.len() <= LEN_PREFIX + MAX_FRAME);
    let Ok(Some((Message::Error { reason: got }, used))) = decode(&bytes) else {
        panic!("truncated reason did not decode");
    };
    assert_eq!(used, bytes.len());
    assert!(reason.starts_with(&got));
    assert!(got.len() <= MAX_REASON && got.len() > MAX_REASON - 4);

    let exact = "x".repeat(MAX_REASON);
    let bytes = frame(&Message::Error {
        reason: exact.clone(),
    });
    assert_eq!(bytes.len(), LEN_PREFIX + MAX_FRAME);
    assert_eq!(
        decode(&bytes).unwrap().unwrap().0,
        Message::Error { reason: exact }
    );
}

#[test]
fn wrong_version_is_reported_before_kind() {
    assert_eq!(
        decode(&raw(9, KIND_HELLO, &[0, 0, 0, 1, 1])),
        Err(ProtocolError::UnsupportedVersion { got: 9 })
    );
    assert_eq!(
        decode(&raw(0, 200, &[])),
        Err(ProtocolError::UnsupportedVersion { got: 0 })
    );
}

#[test]
fn unknown_kind() {
    for kind in [0, 22, 255] {
        assert_eq!(
            decode(&raw(VERSION, kind, &[])),
            Err(ProtocolError::UnknownMessage { kind })
        );
    }
}

#[test]
fn handoff_frames_are_bounded() {
    let mut count = u16::try_from(MAX_BATCH + 1).unwrap().to_be_bytes().to_vec();
    count.resize(2 + 4 * (MAX_BATCH + 1), 0);
    assert_eq!(
        decode(&raw(VERSION, KIND_CONNECTIONS, &count)),
        Err(ProtocolError::Malformed("too many connections"))
    );
    assert_eq!(
        decode(&raw(VERSION, KIND_RECEIVED, &count[..2 + MAX_BATCH + 1])),
        Err(ProtocolError::Malformed("too many connections"))
    );
    assert_eq!(
        decode(&raw(VERSION, KIND_RECEIVED, &[0, 1, 2])),
        Err(ProtocolError::Malformed("bad received flag"))
    );
    let mut out = Vec::new();
    let too_many = Message::Connections {
        moved: vec![Moved::default(); MAX_BATCH + 1],
    };
    assert!(encode(&too_many, &mut out).is_err());
    let too_big = Message::Connections {
        moved: vec![Moved {
            socket: vec![],
            unread: vec![0; MAX_FRAME],
        }],
    };
    assert!(matches!(
        encode(&too_big, &mut out),
        Err(ProtocolError::TooLarge { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn truncated_payload_inside_a_complete_frame() {
    let cases: [(u8, &[u8], &str); 6] = [
        (KIND_HELLO, &[0, 0, 0, 1], "truncated hello"),
        (
            KIND_LISTENERS,
            &[0, 0, 0, 0, 0, 0, 0, 1, 0],
            "truncated listeners",
        ),
        (
            KIND_LISTENERS,
            &[0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
            "truncated socket",
        ),
        (
            KIND_LISTENERS,
            &[0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 4, 1, 2, 3],
            "truncated socket",
        ),
        (KIND_UPGRADED, &[0, 0, 0, 0, 0, 0, 0], "truncated upgraded"),
        (KIND_ERROR, &[0, 5, b'a', b'b'], "truncated string"),
    ];
    for (kind, payload, what) in cases {
        assert_eq!(
            decode(&raw(VERSION, kind, payload)),
            Err(ProtocolError::Malformed(what)),
            "kind {kind}"
        );
    }
}

#[test]
fn trailing_bytes() {
    let cases: [(u8, &[u8]); 4] = [
        (KIND_READY, &[0]),
        (
            KIND_HELLO,
            &[
                0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
                1, 0, 0, 0, 0, 9,
            ],
        ),
        (KIND_UPGRADED, &[0, 0, 0, 0, 0, 0, 0, 1, 0]),
        (KIND_ERROR, &[0, 1, b'a', b'b']),
    ];
    for (kind, payload) in cases {
        assert_eq!(
            decode(&raw(VERSION, kind, payload)),
            Err(ProtocolError::Malformed("trailing bytes")),
            "kind {kind}"
        );
    }
}

#[test]
fn a_version_1_hello_is_refused_by_version_not_misread() {
    // What a generation built against risefront's first protocol sends.
    assert_eq!(
        decode(&raw(1, KIND_HELLO, &[0, 0, 0, 9, 1])),
        Err(ProtocolError::UnsupportedVersion { got: 1 })
    );
}

#[test]
fn bad_role() {
    for role in [0, 3, 255] {
        assert_eq!(
            decode(&raw(VERSION, KIND_HELLO, &[0, 0, 0, 1, role])),
            Err(ProtocolError::Malformed("bad role"))
        );
    }
}

#[test]
fn invalid_utf8() {
    assert_eq!(
        decode(&raw(VERSION, KIND_ERROR, &[0, 2, 0xc3, 0x28])),
        Err(ProtocolError::Malformed("invalid utf-8"))
    );
}

#[test]
fn too_many_sockets_on_the_wire() {
    let mut payload = vec![0; 8];
    payload.extend_from_slice(&u16::try_from(MAX_SOCKETS + 1).unwrap().to_be_bytes());
    payload.extend(std::iter::repeat_n(0, 2 * (MAX_SOCKETS + 1)));
    assert_eq!(
        decode(&raw(VERSION, KIND_LISTENERS, &payload)),
        Err(ProtocolError::Malformed("too many sockets"))
    );
}

#[test]
fn frames_shorter_than_their_header() {
    let short = Err(ProtocolError::Malformed("frame shorter than its header"));
    assert_eq!(decode(&[0, 0, 0, 0]), short);
    assert_eq!(decode(&[0, 0, 0, 1]), short, "known from the prefix alone");
    assert_eq!(decode(&[0, 0, 0, 1, VERSION]), short);
}

#[test]
fn every_prefix_of_a_frame_is_incomplete() {
    for msg in every_variant() {
        let bytes = frame(&msg);
        for end in 0..bytes.len() {
            assert_eq!(decode(&bytes[..end]), Ok(None), "{msg:?} cut at {end}");
        }
    }
}

#[test]
fn decode_takes_only_the_first_frame() {
    let first = frame(&Message::Ready);
    let mut bytes = first.clone();
    bytes.extend(frame(&Message::Upgraded { generation: 2 }));
    assert_eq!(decode(&bytes), Ok(Some((Message::Ready, first.len()))));
}

#[test]
fn decoder_byte_at_a_time_matches_all_at_once() {
    let msgs = every_variant();
    let mut stream = Vec::new();
    for msg in &msgs {
        encode(msg, &mut stream).unwrap();
    }

    let mut whole = FrameDecoder::new();
    whole.push(&stream).unwrap();
    let mut at_once = Vec::new();
    drain(&mut whole, &mut at_once);
    assert!(whole.is_empty());

    let mut trickle = FrameDecoder::new();
    let mut one_by_one = Vec::new();
    for byte in &stream {
        trickle.push(std::slice::from_ref(byte)).unwrap();
        drain(&mut trickle, &mut one_by_one);
    }
    assert!(trickle.is_empty());

    assert_eq!(at_once, msgs);
    assert_eq!(one_by_one, msgs);
}

#[test]
fn decoder_reports_a_partial_frame() {
    let mut dec = FrameDecoder::new();
    assert!(dec.is_empty());
    let bytes = frame(&Message::Shutdown);
    dec.push(&bytes[..3]).unwrap();
    assert!(!dec.is_empty());
    assert_eq!(dec.next_message(), Ok(None));
    dec.push(&bytes[3..]).unwrap();
    assert!(!dec.is_empty(), "a whole frame not yet returned counts");
    assert_eq!(dec.next_message(), Ok(Some(Message::Shutdown)));
    assert!(dec.is_empty());
}

#[test]
fn decoder_refuses_to_buffer_beyond_its_bound() {
    let mut dec = FrameDecoder::new();
    assert_eq!(
        dec.push(&vec![0; DECODER_CAPACITY + 1]),
        Err(ProtocolError::TooLarge {
            len: DECODER_CAPACITY + 1
        })
    );
    assert!(dec.is_empty(), "a refused push buffers nothing");

    dec.push(&vec![0; DECODER_CAPACITY - 1]).unwrap();
    dec.push(&[0]).unwrap();
    assert_eq!(
        dec.push(&[0]),
        Err(ProtocolError::TooLarge {
            len: DECODER_CAPACITY + 1
        })
    );
}

#[test]
fn decoder_bound_admits_a_valid_stream_read_in_big_chunks() {
    // Worst case for the bound: a maximal frame missing its last byte is
    // pending when a maximal read arrives.
    let big = Message::Error {
        reason: "z".repeat(MAX_REASON),
    };
    let mut stream = Vec::new();
    for _ in 0..5 {
        encode(&big, &mut stream).unwrap();
        encode(&Message::Ready, &mut stream).unwrap();
    }
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    let (first, rest) = stream.split_at(LEN_PREFIX + MAX_FRAME - 1);
    dec.push(first).unwrap();
    drain(&mut dec, &mut got);
    for chunk in rest.chunks(LEN_PREFIX + MAX_FRAME) {
        dec.push(chunk).unwrap();
        drain(&mut dec, &mut got);
    }
    assert!(dec.is_empty());
    assert_eq!(got.len(), 10);
    assert!(
        got.chunks(2)
            .all(|pair| pair == [big.clone(), Message::Ready])
    );
}

#[test]
fn decoder_refuses_a_hostile_prefix_at_once_and_keeps_refusing() {
    let mut dec = FrameDecoder::new();
    dec.push(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    let err = Err(ProtocolError::TooLarge { len: 0xffff_ffff });
    assert_eq!(dec.next_message(), err);
    assert_eq!(dec.next_message(), err);
}

#[test]
fn error_messages_say_what_failed() {
    assert_eq!(
        ProtocolError::TooLarge { len: 0xffff_ffff }.to_string(),
        "control frame of 4294967295 bytes exceeds the 65536-byte limit"
    );
    assert_eq!(
        ProtocolError::UnsupportedVersion { got: 9 }.to_string(),
        "peer speaks risefront protocol version 9, this build speaks 8"
    );
    assert_eq!(
        ProtocolError::UnknownMessage { kind: 42 }.to_string(),
        "unknown control message kind 42"
    );
    assert_eq!(
        ProtocolError::Malformed("bad role").to_string(),
        "malformed control frame: bad role"
    );
}

#[test]
fn converts_to_invalid_data_io_error() {
    let err = io::Error::from(ProtocolError::UnsupportedVersion { got: 1 });
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(
        err.to_string(),
        "peer speaks risefront protocol version 1, this build speaks 8"
    );
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<ProtocolError>());
    assert_eq!(inner, Some(&ProtocolError::UnsupportedVersion { got: 1 }));
}

fn arb_message() -> impl Strategy<Value = Message> {
    let role = prop_oneof![Just(Role::Generation), Just(Role::Control)];
    prop_oneof![
        (any::<u32>(), role, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(pid, role, ready, drain, probation)| {
                Message::Hello {
                    pid,
                    role,
                    ready_timeout: Duration::from_millis(ready),
                    drain_timeout: Duration::from_millis(drain),
                    probation: Duration::from_millis(probation),
                    program: None,
                    addresses: Vec::new(),
                }
            }
        ),
        (any::<u64>(), vec(vec(any::<u8>(), 0..64), 0..8)).prop_map(|(generation, sockets)| {
            Message::Listeners {
                generation,
                sockets,
            }
        }),
        Just(Message::Ready),
        Just(Message::Superseded),
        Just(Message::Upgrade),
        any::<u64>().prop_map(|generation| Message::Upgraded { generation }),
        Just(Message::Shutdown),
        Just(Message::StopRequested),
        Just(Message::Stopping),
        Just(Message::Probation),
        Just(Message::Reinstated),
        Just(Message::SteppedAside),
        (any::<u32>(), "[a-z0-9-]{0,40}").prop_map(|(pid, pipe)| Message::HandoffTo { pid, pipe }),
        (any::<u32>(), "[a-z0-9-]{0,40}")
            .prop_map(|(pid, pipe)| Message::HandoffFrom { pid, pipe }),
        Just(Message::Ping),
        Just(Message::Pong),
        vec((vec(any::<u8>(), 0..64), vec(any::<u8>(), 0..256)), 0..8).prop_map(|moved| {
            Message::Connections {
                moved: moved
                    .into_iter()
                    .map(|(socket, unread)| Moved { socket, unread })
                    .collect(),
            }
        }),
        vec(any::<bool>(), 0..MAX_BATCH).prop_map(|taken| Message::Received { taken }),
        any::<String>().prop_map(|reason| Message::Busy { reason }),
        any::<String>().prop_map(|reason| Message::Error { reason }),
    ]
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in vec(any::<u8>(), 0..4096)) {
        if let Ok(Some((_, used))) = decode(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    /// Random bytes almost always die at the length check; this reaches
    /// the payload parsers.
    #[test]
    fn decode_never_panics_on_well_delimited_garbage(
        version in prop_oneof![Just(VERSION), any::<u8>()],
        kind in 0u8..22,
        payload in vec(any::<u8>(), 0..512),
    ) {
        let bytes = raw(version, kind, &payload);
        if let Ok(Some((_, used))) = decode(&bytes) {
            prop_assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn encode_then_decode_round_trips(msg in arb_message()) {
        let bytes = frame(&msg);
        prop_assert!(bytes.len() <= LEN_PREFIX + MAX_FRAME);
        prop_assert_eq!(decode(&bytes), Ok(Some((msg, bytes.len()))));
    }

    #[test]
    fn decoder_yields_the_same_messages_under_any_chunking(
        msgs in vec(arb_message(), 1..8),
        sizes in vec(1usize..64, 1..16),
    ) {
        let mut stream = Vec::new();
        for msg in &msgs {
            encode(msg, &mut stream).unwrap();
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        let mut rest = stream.as_slice();
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            dec.push(chunk).unwrap();
            drain(&mut dec, &mut got);
        }
        prop_assert!(dec.is_empty());
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn decoder_never_panics(chunks in vec(vec(any::<u8>(), 0..512), 0..8)) {
        let mut dec = FrameDecoder::new();
        for chunk in &chunks {
            if dec.push(chunk).is_err() {
                break;
            }
            while let Ok(Some(_)) = dec.next_message() {}
        }
    }
}

#[test]
fn a_program_round_trips_and_a_malformed_one_is_refused() {
    let program = Program {
        exe: "/srv/app/releases/v2/app".into(),
        args: vec!["127.0.0.1:8080".into(), "".into(), "--name=ü".into()],
        cwd: "/srv/app".into(),
    };
    let wire = program.to_wire().expect("fits");
    assert_eq!(Program::from_wire(&wire), Ok(program.clone()));
    // Every truncation is an error, never a panic or a shorter program.
    for cut in 0..wire.len() {
        assert!(Program::from_wire(&wire[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = wire.clone();
    longer.push(0);
    assert!(Program::from_wire(&longer).is_err());
}

#[test]
fn a_program_too_large_to_describe_is_left_out_of_the_hello() {
    let huge = Program {
        exe: "/app".into(),
        args: vec!["x".repeat(1000).into(); 40],
        cwd: "/".into(),
    };
    assert_eq!(huge.to_wire(), None);
    let hello = Message::Hello {
        pid: 1,
        role: Role::Generation,
        ready_timeout: Duration::ZERO,
        drain_timeout: Duration::ZERO,
        probation: Duration::ZERO,
        program: Some(huge),
        addresses: Vec::new(),
    };
    let Ok(Some((Message::Hello { program, .. }, _))) = decode(&frame(&hello)) else {
        panic!("the hello is still sent");
    };
    assert_eq!(program, None);
}

#[test]
fn this_process_describes_itself() {
    let program = Program::of_this_process().expect("this process");
    assert!(
        program.exe.is_absolute() && program.exe.is_file(),
        "{program:?}"
    );
    assert_eq!(program.cwd, std::env::current_dir().unwrap());
}

#[test]
fn the_previous_version_is_read_and_answered_in_its_own_layout() {
    use super::{OLDEST_VERSION, decode_from, encode_as};
    // Every message of the previous version is laid out alike in both.
    for msg in every_variant() {
        if matches!(msg, Message::ReExec { .. }) {
            continue;
        }
        let mut frame = Vec::new();
        encode_as(&msg, OLDEST_VERSION, &mut frame).expect("encodes");
        assert_eq!(frame[4], OLDEST_VERSION);
        let (read, _, version) = decode_from(&frame, OLDEST_VERSION)
            .expect("reads")
            .expect("whole");
        assert_eq!((read, version), (msg, OLDEST_VERSION));
    }
    // `ReExec` is new in this version: never written in the previous one, nor read from it.
    let reexec = Message::ReExec { program: None };
    assert_eq!(
        encode_as(&reexec, OLDEST_VERSION, &mut Vec::new()),
        Err(ProtocolError::UnknownMessage { kind: 21 })
    );
    assert_eq!(
        decode_from(&raw(OLDEST_VERSION, 21, &[0, 0]), OLDEST_VERSION),
        Err(ProtocolError::UnknownMessage { kind: 21 })
    );
    // Only where asked for, and never further back.
    let old = raw(OLDEST_VERSION, KIND_READY, &[]);
    assert_eq!(
        decode(&old),
        Err(ProtocolError::UnsupportedVersion {
            got: OLDEST_VERSION
        })
    );
    let older = raw(OLDEST_VERSION - 1, KIND_READY, &[]);
    assert_eq!(
        decode_from(&older, OLDEST_VERSION),
        Err(ProtocolError::UnsupportedVersion {
            got: OLDEST_VERSION - 1
        })
    );
    assert_eq!(
        encode_as(&Message::Ready, OLDEST_VERSION - 1, &mut Vec::new()),
        Err(ProtocolError::UnsupportedVersion {
            got: OLDEST_VERSION - 1
        })
    );
    assert!(encode_as(&Message::Ready, VERSION + 1, &mut Vec::new()).is_err());
}

#[test]
fn a_decoder_reading_one_version_back_says_which_it_read() {
    let mut decoder = FrameDecoder::reading_one_version_back();
    assert_eq!(decoder.version(), None);
    decoder
        .push(&raw(super::OLDEST_VERSION, KIND_READY, &[]))
        .expect("fits");
    assert_eq!(decoder.next_message(), Ok(Some(Message::Ready)));
    assert_eq!(decoder.version(), Some(super::OLDEST_VERSION));
    let mut strict = FrameDecoder::new();
    strict
        .push(&raw(super::OLDEST_VERSION, KIND_READY, &[]))
        .expect("fits");
    assert!(strict.next_message().is_err());
}
