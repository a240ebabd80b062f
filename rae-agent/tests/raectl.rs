//! `raectl`'s read commands run for real against a registry database the real store wrote:
//! what an operator sees in the tables, the JSON, the errors and the exit codes, and that the
//! database is never changed (also on a read-only mount).

mod store_common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rae_agent::registry::{Cause, Change};
use rae_agent::store::{Store, StoreOptions};
use rae_proto::{Field, Text};
use serde_json::Value;
use store_common::{ip, mac, serial, Device};

const WAIT: Duration = Duration::from_secs(20);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn commit(store: &mut Store, changes: &[Change], at_ms: i64) {
    store
        .commit(changes, &serial(), at_ms)
        .expect("the store commits the fixture");
}

/// The registry an operator would find: three devices (one closed), status from a running
/// daemon. Returns the store still open, as while the daemon runs.
struct Registry {
    _dir: tempfile::TempDir,
    state_dir: PathBuf,
    db: PathBuf,
    tv: Device,
    printer: Device,
    phone: Device,
}

impl Registry {
    fn build() -> (Registry, Store) {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().to_path_buf();
        let db = state_dir.join("registry.db");
        let mut store = Store::open(&db, StoreOptions::default()).expect("store opens");
        let t0 = now_ms() - 300_000;

        let (mut tv, opened) = Device::open(1, mac(1), t0);
        let tv_update = tv.update(
            vec![
                Field::Ipv4(Some(ip(10))),
                Field::Hostname(Some(Text::from("living-room-tv"))),
                Field::Vendor(Some("Example Displays".into())),
                Field::Esn(Some("NFX-0001".into())),
            ],
            t0 + 1_000,
        );
        commit(&mut store, &[opened, tv_update], t0 + 1_000);

        let (mut printer, opened) = Device::open(2, mac(2), t0 + 2_000);
        let update = printer.update(vec![Field::Ipv4(Some(ip(20)))], t0 + 3_000);
        let closed = printer.close(t0 + 200_000);
        commit(&mut store, &[opened, update], t0 + 3_000);
        commit(&mut store, &[closed], t0 + 200_000);

        let (phone, opened) = Device::open(3, mac(3), t0 + 4_000);
        commit(&mut store, &[opened], t0 + 4_000);
        let seen = tv.seen(now_ms() - 12_000);
        commit(&mut store, &[seen], now_ms());

        let status = [
            ("agent.version", "0.1.0"),
            ("agent.interface", "lan0"),
            ("capture.frames", "4242"),
            ("capture.kernel_drops", "3"),
            ("parse.drop.truncated", "17"),
            ("broker.connected", "yes"),
            ("publish.acked", "99"),
            ("probe.arp_sent", "12"),
            ("zz.experimental", "on"),
        ];
        let entries: Vec<(String, String)> = status
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        store.write_status(&entries, now_ms()).unwrap();
        let registry = Registry {
            _dir: dir,
            state_dir,
            db,
            tv,
            printer,
            phone,
        };
        (registry, store)
    }

    /// The registry with the daemon stopped: the store closed, its WAL checkpointed.
    fn stopped() -> Registry {
        let (registry, store) = Registry::build();
        drop(store);
        registry
    }

    fn raectl(&self, args: &[&str]) -> Output {
        raectl_at(&self.db, args)
    }
}

/// `raectl`, through `$RAE_TEST_EXEC_WRAPPER` when set: `cross/test-qemu` sets it to its qemu
/// command, because a test emulated for aarch64 cannot exec an aarch64 binary by itself.
fn raectl_command() -> Command {
    let bin = env!("CARGO_BIN_EXE_raectl");
    let wrapper = std::env::var("RAE_TEST_EXEC_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(bin);
            command
        }
        None => Command::new(bin),
    }
}

/// The same as a shell command prefix: the wrapper's words, then the quoted binary.
fn raectl_shell() -> String {
    let wrapper = std::env::var("RAE_TEST_EXEC_WRAPPER").unwrap_or_default();
    format!("{wrapper} '{}'", env!("CARGO_BIN_EXE_raectl"))
        .trim()
        .to_owned()
}

fn raectl_at(db: &Path, args: &[&str]) -> Output {
    raectl_command()
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("raectl runs")
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "raectl failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("raectl prints UTF-8")
}

fn json_of(output: &Output) -> Value {
    serde_json::from_str(&stdout_of(output)).expect("raectl --json prints one JSON document")
}

/// The line of `text` that mentions `needle`.
fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line mentions {needle:?} in\n{text}"))
}

#[test]
fn devices_lists_open_sessions_in_aligned_columns() {
    let registry = Registry::stopped();
    let text = stdout_of(&registry.raectl(&["devices"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "header and the two open devices:\n{text}");
    let header = lines[0];
    for column in [
        "SESSION",
        "MAC",
        "IP",
        "HOSTNAME",
        "VENDOR",
        "REACHABILITY",
        "AVAILABILITY",
        "LAST SEEN",
    ] {
        assert!(header.contains(column), "column {column} missing: {header}");
    }
    let tv = line_with(&text, "02:00:00:00:00:01");
    let column = |name: &str| header.find(name).unwrap();
    assert_eq!(&tv[column("MAC")..][..17], "02:00:00:00:00:01");
    assert!(tv[column("IP")..].starts_with("198.18.0.10 "), "{tv}");
    assert!(
        tv[column("HOSTNAME")..].starts_with("living-room-tv "),
        "{tv}"
    );
    assert!(
        tv[column("VENDOR")..].starts_with("Example Displays "),
        "{tv}"
    );
    assert!(tv[column("REACHABILITY")..].starts_with("online "), "{tv}");
    assert!(
        tv[column("AVAILABILITY")..].starts_with("available "),
        "{tv}"
    );
    let last_seen = &tv[column("LAST SEEN")..];
    let secs: u64 = last_seen
        .strip_suffix("s ago")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("last seen is not `Ns ago`: {tv}"));
    assert!((12..60).contains(&secs), "seen 12 s before the run: {tv}");
    assert!(tv.starts_with(&registry.tv.session.to_string()), "{tv}");
    let phone = line_with(&text, "02:00:00:00:00:03");
    assert_eq!(&phone[column("IP")..][..2], "- ", "no address yet: {phone}");
    assert!(
        !text.contains("02:00:00:00:00:02"),
        "closed session listed:\n{text}"
    );
}

#[test]
fn devices_all_adds_closed_sessions_with_why_they_closed() {
    let registry = Registry::stopped();
    let text = stdout_of(&registry.raectl(&["devices", "--all"]));
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.lines().next().unwrap().ends_with("CLOSED"), "{text}");
    let printer = line_with(&text, "02:00:00:00:00:02");
    assert!(printer.contains("198.18.0.20"), "{printer}");
    assert!(printer.contains("gone 1m"), "closed 100 s ago: {printer}");
    assert!(line_with(&text, "02:00:00:00:00:01").ends_with("open"));
}

#[test]
fn devices_json_has_the_values_and_both_time_forms() {
    let registry = Registry::stopped();
    let value = json_of(&registry.raectl(&["devices", "--all", "--json"]));
    let devices = value["devices"].as_array().expect("a devices array");
    assert_eq!(devices.len(), 3, "{value}");
    let tv = devices
        .iter()
        .find(|d| d["mac"] == "02:00:00:00:00:01")
        .expect("the TV is listed");
    assert_eq!(tv["session"], registry.tv.session.to_string());
    assert_eq!(tv["ipv4"], "198.18.0.10");
    assert_eq!(tv["hostname"], "living-room-tv");
    assert_eq!(tv["vendor"], "Example Displays");
    assert_eq!(tv["reachability"], "online");
    assert_eq!(tv["availability"], "available");
    assert_eq!(tv["closed_ms"], Value::Null);
    assert_eq!(tv["last_seq"], 2);
    let last_seen = tv["last_seen_ms"]
        .as_i64()
        .expect("last_seen_ms is a number");
    assert_eq!(last_seen, registry.tv.record.last_seen_ms);
    let rfc = tv["last_seen"].as_str().expect("last_seen is text");
    assert!(
        rfc.len() == 24 && rfc.ends_with('Z') && rfc.as_bytes()[10] == b'T',
        "{rfc}"
    );
    let printer = devices
        .iter()
        .find(|d| d["mac"] == "02:00:00:00:00:02")
        .unwrap();
    assert_eq!(printer["close_reason"], "gone");
    assert_eq!(printer["session"], registry.printer.session.to_string());
    assert!(printer["closed_ms"].is_i64());
    // `--json` after or before the command: one global flag.
    let again = json_of(&registry.raectl(&["--json", "devices", "--all"]));
    assert_eq!(again["devices"], value["devices"]);
}

#[test]
fn show_finds_a_device_by_mac_ip_or_session() {
    let registry = Registry::stopped();
    let session = registry.tv.session.to_string();
    for query in ["02:00:00:00:00:01", "198.18.0.10", session.as_str()] {
        let text = stdout_of(&registry.raectl(&["show", query]));
        assert!(
            line_with(&text, "session").contains(&session),
            "{query}: {text}"
        );
        for (label, value) in [
            ("mac", "02:00:00:00:00:01"),
            ("ipv4", "198.18.0.10"),
            ("hostname", "\"living-room-tv\""),
            ("vendor", "Example Displays"),
            ("esn", "NFX-0001"),
            ("randomized mac", "yes"),
            ("reachability", "online (evidence dhcp_request)"),
            ("availability", "available"),
            ("seq", "2"),
            ("state", "open"),
        ] {
            let line = line_with(&text, &format!("{label:<20}"));
            assert!(line.contains(value), "{label}: {line}");
        }
        for label in [
            "ipv6",
            "dhcp client id",
            "mdns services",
            "upnp",
            "dial apps",
        ] {
            line_with(&text, label);
        }
        let opened = line_with(&text, "DHCP DISCOVER from 02:00:00:00:00:01");
        assert!(
            opened.contains("opened") && opened.contains(" #1 "),
            "{opened}"
        );
        let updated = line_with(&text, "DHCP REQUEST option 50/12");
        assert!(
            updated.contains("#2") && updated.contains("ipv4=198.18.0.10"),
            "{updated}"
        );
        assert!(updated.contains("hostname=\"living-room-tv\""), "{updated}");
    }
}

#[test]
fn show_json_and_limit() {
    let registry = Registry::stopped();
    let value = json_of(&registry.raectl(&["show", "198.18.0.20", "--json"]));
    assert_eq!(value["session"], registry.printer.session.to_string());
    assert_eq!(value["close_reason"], "gone");
    assert_eq!(value["record"]["ipv4"], "198.18.0.20");
    assert_eq!(value["record"]["randomized"], true);
    let kinds: Vec<&str> = value["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["opened", "updated", "closed"]);

    let value = json_of(&registry.raectl(&["show", "198.18.0.20", "--json", "--limit", "1"]));
    let history = value["history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["kind"], "closed", "the newest row is kept");
    assert_eq!(history[0]["summary"], "not seen for 600 s");
}

#[test]
fn show_of_an_unknown_device_fails_with_exit_1_and_bad_input_with_2() {
    let registry = Registry::stopped();
    let output = registry.raectl(&["show", "02:00:00:00:00:99"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no device matches `02:00:00:00:00:99`") && stderr.contains("--all"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());

    let output = registry.raectl(&["show", "not-a-device"]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("neither a MAC"), "{stderr}");
    assert_eq!(registry.raectl(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn events_prints_the_newest_rows_of_all_devices_oldest_first() {
    let registry = Registry::stopped();
    let text = stdout_of(&registry.raectl(&["events"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "2 + 3 + 1 history rows:\n{text}");
    assert!(lines[0].contains("02:00:00:00:00:01") && lines[0].contains("opened"));
    assert!(lines[4].contains("02:00:00:00:00:02") && lines[4].contains("closed"));
    assert!(lines[5].contains("02:00:00:00:00:03") && lines[5].contains("opened"));

    let text = stdout_of(&registry.raectl(&["events", "--limit", "2"]));
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().last().unwrap().contains("02:00:00:00:00:03"));

    let text = stdout_of(&registry.raectl(&["events", "--json"]));
    let rows: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[5]["session"], registry.phone.session.to_string());
    assert_eq!(rows[5]["mac"], "02:00:00:00:00:03");
    assert!(rows
        .windows(2)
        .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()));
}

/// Lines of a child's stdout, read on a thread so that the test can wait with a deadline.
fn lines_of(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(line) => seen.push(line),
            Err(_) => panic!("raectl events --follow printed no line with {needle:?}: {seen:?}"),
        }
    }
}

#[test]
fn events_follow_prints_rows_committed_after_it_started_and_stops_on_sigint() {
    let (mut registry, mut store) = Registry::build();
    let mut child = raectl_command()
        .args(["events", "--follow", "--limit", "1", "--state-dir"])
        .arg(&registry.state_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("raectl starts");
    let lines = lines_of(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    // The newest existing row first: once it is printed, raectl is following.
    wait_for_line(&lines, "02:00:00:00:00:03", &mut seen);

    let at = now_ms();
    let change = Change::Updated {
        session: registry.phone.session,
        seq: 2,
        mac: registry.phone.record.mac,
        fields: vec![Field::Hostname(Some(Text::from("pocket-phone")))],
        cause: Cause {
            at_ms: at,
            summary: "DHCP REQUEST option 12 (follow test)".into(),
        },
    };
    commit(&mut store, &[change], at);
    wait_for_line(&lines, "option 12 (follow test)", &mut seen);
    let tv_update = registry
        .tv
        .update(vec![Field::Esn(Some("NFX-0002".into()))], at);
    commit(&mut store, &[tv_update], at);
    wait_for_line(&lines, "esn=\"NFX-0002\"", &mut seen);
    assert!(seen.is_empty(), "unexpected lines: {seen:?}");

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("raectl events --follow did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status} on SIGINT: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_closed_pipe_ends_raectl_quietly() {
    let registry = Registry::stopped();
    let mut child = raectl_command()
        .args(["events", "--follow", "--db"])
        .arg(&registry.db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end: the first write fails with EPIPE.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "exit {}", output.status);
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn status_shows_sections_in_order_outbox_and_counters() {
    let registry = Registry::stopped();
    let text = stdout_of(&registry.raectl(&["status"]));
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing in\n{text}"))
    };
    let order = [
        "\nagent\n",
        "\ncapture\n",
        "\nframes dropped by the parsers, by reason\n",
        "\nbroker\n",
        "\npublisher\n",
        "\nprobes\n",
        "\nother\n",
        "\noutbox",
        "\nstore counters\n",
    ];
    for pair in order.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{pair:?} out of order:\n{text}");
    }
    assert!(line_with(&text, "kernel_drops").ends_with(" 3"));
    assert!(line_with(&text, "truncated").ends_with(" 17"));
    assert!(line_with(&text, "connected").ends_with(" yes"));
    assert!(line_with(&text, "zz.experimental").ends_with(" on"));
    assert!(line_with(&text, "serial").contains("RAE-test-1"));
    let written = line_with(&text, "written by rae-agent");
    assert!(
        written.ends_with("ago)") || written.ends_with("(just now)"),
        "{written}"
    );
    assert!(!text.contains("warning"), "{text}");
    // Every event still waits for its ack: the fixture has no publisher.
    assert!(line_with(&text, "  rows").ends_with(" 6"), "{text}");
    assert!(
        line_with(&text, "  oldest").contains("m"),
        "about 5 minutes: {text}"
    );

    let value = json_of(&registry.raectl(&["status", "--json"]));
    assert_eq!(value["status"]["capture"]["frames"], "4242");
    assert_eq!(value["status"]["parse.drop"]["truncated"], "17");
    assert_eq!(value["outbox"]["rows"], 6);
    assert_eq!(value["stale"], false);
    assert!(value["outbox"]["oldest_age_ms"].as_i64().unwrap() >= 299_000);
}

#[test]
fn status_warns_when_the_daemon_stopped_writing_and_notes_when_it_never_did() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("registry.db");
    let mut store = Store::open(&db, StoreOptions::default()).unwrap();
    let text = stdout_of(&raectl_at(&db, &["status"]));
    assert!(
        text.contains("note: the daemon has written no status"),
        "{text}"
    );
    assert!(line_with(&text, "  rows").ends_with(" 0"), "{text}");

    let old = now_ms() - 120_000;
    store
        .write_status(&[("broker.connected".into(), "no".into())], old)
        .unwrap();
    drop(store);
    let text = stdout_of(&raectl_at(&db, &["status"]));
    let warning = line_with(&text, "warning");
    assert!(
        warning.contains("2m00s old") && warning.contains("may be down"),
        "{warning}"
    );
    assert_eq!(
        json_of(&raectl_at(&db, &["status", "--json"]))["stale"],
        true
    );
}

#[test]
fn a_missing_database_says_where_it_looked_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let output = raectl_command()
        .arg("devices")
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = dir.path().join("registry.db");
    assert!(stderr.contains(&*expected.to_string_lossy()), "{stderr}");
    assert!(
        stderr.contains("is rae-agent running / has it ever run?"),
        "{stderr}"
    );
    assert!(stderr.contains("given with --state-dir"), "{stderr}");
    assert!(
        !expected.exists(),
        "raectl must not create the database it reads"
    );

    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nserial = \"RAE-1\"\nlan_interface = \"lan0\"\nstate_dir = \"{}\"\n\
             [mqtt]\nhost = \"broker.test\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let output = raectl_command()
        .args(["status", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("state/registry.db"), "{stderr}");
    assert!(stderr.contains(&*config.to_string_lossy()), "{stderr}");
}

fn snapshot_of(db: &Path) -> (Vec<u8>, SystemTime) {
    let bytes = std::fs::read(db).unwrap();
    let mtime = std::fs::metadata(db).unwrap().modified().unwrap();
    (bytes, mtime)
}

const EVERY_COMMAND: &[&[&str]] = &[
    &["devices", "--all"],
    &["devices", "--json"],
    &["show", "02:00:00:00:00:01"],
    &["show", "02:00:00:00:00:99"],
    &["events"],
    &["status", "--json"],
];

#[test]
fn the_database_is_never_modified() {
    use std::os::unix::fs::{chown, MetadataExt};

    let registry = Registry::stopped();
    // As on the RAE: the daemon's user owns the database, the operator runs raectl as root.
    chown(&registry.db, Some(65534), Some(65534)).expect("chown (the test runs as root)");
    let before = snapshot_of(&registry.db);
    for args in EVERY_COMMAND {
        let output = registry.raectl(args);
        assert!(output.status.code().is_some(), "{args:?} was killed");
    }
    assert!(
        snapshot_of(&registry.db) == before,
        "raectl changed the database bytes or mtime"
    );
    // The WAL files a reader may create must stay usable by the daemon's user.
    let db_meta = std::fs::metadata(&registry.db).unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut path = registry.db.clone().into_os_string();
        path.push(suffix);
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(
                (meta.uid(), meta.gid(), meta.mode()),
                (db_meta.uid(), db_meta.gid(), db_meta.mode()),
                "{suffix} file owned or moded unlike the database"
            );
        }
    }
}

#[test]
fn works_on_a_copy_on_a_read_only_mount() {
    let registry = Registry::stopped();
    let copy = tempfile::tempdir().unwrap();
    let db = copy.path().join("registry.db");
    std::fs::copy(&registry.db, &db).unwrap();
    let expected = stdout_of(&registry.raectl(&["devices", "--all", "--json"]));
    let expected: Value = serde_json::from_str(&expected).unwrap();

    // A private mount namespace, so the read-only bind mount is gone when the shell exits.
    let script = format!(
        "mount --bind -o ro '{dir}' '{dir}' && ! touch '{dir}/probe' 2>/dev/null && \
         exec {raectl} --db '{db}' devices --all --json",
        dir = copy.path().display(),
        raectl = raectl_shell(),
        db = db.display()
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) is needed to mount the copy read-only");
    assert!(
        output.status.success(),
        "raectl on a read-only mount failed (this test needs root for unshare --mount): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(got["devices"], expected["devices"]);
}
