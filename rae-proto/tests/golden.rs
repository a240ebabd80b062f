//! Golden byte vectors: the bytes of fixed values, written once into `tests/vectors/v1/` and
//! never changed. Every future decoder must still read them, and this build must still write
//! them byte for byte.
//!
//! To add a vector: add a case below and run
//! `RAE_PROTO_WRITE_VECTORS=1 cargo test -p rae-proto --test golden`, which creates the files
//! that do not exist yet and never touches existing ones. Without the variable a missing file
//! fails the test.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rae_proto::{
    AgentState, Availability, CloseReason, CommandError, CommandReply, CommandRequest,
    DeviceRecord, DeviceRef, DialApp, DialAppState, Envelope, ErrorKind, Event, Evidence, Field,
    Inventory, Liveness, Mac, MdnsService, Pong, Reachability, ReplyBody, Serial, SessionId,
    SessionSeq, Status, Text, TxtEntry, UpnpDescription,
};

/// A value of any payload kind. The file name's first word says which decoder reads it.
#[derive(Debug, PartialEq)]
enum Value {
    Envelope(Envelope),
    Inventory(Inventory),
    Status(Status),
    Request(CommandRequest),
    Reply(CommandReply),
}

impl Value {
    fn encode(&self) -> Vec<u8> {
        match self {
            Value::Envelope(v) => v.encode(),
            Value::Inventory(v) => v.encode(),
            Value::Status(v) => v.encode(),
            Value::Request(v) => v.encode(),
            Value::Reply(v) => v.encode(),
        }
        .expect("golden values encode")
    }

    /// Decodes `bytes` as the same kind of payload as `self`.
    fn decode_like(&self, bytes: &[u8]) -> Result<Value, rae_proto::DecodeError> {
        Ok(match self {
            Value::Envelope(_) => Value::Envelope(Envelope::decode(bytes)?),
            Value::Inventory(_) => Value::Inventory(Inventory::decode(bytes)?),
            Value::Status(_) => Value::Status(Status::decode(bytes)?),
            Value::Request(_) => Value::Request(CommandRequest::decode(bytes)?),
            Value::Reply(_) => Value::Reply(CommandReply::decode(bytes)?),
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Envelope(_) => "envelope",
            Value::Inventory(_) => "inventory",
            Value::Status(_) => "status",
            Value::Request(_) => "request",
            Value::Reply(_) => "reply",
        }
    }
}

fn serial() -> Serial {
    Serial::new("RAE-lab1_0042").unwrap()
}

fn session() -> SessionId {
    SessionId::parse("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap()
}

fn other_session() -> SessionId {
    SessionId::parse("0b5a9f3e-7d2c-4e1a-9c3b-52e8d1f0a7b6").unwrap()
}

const MAC: Mac = Mac([0x00, 0x1a, 0x11, 0x3c, 0x5d, 0x7e]);
const AT: i64 = 1_732_600_000_123;

fn envelope(seq: u64, event: Event) -> Value {
    Value::Envelope(Envelope {
        serial: serial(),
        session: session(),
        seq,
        at_ms: AT,
        event,
    })
}

fn full_record() -> DeviceRecord {
    DeviceRecord {
        mac: MAC,
        ipv4: Some(Ipv4Addr::new(198, 18, 0, 23)),
        ipv6: vec![
            "2001:db8::21a:11ff:fe3c:5d7e".parse::<Ipv6Addr>().unwrap(),
            "fe80::21a:11ff:fe3c:5d7e".parse::<Ipv6Addr>().unwrap(),
        ],
        dhcp_client_id: Some(vec![0x01, 0x00, 0x1a, 0x11, 0x3c, 0x5d, 0x7e]),
        hostname: Some(Text::new(b"Wohnzimmer-T\xe9l\xe9".to_vec())),
        vendor: Some("Google, Inc.".into()),
        locally_administered: false,
        dhcp_vendor_class: Some(Text::from("android-dhcp-12")),
        dhcp_param_request_list: vec![1, 3, 6, 15, 26, 28, 51, 58, 59, 43],
        mdns_services: vec![MdnsService {
            service_type: "_googlecast._tcp.local.".into(),
            instance: "Chromecast-4f1c".into(),
            port: 8009,
            txt: vec![
                TxtEntry {
                    key: "md".into(),
                    value: Some(Text::from("Chromecast Ultra")),
                },
                TxtEntry {
                    key: "fn".into(),
                    value: Some(Text::from("Living Room")),
                },
                TxtEntry {
                    key: "nf".into(),
                    value: None,
                },
            ],
        }],
        upnp: Some(UpnpDescription {
            friendly_name: Some("Living Room".into()),
            manufacturer: Some("Google Inc.".into()),
            model_name: Some("Eureka Dongle".into()),
            model_number: Some("NC2-6A5".into()),
            serial_number: Some("7A1B2C3D".into()),
            udn: Some("uuid:3e1cc7c3-f9b5-4f3b-9e3b-6d1e2f3a4b5c".into()),
        }),
        dial_apps: vec![
            DialApp {
                name: "Netflix".into(),
                state: DialAppState::Running,
                additional_data: Some("<esn>NFCDCH-02-0123456789ABCDEF</esn>".into()),
            },
            DialApp {
                name: "YouTube".into(),
                state: DialAppState::Installable("https://store.example/yt".into()),
                additional_data: None,
            },
            DialApp {
                name: "Vendor".into(),
                state: DialAppState::Other("suspended".into()),
                additional_data: None,
            },
        ],
        esn: Some("NFCDCH-02-0123456789ABCDEF".into()),
        reachability: Reachability {
            state: Liveness::Online,
            evidence: Evidence::ArpReply,
            rtt_us: Some(1_250),
        },
        availability: Availability::InTest,
        first_seen_ms: 1_732_599_000_000,
        last_seen_ms: 1_732_600_000_000,
    }
}

fn cases() -> Vec<(&'static str, Value)> {
    let minimal = DeviceRecord::new(
        Mac([0x02, 0x42, 0xc6, 0x12, 0x00, 0x05]),
        Evidence::DhcpRequest,
        AT,
    );
    let inventory = Inventory {
        serial: serial(),
        at_ms: AT,
        sessions: vec![
            SessionSeq {
                session: session(),
                seq: 17,
            },
            SessionSeq {
                session: other_session(),
                seq: 300,
            },
        ],
    };
    let status = |state| Status {
        serial: serial(),
        state,
        agent_version: "0.1.0".into(),
        at_ms: AT,
    };
    let by_session = DeviceRef::Session(session());
    let by_mac = DeviceRef::Mac(MAC);
    vec![
        (
            "envelope-snapshot-full",
            envelope(
                1,
                Event::Snapshot {
                    record: Box::new(full_record()),
                },
            ),
        ),
        (
            "envelope-snapshot-minimal",
            envelope(
                1,
                Event::Snapshot {
                    record: Box::new(minimal),
                },
            ),
        ),
        (
            "envelope-delta",
            envelope(
                2,
                Event::Delta {
                    fields: vec![
                        Field::Ipv4(Some(Ipv4Addr::new(198, 18, 0, 24))),
                        Field::Hostname(Some(Text::new(b"caf\xe9-tv".to_vec()))),
                        Field::Reachability(Reachability {
                            state: Liveness::Offline,
                            evidence: Evidence::ProbeMissed { count: 3 },
                            rtt_us: None,
                        }),
                        Field::Availability(Availability::Maintenance),
                        Field::LastSeen(AT - 1),
                    ],
                },
            ),
        ),
        (
            "envelope-delta-empty",
            envelope(3, Event::Delta { fields: vec![] }),
        ),
        (
            "envelope-closed-gone",
            envelope(
                4,
                Event::Closed {
                    reason: CloseReason::Gone,
                },
            ),
        ),
        (
            "envelope-closed-forgotten",
            envelope(
                5,
                Event::Closed {
                    reason: CloseReason::Forgotten,
                },
            ),
        ),
        ("inventory", Value::Inventory(inventory.clone())),
        (
            "inventory-empty",
            Value::Inventory(Inventory {
                serial: serial(),
                at_ms: AT,
                sessions: vec![],
            }),
        ),
        ("status-online", Value::Status(status(AgentState::Online))),
        ("status-offline", Value::Status(status(AgentState::Offline))),
        (
            "request-set-availability",
            Value::Request(CommandRequest::SetAvailability {
                device: by_session,
                availability: Availability::InTest,
            }),
        ),
        (
            "request-set-esn",
            Value::Request(CommandRequest::SetEsn {
                device: by_mac,
                esn: Some("NFCDCH-02-0123456789ABCDEF".into()),
            }),
        ),
        (
            "request-set-esn-clear",
            Value::Request(CommandRequest::SetEsn {
                device: by_session,
                esn: None,
            }),
        ),
        (
            "request-resync-one",
            Value::Request(CommandRequest::Resync {
                device: Some(by_mac),
            }),
        ),
        (
            "request-resync-all",
            Value::Request(CommandRequest::Resync { device: None }),
        ),
        (
            "request-forget",
            Value::Request(CommandRequest::Forget { device: by_session }),
        ),
        (
            "request-inventory",
            Value::Request(CommandRequest::Inventory),
        ),
        (
            "reply-ok-done",
            Value::Reply(CommandReply::Ok(ReplyBody::Done)),
        ),
        (
            "reply-ok-device",
            Value::Reply(CommandReply::Ok(ReplyBody::Device(SessionSeq {
                session: session(),
                seq: 18,
            }))),
        ),
        (
            "reply-ok-sessions",
            Value::Reply(CommandReply::Ok(ReplyBody::Sessions(vec![
                SessionSeq {
                    session: session(),
                    seq: 19,
                },
                SessionSeq {
                    session: other_session(),
                    seq: 301,
                },
            ]))),
        ),
        (
            "reply-ok-inventory",
            Value::Reply(CommandReply::Ok(ReplyBody::Inventory(inventory))),
        ),
        (
            "reply-error-unknown-device",
            Value::Reply(CommandReply::unknown_device(&by_mac)),
        ),
        (
            "reply-error-bad-request",
            Value::Reply(CommandReply::bad_request(
                "availability must be one of available, in_test, maintenance",
            )),
        ),
        (
            "reply-error-internal",
            Value::Reply(CommandReply::Error(CommandError {
                kind: ErrorKind::Internal,
                message: "internal error on the RAE".into(),
            })),
        ),
        ("request-ping", Value::Request(CommandRequest::Ping)),
        (
            "reply-ok-pong",
            Value::Reply(CommandReply::Ok(ReplyBody::Pong(Pong {
                version: "0.1.0".into(),
                uptime_secs: 86_400,
                sessions_open: 37,
            }))),
        ),
        (
            "reply-error-unknown-command",
            Value::Reply(CommandReply::unknown_command("reboot")),
        ),
        (
            "reply-error-rate-limited",
            Value::Reply(CommandReply::rate_limited()),
        ),
    ]
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v1")
}

fn to_hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
                + "\n"
        })
        .collect()
}

/// Creates `path` with `contents` unless it exists; an existing vector is never rewritten.
fn write_if_missing(path: &Path, contents: &[u8]) {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(contents).unwrap();
            eprintln!("wrote new vector {}", path.display());
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("cannot create {}: {e}", path.display()),
    }
}

#[test]
fn golden_vectors_encode_and_decode_exactly() {
    let dir = vectors_dir();
    let write = std::env::var_os("RAE_PROTO_WRITE_VECTORS").is_some_and(|v| v == "1");
    if write {
        fs::create_dir_all(&dir).unwrap();
    }
    let mut failures = Vec::new();
    for (name, value) in cases() {
        assert!(
            name.starts_with(value.kind()),
            "case {name} must start with {}",
            value.kind()
        );
        let encoded = value.encode();
        let bin = dir.join(format!("{name}.bin"));
        let hex = dir.join(format!("{name}.hex"));
        if write {
            write_if_missing(&bin, &encoded);
            write_if_missing(&hex, to_hex(&encoded).as_bytes());
        }
        let stored = match fs::read(&bin) {
            Ok(stored) => stored,
            Err(e) => {
                failures.push(format!(
                    "{}: {e}; create it with RAE_PROTO_WRITE_VECTORS=1 cargo test -p rae-proto --test golden",
                    bin.display()
                ));
                continue;
            }
        };
        if stored != encoded {
            failures.push(format!(
                "{name}: this build encodes\n{}but the vector holds\n{}",
                to_hex(&encoded),
                to_hex(&stored)
            ));
        }
        match value.decode_like(&stored) {
            Ok(decoded) if decoded == value => {}
            Ok(decoded) => failures.push(format!(
                "{name}: decodes to {decoded:?}, expected {value:?}"
            )),
            Err(e) => failures.push(format!("{name}: does not decode: {e}")),
        }
        match fs::read_to_string(&hex) {
            Ok(text) if text == to_hex(&stored) => {}
            Ok(_) => failures.push(format!("{}: does not match {name}.bin", hex.display())),
            Err(e) => failures.push(format!("{}: {e}", hex.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "golden vectors:\n{}",
        failures.join("\n")
    );
}

/// A vector file without a case would no longer be checked: every file must belong to a case.
#[test]
fn every_vector_file_has_a_case() {
    let names: Vec<String> = cases().iter().map(|(name, _)| name.to_string()).collect();
    let dir = vectors_dir();
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let ext = path
            .extension()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        assert!(
            matches!(ext, "bin" | "hex") && names.contains(&stem),
            "{} belongs to no golden case",
            path.display()
        );
    }
}

#[test]
fn the_full_snapshot_sets_every_field() {
    let record = full_record();
    let minimal = DeviceRecord::new(
        Mac([0x02, 0x42, 0xc6, 0x12, 0x00, 0x05]),
        Evidence::DhcpRequest,
        AT,
    );
    // Every field of the full record differs from a fresh record's: each one is exercised.
    assert_eq!(minimal.diff(&record).len(), rae_proto::FieldId::COUNT);
}
