//! `rae-agent --pcap`: the replay of capture files through the parsers and the registry core.
//!
//! The real lab capture (`rae-wire/tests/fixtures/lab.pcap`, the parsers' fixture) gives the
//! devices a user knows are in it; a synthetic LAN shows offline and gone transitions in
//! capture time; 100,000 random and mutated frames and a capture cut at every length show
//! nothing panics and every frame is counted once; every file variant gives the same result;
//! the same file gives the same output.

#[path = "replay_support/lan.rs"]
mod lan;
#[path = "../../rae-wire/tests/fixtures/pcap.rs"]
mod pcap_fixture;

use std::io::Cursor;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rae_agent::config::Config;
use rae_agent::registry::CoreConfig;
use rae_agent::replay::{
    replay, replay_from, CaptureFormat, CaptureWriter, OpenSession, PcapError, ReplayError,
    ReplayOptions, ReplayReport,
};
use rae_agent::wire::{Detail, DropKind, DropReason, Layer};
use rae_proto::{CloseReason, Liveness, Mac, Text};

const LAB_BRIDGE: Mac = Mac([0x06, 0xc7, 0x66, 0xac, 0x30, 0xaf]);
const UDHCPC: Mac = Mac([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);
const DHCLIENT: Mac = Mac([0x02, 0x00, 0x5e, 0x10, 0x00, 0x02]);
const STATIC: Mac = Mac([0x02, 0x00, 0x5e, 0x10, 0x00, 0x03]);

fn lab_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rae-wire/tests/fixtures/lab.pcap")
}

fn run(bytes: &[u8], options: &ReplayOptions) -> Result<(ReplayReport, String), ReplayError> {
    let mut out = Vec::new();
    let report = replay_from(
        Cursor::new(bytes),
        &CoreConfig::default(),
        options,
        &mut out,
    )?;
    Ok((
        report,
        String::from_utf8(out).expect("replay output is UTF-8"),
    ))
}

fn session(report: &ReplayReport, mac: Mac) -> &OpenSession {
    report
        .open_sessions
        .iter()
        .find(|s| s.record.mac == mac)
        .unwrap_or_else(|| panic!("no open session for {mac}; open: {:?}", macs(report)))
}

fn macs(report: &ReplayReport) -> Vec<Mac> {
    report.open_sessions.iter().map(|s| s.record.mac).collect()
}

/// Every frame read is counted exactly once.
fn assert_accounted(report: &ReplayReport) {
    assert_eq!(
        report.frames_read,
        report.snap_truncated + report.parsed + report.dropped(),
        "frames read vs snap-truncated + parsed + dropped: {report:?}"
    );
    assert_eq!(
        report.parsed,
        report.observations + report.without_observation,
        "parsed vs observations + frames without one"
    );
}

fn change_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .take_while(|line| {
            !line.starts_with("--- replay summary") && !line.starts_with("{\"summary\"")
        })
        .collect()
}

#[test]
fn lab_capture_replays_into_the_devices_of_the_lab() {
    let options = ReplayOptions {
        own_macs: vec![LAB_BRIDGE],
        ..ReplayOptions::default()
    };
    let bytes = std::fs::read(lab_path()).unwrap();
    let (report, output) = run(&bytes, &options).unwrap();

    assert_eq!(
        report.format,
        CaptureFormat::Pcap {
            big_endian: false,
            nanos: false
        }
    );
    assert_eq!(
        (report.frames_read, report.parsed, report.dropped()),
        (90, 66, 24)
    );
    assert_accounted(&report);
    let drops: Vec<_> = report.drops.iter().collect();
    assert_eq!(
        drops,
        vec![
            (DropReason::new(Layer::Ipv4, Detail::IpProtocol), 4),
            (DropReason::new(Layer::Ipv6, Detail::ExtensionHeader), 18),
            (DropReason::new(Layer::Icmpv6, Detail::IcmpType), 2),
        ]
    );
    assert_eq!(report.truncated_record, None);

    // The three DUTs, and not the RAE's own bridge.
    assert_eq!(macs(&report), vec![UDHCPC, DHCLIENT, STATIC]);
    assert_eq!((report.sessions_opened, report.changes.opened), (3, 3));
    let tv = &session(&report, UDHCPC).record;
    assert_eq!(tv.ipv4, Some(Ipv4Addr::new(198, 18, 0, 122)));
    assert_eq!(tv.hostname, Some(Text::from("tv-living")));
    assert_eq!(tv.dhcp_vendor_class, Some(Text::from("SmartTV/7.1 (OEM)")));
    assert_eq!(tv.dhcp_param_request_list, vec![1, 3, 6, 12, 15, 28, 42]);
    let slaac: Ipv6Addr = "2001:db8:1::5eff:fe10:1".parse().unwrap();
    assert!(tv.ipv6.contains(&slaac), "{:?}", tv.ipv6);
    assert_eq!(tv.reachability.state, Liveness::Online);

    // dhclient got .123 and released it at the end of the capture.
    let stb = &session(&report, DHCLIENT).record;
    assert_eq!(stb.hostname, Some(Text::from("stb-kitchen")));
    assert_eq!(stb.ipv4, None);
    assert!(output.contains("02:00:5e:10:00:02") && output.contains("ipv4=\"198.18.0.123\""));
    assert!(output.contains("ipv4=null (02:00:5e:10:00:02: DHCP RELEASE ciaddr 198.18.0.123"));

    // The static host's last claim is its untagged address.
    assert_eq!(
        session(&report, STATIC).record.ipv4,
        Some(Ipv4Addr::new(198, 18, 0, 3))
    );

    // Lines carry capture time (2026-11-26 on the lab machine's clock), kind, MAC, seq.
    let first = change_lines(&output)[0];
    assert!(
        first.starts_with("2026-11-26T07:41:18.737Z opened   02:00:5e:10:00:01 ")
            && first.contains(" seq=1 ")
            && first.contains("hostname=\"tv-living\""),
        "{first}"
    );
    assert!(output.contains("frames read:    90"), "{output}");
    assert!(output.contains("  ipv6.extension_header: 18"), "{output}");
    assert!(
        output.contains("sessions:       3 opened, 3 open at the end"),
        "{output}"
    );
}

#[test]
fn lab_capture_without_own_macs_shows_the_rae_and_checksums_can_be_verified() {
    let bytes = std::fs::read(lab_path()).unwrap();
    let (report, _) = run(&bytes, &ReplayOptions::default()).unwrap();
    assert_eq!(macs(&report), vec![UDHCPC, DHCLIENT, STATIC, LAB_BRIDGE]);
    assert_eq!(
        session(&report, LAB_BRIDGE).record.ipv4,
        Some(Ipv4Addr::new(198, 18, 0, 1))
    );

    let verify = ReplayOptions {
        verify_checksums: true,
        ..ReplayOptions::default()
    };
    let (report, _) = run(&bytes, &verify).unwrap();
    // Datagrams sent by local sockets over the veth pair carry only the pseudo-header sum.
    let bad_sum = DropReason::new(Layer::Udp, Detail::BadChecksum);
    assert_eq!(report.drops.get(bad_sum), 12);
    assert_eq!(report.parsed, 66 - 12);
    assert_accounted(&report);
}

/// The lab frames as a pcapng file: a section header, an interface with nanosecond
/// timestamps, enhanced packet blocks, a custom block to skip, and the last frame as a
/// simple packet block.
fn lab_as_pcapng(big_endian: bool) -> Vec<u8> {
    let put32 = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let put16 = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let block = |kind: u32, body: &[u8]| {
        let mut body = body.to_vec();
        body.resize(body.len().div_ceil(4) * 4, 0);
        let total = 12 + body.len() as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&put32(kind));
        out.extend_from_slice(&put32(total));
        out.extend_from_slice(&body);
        out.extend_from_slice(&put32(total));
        out
    };
    let mut shb = put32(0x1a2b_3c4d).to_vec();
    shb.extend_from_slice(&put16(1));
    shb.extend_from_slice(&put16(0));
    shb.extend_from_slice(&[0xff; 8]);
    let mut file = block(0x0a0d_0d0a, &shb);
    let mut idb = put16(1).to_vec();
    idb.extend_from_slice(&[0, 0]);
    idb.extend_from_slice(&put32(0));
    idb.extend_from_slice(&put16(9)); // if_tsresol: nanoseconds
    idb.extend_from_slice(&put16(1));
    idb.extend_from_slice(&[9, 0, 0, 0]);
    idb.extend_from_slice(&[0; 4]); // opt_endofopt
    file.extend(block(1, &idb));
    file.extend(block(0x0000_0bad, b"custom block, skipped"));
    let lab = std::fs::read(lab_path()).unwrap();
    let records = classic_records(&lab);
    for (n, (at_ns, frame)) in records.iter().enumerate() {
        if n + 1 == records.len() {
            let mut spb = put32(frame.len() as u32).to_vec();
            spb.extend_from_slice(frame);
            file.extend(block(3, &spb));
            continue;
        }
        let mut epb = put32(0).to_vec();
        epb.extend_from_slice(&put32((at_ns >> 32) as u32));
        epb.extend_from_slice(&put32(*at_ns as u32));
        epb.extend_from_slice(&put32(frame.len() as u32));
        epb.extend_from_slice(&put32(frame.len() as u32));
        epb.extend_from_slice(frame);
        file.extend(block(6, &epb));
    }
    file
}

/// (timestamp ns, frame) of each record of a little-endian microsecond pcap.
fn classic_records(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let mut at = 24;
    let mut out = Vec::new();
    while at < bytes.len() {
        let ns = u64::from(u32_at(at)) * 1_000_000_000 + u64::from(u32_at(at + 4)) * 1_000;
        let len = u32_at(at + 8) as usize;
        out.push((ns, bytes[at + 16..at + 16 + len].to_vec()));
        at += 16 + len;
    }
    out
}

fn write_classic(records: &[(u64, Vec<u8>)], big_endian: bool, nanos: bool) -> Vec<u8> {
    let mut writer = CaptureWriter::new(Vec::new(), big_endian, nanos, 262_144).unwrap();
    for (at_ns, frame) in records {
        writer
            .write_packet(*at_ns, frame, frame.len() as u32)
            .unwrap();
    }
    writer.into_inner()
}

#[test]
fn every_file_variant_replays_the_same() {
    let lab = std::fs::read(lab_path()).unwrap();
    let mut records = classic_records(&lab);
    // pcapng's last frame goes in a simple packet block, which has no timestamp: the reader
    // gives it the one before.
    let n = records.len();
    records[n - 1].0 = records[n - 2].0;
    let (expected, expected_out) = run(
        &write_classic(&records, false, false),
        &ReplayOptions::default(),
    )
    .unwrap();
    let frames: Vec<Vec<u8>> = records.iter().map(|(_, f)| f.clone()).collect();
    assert_eq!(frames, pcap_fixture::lab_frames());
    let mut variants = vec![
        (CaptureFormat::Pcapng, lab_as_pcapng(false)),
        (CaptureFormat::Pcapng, lab_as_pcapng(true)),
    ];
    for big_endian in [false, true] {
        for nanos in [false, true] {
            variants.push((
                CaptureFormat::Pcap { big_endian, nanos },
                write_classic(&records, big_endian, nanos),
            ));
        }
    }
    for (format, bytes) in variants {
        let (report, out) =
            run(&bytes, &ReplayOptions::default()).unwrap_or_else(|e| panic!("{format:?}: {e:?}"));
        assert_eq!(report.format, format);
        assert_eq!(report.frames_read, expected.frames_read, "{format:?}");
        assert_eq!(report.drops, expected.drops, "{format:?}");
        assert_eq!(report.open_sessions, expected.open_sessions, "{format:?}");
        assert_eq!(
            change_lines(&out),
            change_lines(&expected_out),
            "{format:?}"
        );
    }
}

#[test]
fn frames_cut_by_the_snap_length_are_counted_not_parsed() {
    let records = classic_records(&std::fs::read(lab_path()).unwrap());
    let mut writer = CaptureWriter::new(Vec::new(), false, false, 64).unwrap();
    for (at_ns, frame) in &records {
        let kept = &frame[..frame.len().min(64)];
        writer
            .write_packet(*at_ns, kept, frame.len() as u32)
            .unwrap();
    }
    let (report, output) = run(&writer.into_inner(), &ReplayOptions::default()).unwrap();
    let long = records.iter().filter(|(_, f)| f.len() > 64).count() as u64;
    assert!(long > 30, "the lab has DHCP and ND frames over 64 bytes");
    assert_eq!(report.snap_truncated, long);
    assert_eq!(report.frames_read, 90);
    assert_accounted(&report);
    assert!(
        output.contains(&format!("snap_truncated: {long}")),
        "{output}"
    );
}

#[test]
fn bad_files_are_errors_that_name_the_offset() {
    let lab = std::fs::read(lab_path()).unwrap();
    let err = |bytes: &[u8]| match run(bytes, &ReplayOptions::default()) {
        Err(ReplayError::Capture { source, .. }) => source,
        other => panic!("expected a capture error, got {other:?}"),
    };

    let e = err(b"GIF89a this is not a capture file");
    assert!(
        matches!(e, PcapError::BadMagic { magic: 0x4749_4638 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("not a pcap or pcapng file"), "{e}");

    assert!(matches!(
        err(b""),
        PcapError::TruncatedHeader { len: 0, .. }
    ));
    assert!(matches!(
        err(&lab[..23]),
        PcapError::TruncatedHeader {
            len: 23,
            needed: 24
        }
    ));

    let mut linux_sll = lab.clone();
    linux_sll[20..24].copy_from_slice(&113u32.to_le_bytes());
    let e = err(&linux_sll);
    assert!(
        matches!(
            e,
            PcapError::LinkType {
                offset: 20,
                link_type: 113
            }
        ),
        "{e:?}"
    );

    // The third record's length field claims 16 MiB.
    let third = 24 + 16 + records_len(&lab, 0) + 16 + records_len(&lab, 1);
    let mut corrupt = lab.clone();
    corrupt[third + 8..third + 12].copy_from_slice(&(16u32 << 20).to_le_bytes());
    let e = err(&corrupt);
    assert!(
        matches!(e, PcapError::RecordTooLarge { offset, .. } if offset == third as u64),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&format!("record at byte {third}")),
        "{e}"
    );

    let path = std::env::temp_dir().join("rae-replay-test-missing.pcap");
    let config = config();
    let missing = replay(&path, &config, &ReplayOptions::default(), &mut Vec::new());
    assert!(
        matches!(missing, Err(ReplayError::Open { .. })),
        "{missing:?}"
    );
}

fn records_len(bytes: &[u8], index: usize) -> usize {
    classic_records(bytes)[index].1.len()
}

#[test]
fn a_capture_cut_anywhere_replays_what_is_complete_and_reports_the_cut() {
    let lab = std::fs::read(lab_path()).unwrap();
    let records = classic_records(&lab);
    let mut boundaries = vec![24usize];
    for (_, frame) in &records {
        boundaries.push(boundaries.last().unwrap() + 16 + frame.len());
    }
    assert_eq!(*boundaries.last().unwrap(), lab.len());
    let last_start = boundaries[boundaries.len() - 2];
    // Every length inside the last record, and every 7th byte across the file.
    let cuts: Vec<usize> = (last_start..lab.len())
        .chain((0..lab.len()).step_by(7))
        .collect();
    for cut in cuts {
        let result = run(&lab[..cut], &ReplayOptions::default());
        if cut < 24 {
            assert!(
                matches!(
                    result,
                    Err(ReplayError::Capture {
                        source: PcapError::TruncatedHeader { .. },
                        ..
                    })
                ),
                "cut {cut}: {result:?}"
            );
            continue;
        }
        let (report, output) = result.unwrap_or_else(|e| panic!("cut at {cut}: {e:?}"));
        let complete = boundaries.iter().filter(|b| **b <= cut).count() as u64 - 1;
        assert_eq!(report.frames_read, complete, "cut at {cut}");
        assert_accounted(&report);
        match boundaries.iter().rposition(|b| *b <= cut) {
            Some(i) if boundaries[i] == cut => {
                assert_eq!(report.truncated_record, None, "cut {cut}")
            }
            Some(i) => {
                let t = report
                    .truncated_record
                    .unwrap_or_else(|| panic!("cut {cut} not reported"));
                assert_eq!(t.offset, boundaries[i] as u64);
                assert_eq!(t.present, (cut - boundaries[i]) as u64);
                assert!(
                    output.contains(&format!("truncated_record: 1 (record at byte {}", t.offset))
                );
            }
            None => unreachable!(),
        }
    }

    // pcapng cut inside its last block, too.
    let ng = lab_as_pcapng(false);
    let (report, _) = run(&ng[..ng.len() - 3], &ReplayOptions::default()).unwrap();
    assert_eq!(report.frames_read, 89);
    assert!(report.truncated_record.is_some());
}

/// 100,000 frames: random bytes, valid Ethernet headers over random tails, and real and
/// synthetic frames with bytes flipped, cut or appended; some records cut by a snap length;
/// timestamps that jump forward by hours and back by minutes.
#[test]
fn random_and_mutated_frames_never_panic_and_are_all_counted() {
    const FRAMES: u64 = 100_000;
    let mut rng = lan::Rng(0x5eed);
    let mut seeds: Vec<Vec<u8>> = pcap_fixture::lab_frames();
    for i in 0..8 {
        seeds.extend(lan::join(i));
        seeds.push(lan::icmp_echo(i));
    }
    let ethertypes = [0x0806u16, 0x0800, 0x86dd, 0x8100, 0x88a8, 0x0001];
    let mut writer = CaptureWriter::new(Vec::new(), false, true, 262_144).unwrap();
    let mut at_ns = lan::START_NS;
    let mut snap_cut = 0u64;
    for n in 0..FRAMES {
        let mut frame = match rng.below(4) {
            0 => (0..rng.below(120)).map(|_| rng.next() as u8).collect(),
            1 => {
                let mut f = lan::ethernet(
                    lan::device_mac(rng.below(16) as u32),
                    lan::device_mac(rng.below(16) as u32),
                    ethertypes[rng.below(ethertypes.len() as u64) as usize],
                    &[],
                );
                f.extend((0..rng.below(400)).map(|_| rng.next() as u8));
                f
            }
            _ => {
                let mut f = seeds[rng.below(seeds.len() as u64) as usize].clone();
                for _ in 0..1 + rng.below(4) {
                    match rng.below(3) {
                        0 if !f.is_empty() => {
                            let at = rng.below(f.len() as u64) as usize;
                            f[at] ^= 1 << rng.below(8);
                        }
                        1 => f.truncate(rng.below(f.len() as u64 + 1) as usize),
                        _ => f.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
                    }
                }
                f
            }
        };
        let original = frame.len() as u32;
        if rng.below(50) == 0 && frame.len() > 20 {
            frame.truncate(20);
            snap_cut += 1;
        }
        at_ns = match n % 25_000 {
            24_999 => at_ns + 3_600_000_000_000,
            12_345 => at_ns - 120_000_000_000,
            _ => at_ns + 10_000 + rng.below(20_000),
        };
        writer.write_packet(at_ns, &frame, original).unwrap();
    }
    let capture = writer.into_inner();
    for verify_checksums in [false, true] {
        let options = ReplayOptions {
            quiet: true,
            verify_checksums,
            ..ReplayOptions::default()
        };
        let (report, summary) = run(&capture, &options).unwrap();
        assert_eq!(report.frames_read, FRAMES);
        assert_accounted(&report);
        assert_eq!(report.snap_truncated, snap_cut);
        assert!(snap_cut > FRAMES / 100);
        assert!(
            report.parsed > FRAMES / 20,
            "too few frames survived: {report:?}"
        );
        for kind in DropKind::ALL {
            let n: u64 = Layer::ALL
                .iter()
                .map(|l| report.drops.of_kind(*l, kind))
                .sum();
            assert!(n > 0, "no {kind} drops: {:?}", report.drops);
        }
        let reasons = report.drops.iter().count();
        assert!(
            reasons >= 15,
            "only {reasons} drop reasons: {:?}",
            report.drops
        );
        for (reason, n) in report.drops.iter() {
            let label = format!("  {}.{}: {n}", reason.layer, reason.detail);
            assert!(
                summary.contains(&label),
                "summary lacks {label}:\n{summary}"
            );
        }
        // The hour-long gaps close every session that was open.
        assert!(
            report.changes.closed > 0 && report.sessions_opened > report.open_sessions.len() as u64
        );
        assert_eq!(report.truncated_record, None);
    }
}

#[test]
fn a_synthetic_lan_goes_offline_and_closes_in_capture_time() {
    const DEVICES: u32 = 40;
    let mut writer = CaptureWriter::new(Vec::new(), false, false, 262_144).unwrap();
    lan::generate(DEVICES, 900, 100, 7, |at, frame| {
        writer.write_packet(at, frame, frame.len() as u32).unwrap()
    });
    let options = ReplayOptions {
        own_macs: vec![Mac(lan::RAE_MAC)],
        json: true,
        ..ReplayOptions::default()
    };
    let (report, output) = run(&writer.into_inner(), &options).unwrap();
    assert_accounted(&report);
    let leavers: Vec<u32> = (0..DEVICES).filter(|i| lan::leaves(*i)).collect();
    assert_eq!(leavers, vec![5, 38]);
    assert_eq!(report.sessions_opened, u64::from(DEVICES));
    assert_eq!(report.open_sessions.len(), DEVICES as usize - leavers.len());
    for i in 0..DEVICES {
        let mac = Mac(lan::device_mac(i));
        let closed = output.lines().find(|l| {
            l.contains("\"change\":\"closed\"") && l.contains(&format!("\"mac\":\"{mac}\""))
        });
        if lan::leaves(i) {
            // Last heard in round 99; gone_after is 600 s.
            let line = closed.unwrap_or_else(|| panic!("{mac} left but was not closed"));
            let gone_at = (lan::START_NS / 1_000_000) as i64 + 99_000 + 600_000;
            assert!(
                line.contains(&format!("\"reason\":\"{}\"", CloseReason::Gone)),
                "{line}"
            );
            let at_ms: i64 = line["{\"at_ms\":".len()..]
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!((gone_at..gone_at + 1_000).contains(&at_ms), "{line}");
            let offline = output.lines().find(|l| {
                l.contains(&format!("\"mac\":\"{mac}\"")) && l.contains("\"state\":\"offline\"")
            });
            assert!(offline.is_some(), "{mac} never went offline");
            continue;
        }
        assert!(closed.is_none(), "{mac} closed: {closed:?}");
        let record = &session(&report, mac).record;
        assert_eq!(record.ipv4, Some(lan::device_v4(i)));
        assert_eq!(record.hostname, Some(Text::from(lan::hostname(i))));
        assert!(record.ipv6.contains(&lan::device_v6(i)));
        assert_eq!(record.reachability.state, Liveness::Online);
    }
    // Every open session got periodic Snapshots over the quarter hour.
    assert!(
        report.changes.snapshot >= 2 * (u64::from(DEVICES) - 2),
        "{:?}",
        report.changes
    );
    let summary = output.lines().last().unwrap();
    assert!(
        summary.starts_with("{\"summary\":{\"format\":\"pcap\""),
        "{summary}"
    );
}

fn config() -> Config {
    Config::parse(
        "[agent]\nserial = \"rae-test\"\nlan_interface = \"lan0\"\n[mqtt]\nhost = \"localhost\"\n",
    )
    .unwrap()
}

#[test]
fn the_same_file_replays_to_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lan.pcap");
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut writer = CaptureWriter::new(file, true, true, 262_144).unwrap();
    lan::generate(12, 400, 50, 11, |at, frame| {
        writer.write_packet(at, frame, frame.len() as u32).unwrap()
    });
    drop(writer);
    let config = config();
    for json in [false, true] {
        let options = ReplayOptions {
            json,
            ..ReplayOptions::default()
        };
        let mut first = Vec::new();
        let a = replay(&path, &config, &options, &mut first).unwrap();
        let mut second = Vec::new();
        let b = replay(&path, &config, &options, &mut second).unwrap();
        let (first, second) = (
            String::from_utf8(first).unwrap(),
            String::from_utf8(second).unwrap(),
        );
        assert!(a.changes.total() > 100);
        assert_eq!(change_lines(&first).len() as u64, a.changes.total());
        assert_eq!(change_lines(&first), change_lines(&second));
        let timeless = |r: &ReplayReport| ReplayReport {
            elapsed: std::time::Duration::ZERO,
            ..r.clone()
        };
        assert_eq!(timeless(&a), timeless(&b));
    }
}
