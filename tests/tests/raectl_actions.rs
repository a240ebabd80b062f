//! `raectl` actions against the real agent binary in the virtual lab, with a real mosquitto
//! and a DUT on the lab bridge: `set`, `esn` (and `--clear`), `resync` (one device and all),
//! `forget` and `ping` go over the control socket, and each effect shows where an operator and
//! the cloud look: an event with the session's next seq at the subscriber, the history in
//! `raectl show` naming raectl and its uid, `raectl devices --json`. Refusals (unknown device,
//! invalid ESN) exit 1 with the agent's error; the socket is mode 0660 and in the configured
//! group, which is what lets a non-root user in; a stopped agent (SIGSTOP) is a reply timeout,
//! exit 1; refused frames are counted in `raectl status`. Without a running agent (killed,
//! leaving its socket file, or stopped cleanly, removing it) every action prints one line
//! saying so and exits 2; a restart replaces the stale socket, a second agent on the same
//! socket does not start, nor one whose `agent.control_group` does not exist.
//!
//! Needs root (network namespaces, AF_PACKET, setpriv to run raectl as `nobody`), iproute2,
//! dnsmasq, mosquitto, util-linux's setpriv; and the workspace built (`cargo build`).

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rae_proto::{Availability, CloseReason, Envelope, Event, Field, Mac, SessionId};
use rae_tests::agent::{raectl, workspace_binary, Agent, AgentSpec};
use rae_tests::mqtt_watch::MqttWatch;
use rae_tests::netlab::{wait_until, DutKind, DutSpec, Lab, LabConfig};
use rae_tests::services::Mosquitto;
use rae_tests::stream_check::Stream;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// A group every Debian system has, which root may give the socket to.
const GROUP: &str = "daemon";
/// `nobody` / `nogroup`.
const NOBODY: u32 = 65534;

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The `--json` output.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("raectl --json printed no JSON ({e}): {}", self.stdout))
    }

    fn expect_ok(self, what: &str) -> Ran {
        assert_eq!(
            self.code(),
            Some(0),
            "{what}: exit {:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// `raectl` with `args`, the socket found through the agent's config (`-c`), as the lab's
/// operator (root) would run it; `prefix` runs it under another program (setpriv).
fn run(prefix: &[&str], args: &[&str]) -> Ran {
    let bin = workspace_binary("raectl").unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = match prefix.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(&bin);
            cmd
        }
        None => Command::new(&bin),
    };
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running raectl {args:?}: {e}"));
    Ran {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ctl(spec: &AgentSpec, args: &[&str]) -> Ran {
    let config = spec.state_dir.join("config.toml").display().to_string();
    let mut all = vec!["-c", &config];
    all.extend_from_slice(args);
    run(&[], &all)
}

/// Reads the registry (`--db`), as the read commands do.
fn read(spec: &AgentSpec, args: &[&str]) -> String {
    let (status, out, err) = raectl(spec, args).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "raectl {args:?}: {err}");
    out
}

fn read_json(spec: &AgentSpec, args: &[&str]) -> Value {
    let out = read(spec, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("raectl {args:?}: {e}\n{out}"))
}

/// The (session, seq) an action's `--json` reply names.
fn replied_seq(ran: &Ran) -> (SessionId, u64) {
    let json = ran.json();
    let reply = &json["reply"];
    let reply = reply["sessions"].get(0).unwrap_or(reply);
    let session = reply["session"]
        .as_str()
        .and_then(|s| SessionId::parse(s).ok())
        .unwrap_or_else(|| panic!("no session in the reply: {json}"));
    let seq = reply["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in the reply: {json}"));
    (session, seq)
}

/// Waits for the event `session`/`seq` at the subscriber.
fn wait_event(watch: &MqttWatch, agent: &Agent, session: SessionId, seq: u64) -> Envelope {
    watch
        .wait_for(
            format!("event seq {seq} of session {session}"),
            WAIT,
            |messages| {
                messages
                    .iter()
                    .filter_map(|m| m.event())
                    .find(|e| e.session == session && e.seq == seq)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail()))
}

/// The newest seq of `session` at the subscriber.
fn last_seq(watch: &MqttWatch, session: SessionId) -> u64 {
    watch
        .events()
        .iter()
        .filter(|e| e.session == session)
        .map(|e| e.seq)
        .max()
        .unwrap_or(0)
}

fn status_counter(spec: &AgentSpec, section: &str, key: &str) -> u64 {
    let json = read_json(spec, &["status", "--json"]);
    let value = &json["status"][section][key];
    value
        .as_u64()
        .or_else(|| value.as_str()?.parse().ok())
        .unwrap_or(0)
}

fn wait_counter(agent: &Agent, section: &str, key: &str, at_least: u64) {
    wait_until(
        format!("raectl status {section}.{key} at least {at_least}"),
        WAIT,
        || {
            let now = status_counter(agent.spec(), section, key);
            Ok(if now >= at_least {
                Ok(())
            } else {
                Err(format!("{section}.{key} = {now}"))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail()));
}

/// One frame on a fresh connection; the agent's reply frame, if any.
fn raw_exchange(path: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout set");
    stream.write_all(bytes).expect("frame written");
    let mut reply = Vec::new();
    // The agent answers and closes: read to the end.
    stream.read_to_end(&mut reply).expect("reply read");
    reply
}

fn lab_bed(serial: &str) -> (Lab, Mosquitto, MqttWatch, AgentSpec) {
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let broker = Mosquitto::start().unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
    let watch = MqttWatch::start(broker.host(), broker.port(), "cloud-watch", &["rae/v1/#"])
        .unwrap_or_else(|e| panic!("subscribing: {e}"));
    let mut spec = AgentSpec::for_lab(
        serial,
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    // A directory of its own, which the agent creates.
    spec.control_socket = lab.dir().join("run/control.sock");
    spec.control_group = Some(GROUP.to_owned());
    (lab, broker, watch, spec)
}

#[test]
fn every_raectl_action_is_carried_out_by_the_running_agent_and_shows() {
    let (lab, _broker, watch, spec) = lab_bed("LAB-RAE-CTL");
    let dut = lab
        .add_dut(DutSpec::new(
            "operated",
            DutKind::StaticV4 {
                addr: lab.net().host_v4(71),
            },
        ))
        .unwrap_or_else(|e| panic!("adding the DUT: {e}"));
    let device = Mac(dut.mac().0);
    let mac = device.to_string();
    let (mut agent, started) =
        Agent::start_online(&spec, &watch, WAIT).unwrap_or_else(|e| panic!("{e}"));
    let _ = dut.ping(lab.router_v4().into());
    let session = watch
        .wait_for(format!("a Snapshot of {device}"), WAIT, |messages| {
            messages
                .iter()
                .filter(|m| m.at >= started)
                .filter_map(|m| m.event())
                .find(|e| matches!(&e.event, Event::Snapshot { record } if record.mac == device))
                .map(|e| e.session)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail()));

    // The socket: 0660, in the configured group, its directory created by the agent.
    let path = spec.control_socket.clone();
    let meta = std::fs::symlink_metadata(&path).expect("the control socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "mode of {path:?}");
    let group = nix::unistd::Group::from_name(GROUP)
        .expect("group lookup")
        .expect("group daemon exists");
    assert_eq!(meta.gid(), group.gid.as_raw(), "group of {path:?}");

    // ping
    let ran = ctl(&spec, &["ping"]).expect_ok("ping");
    assert!(
        ran.stdout.starts_with(&format!(
            "rae-agent {} is running: up ",
            env!("CARGO_PKG_VERSION")
        )) && ran.stdout.ends_with(", 1 session open\n"),
        "{}",
        ran.stdout
    );
    let pong = ctl(&spec, &["ping", "--json"])
        .expect_ok("ping --json")
        .json();
    assert_eq!(pong["reply"]["sessions_open"], 1, "{pong}");
    assert_eq!(pong["reply"]["version"], env!("CARGO_PKG_VERSION"));

    // set: the Delta with the next seq, the history naming raectl, the devices row.
    let before = last_seq(&watch, session);
    let ran = ctl(&spec, &["set", &mac, "in-test", "--json"]).expect_ok("set in-test");
    let (replied, seq) = replied_seq(&ran);
    assert_eq!(replied, session);
    assert!(seq > before, "seq {seq} after {before}");
    let event = wait_event(&watch, &agent, session, seq);
    assert!(
        matches!(&event.event, Event::Delta { fields }
            if fields.contains(&Field::Availability(Availability::InTest))),
        "{event:?}"
    );
    let show = read(&spec, &["show", &mac]);
    assert!(
        show.contains("availability set to in_test (by raectl (uid 0))"),
        "{show}"
    );
    let devices = read_json(&spec, &["devices", "--json"]);
    let row = devices["devices"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["mac"] == mac))
        .unwrap_or_else(|| panic!("{mac} not in raectl devices: {devices}"));
    assert_eq!(row["availability"], "in_test", "{row}");
    assert!(
        row["last_seq"].as_u64().is_some_and(|last| last >= seq),
        "the registry has seq {seq}: {row}"
    );

    // esn by session id, then --clear by MAC; the text line names the session and seq.
    let ran = ctl(
        &spec,
        &["esn", &session.to_string(), "NFANDROID2-PRV-LAB=1"],
    )
    .expect_ok("esn set");
    assert!(
        ran.stdout.starts_with(&format!(
            "session {session}: ESN set to NFANDROID2-PRV-LAB=1 (session {session} seq "
        )),
        "{}",
        ran.stdout
    );
    let seq: u64 = ran
        .stdout
        .trim_end()
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seq in {}", ran.stdout));
    let event = wait_event(&watch, &agent, session, seq);
    assert!(
        matches!(&event.event, Event::Delta { fields }
            if fields.contains(&Field::Esn(Some("NFANDROID2-PRV-LAB=1".into())))),
        "{event:?}"
    );
    let shown = read_json(&spec, &["show", &mac, "--json"]);
    assert_eq!(shown["record"]["esn"], "NFANDROID2-PRV-LAB=1", "{shown}");
    let ran = ctl(&spec, &["esn", &mac, "--clear", "--json"]).expect_ok("esn --clear");
    let (_, seq) = replied_seq(&ran);
    let event = wait_event(&watch, &agent, session, seq);
    assert!(
        matches!(&event.event, Event::Delta { fields } if fields.contains(&Field::Esn(None))),
        "{event:?}"
    );
    assert!(read(&spec, &["show", &mac]).contains("ESN cleared (by raectl (uid 0))"));

    // Refusals: exit 1 with the agent's error kind and message, one line.
    let ran = ctl(&spec, &["esn", &mac, "bad esn"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.stderr);
    assert_eq!(
        ran.stderr,
        "raectl: rae-agent answered bad_request: invalid ESN: ESN may hold only printable \
         ASCII without spaces\n"
    );
    let ran = ctl(&spec, &["forget", "02:00:5e:00:99:99"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.stderr);
    assert_eq!(
        ran.stderr,
        "raectl: rae-agent answered unknown_device: unknown device: mac 02:00:5e:00:99:99\n"
    );
    let ran = ctl(&spec, &["forget", "02:00:5e:00:99:99", "--json"]);
    assert_eq!(ran.json()["error"]["kind"], "unknown_device");

    // resync of the device, then of every open session: a Snapshot each at the next seq.
    let ran = ctl(&spec, &["resync", &mac, "--json"]).expect_ok("resync one");
    let (_, seq) = replied_seq(&ran);
    let event = wait_event(&watch, &agent, session, seq);
    assert!(matches!(event.event, Event::Snapshot { .. }), "{event:?}");
    let ran = ctl(&spec, &["resync"]).expect_ok("resync all");
    assert!(
        ran.stdout
            .starts_with("resynced: 1 session, a Snapshot each\n"),
        "{}",
        ran.stdout
    );
    let seq = ran
        .stdout
        .lines()
        .nth(1)
        .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no seq in {}", ran.stdout));
    let event = wait_event(&watch, &agent, session, seq);
    assert!(matches!(event.event, Event::Snapshot { .. }), "{event:?}");

    // The group is what lets a user in: `nobody` without it is refused (one line naming the
    // socket and the group, exit 1), with it the action is carried out under its uid.
    let socket = path.display().to_string();
    let nobody = format!("--reuid={NOBODY}");
    let nogroup = format!("--regid={NOBODY}");
    let ran = run(
        &["setpriv", &nobody, &nogroup, "--clear-groups"],
        &["ping", "--socket", &socket],
    );
    assert_eq!(ran.code(), Some(1), "{}", ran.stderr);
    assert_eq!(
        ran.stderr,
        format!(
            "raectl: permission denied on the control socket {socket}: only root and members \
             of group {GROUP} may use it (`usermod -aG {GROUP} USER`, then log in again)\n"
        )
    );
    let member = format!("--groups={}", group.gid.as_raw());
    let ran = run(
        &["setpriv", &nobody, &nogroup, &member],
        &["set", &mac, "maintenance", "--socket", &socket, "--json"],
    )
    .expect_ok("set maintenance as a member of the group");
    let (_, seq) = replied_seq(&ran);
    wait_event(&watch, &agent, session, seq);
    assert!(
        read(&spec, &["show", &mac]).contains(&format!(
            "availability set to maintenance (by raectl (uid {NOBODY}))"
        )),
        "the history names the user"
    );

    // A stopped agent (SIGSTOP) does not answer: a clear line and exit 1 after --timeout.
    let pid = Pid::from_raw(i32::try_from(agent.pid()).expect("pid"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let asked = Instant::now();
    let ran = ctl(&spec, &["ping", "--timeout", "1"]);
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    assert_eq!(ran.code(), Some(1), "{}", ran.stderr);
    assert!(asked.elapsed() >= Duration::from_secs(1));
    assert!(
        ran.stderr.starts_with(&format!(
            "raectl: rae-agent did not reply within 1s (control socket {socket})"
        )),
        "{}",
        ran.stderr
    );
    // Its reply, once it runs again, finds nobody: counted.
    wait_counter(&agent, "control", "write_errors", 1);

    // Frames that are no request: answered bad_request, counted in `raectl status`.
    let reply = raw_exchange(&path, &[0, 1, 0, 0]);
    let reply = rae_proto::CommandReply::decode(&reply[4..]).expect("a reply");
    assert!(
        matches!(&reply, rae_proto::CommandReply::Error(e) if e.kind == rae_proto::ErrorKind::BadRequest),
        "{reply:?}"
    );
    let reply = raw_exchange(&path, &[0, 0, 0, 3, 1, 0xff, 0xff]);
    let reply = rae_proto::CommandReply::decode(&reply[4..]).expect("a reply");
    assert!(
        matches!(&reply, rae_proto::CommandReply::Error(e) if e.kind == rae_proto::ErrorKind::BadRequest),
        "{reply:?}"
    );
    wait_counter(&agent, "control", "oversize", 1);
    wait_counter(&agent, "control", "undecodable", 1);
    assert!(status_counter(&spec, "control", "requests") >= 12);
    let status = read(&spec, &["status"]);
    assert!(
        status.contains("control socket (raectl actions: connections, refusals)"),
        "{status}"
    );

    // forget: Closed (forgotten) at the replied seq; the device leaves the open sessions.
    let ran = ctl(&spec, &["forget", &mac]).expect_ok("forget");
    assert!(
        ran.stdout.starts_with(&format!(
            "mac {mac}: forgotten, session closed (session {session} seq "
        )),
        "{}",
        ran.stdout
    );
    let closed = watch
        .wait_for(
            "the Closed event of the forgotten session",
            WAIT,
            |messages| {
                messages
                    .iter()
                    .filter_map(|m| m.event())
                    .find(|e| e.session == session && matches!(e.event, Event::Closed { .. }))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail()));
    assert!(
        matches!(
            closed.event,
            Event::Closed {
                reason: CloseReason::Forgotten,
                ..
            }
        ),
        "{closed:?}"
    );
    assert!(
        ran.stdout.ends_with(&format!("seq {})\n", closed.seq)),
        "{}",
        ran.stdout
    );
    let open = read_json(&spec, &["devices", "--json"]);
    assert!(
        open["devices"]
            .as_array()
            .is_some_and(|rows| rows.iter().all(|r| r["session"] != session.to_string())),
        "{open}"
    );

    // Every event the actions made is an ordinary one: no gap, no reorder, and the folded
    // stream is what the registry holds.
    let stream = Stream::check(&watch.messages()).unwrap_or_else(|e| panic!("{e}"));
    stream
        .matches_registry(&read(&spec, &["devices", "--all", "--json"]))
        .unwrap_or_else(|e| panic!("{e}"));
    agent.ensure_running().expect("the agent runs on");
}

/// Every action, as the operator types it.
fn every_action(mac: &str) -> Vec<Vec<String>> {
    let session = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    [
        vec!["set", mac, "available"],
        vec!["esn", session, "ESN-1"],
        vec!["esn", mac, "--clear"],
        vec!["resync", mac],
        vec!["resync"],
        vec!["forget", mac],
        vec!["ping"],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(str::to_owned).collect())
    .collect()
}

fn assert_not_running(spec: &AgentSpec, line: &str) {
    for args in every_action("02:00:5e:00:00:01") {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = ctl(spec, &args);
        assert_eq!(ran.code(), Some(2), "{args:?}: {}", ran.stderr);
        assert_eq!(ran.stderr, format!("raectl: {line}\n"), "{args:?}");
        assert!(ran.stdout.is_empty(), "{args:?}: {}", ran.stdout);
    }
}

#[test]
fn without_a_running_agent_every_action_says_so_and_exits_2() {
    let (lab, broker, watch, spec) = lab_bed("LAB-RAE-CTL-2");
    let socket = spec.control_socket.display().to_string();

    // Never started: no socket (the config, which names it, is there as on an installed RAE).
    std::fs::create_dir_all(&spec.state_dir).expect("state dir");
    std::fs::write(spec.state_dir.join("config.toml"), spec.toml()).expect("config written");
    assert_not_running(
        &spec,
        &format!("rae-agent is not running (no control socket at {socket})"),
    );

    // An unknown control group stops the start with a line that names it; --check-config
    // says the same.
    let mut unknown = spec.clone();
    unknown.control_group = Some("rae-no-such-group".into());
    let mut refused = Agent::start(&unknown).unwrap_or_else(|e| panic!("{e}"));
    wait_until("the agent with an unknown group to stop", WAIT, || {
        Ok(match refused.ensure_running() {
            Err(_) => Ok(()),
            Ok(()) => Err(refused.log_tail()),
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let line = "agent.control_group \"rae-no-such-group\": no such group on this system";
    assert!(refused.log().contains(line), "{}", refused.log());
    assert!(!spec.control_socket.exists(), "no socket was left");
    let check = Command::new(workspace_binary("rae-agent").unwrap_or_else(|e| panic!("{e}")))
        .arg("--check-config")
        .arg("--config")
        .arg(unknown.state_dir.join("config.toml"))
        .output()
        .expect("rae-agent --check-config");
    assert_eq!(check.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&check.stderr),
        format!("rae-agent: {line}\n")
    );
    std::fs::write(spec.state_dir.join("config.toml"), spec.toml()).expect("config written");

    let (agent, _) = Agent::start_online(&spec, &watch, WAIT).unwrap_or_else(|e| panic!("{e}"));
    ctl(&spec, &["ping"]).expect_ok("ping");

    // A second agent on the same socket (its own state dir) stops at start-up.
    let mut second = AgentSpec::for_lab(
        "LAB-RAE-CTL-3",
        lab.bridge_name(),
        &lab.dir().join("second"),
        broker.host(),
        broker.port(),
    );
    second.control_socket = spec.control_socket.clone();
    let mut other = Agent::start(&second).unwrap_or_else(|e| panic!("{e}"));
    wait_until("the second agent to stop at start-up", WAIT, || {
        Ok(match other.ensure_running() {
            Err(_) => Ok(()),
            Ok(()) => Err(other.log_tail()),
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let log = other.log();
    assert!(
        log.contains(&format!(
            "another rae-agent is already listening on the control socket {socket}"
        )),
        "{log}"
    );
    ctl(&spec, &["ping"]).expect_ok("the first agent keeps its socket");

    // Killed: the file stays, nothing answers on it.
    agent.kill().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        spec.control_socket.exists(),
        "a killed agent leaves its socket"
    );
    assert_not_running(
        &spec,
        &format!(
            "rae-agent is not running (nothing listens on the control socket {socket}; the \
             file was left by an agent that stopped)"
        ),
    );

    // Restarted: the stale socket is replaced and answers.
    let (agent, _) = Agent::start_online(&spec, &watch, WAIT).unwrap_or_else(|e| panic!("{e}"));
    ctl(&spec, &["ping"]).expect_ok("ping after the restart");
    assert!(agent
        .log()
        .contains("replacing the control socket an earlier run left behind"));

    // Stopped cleanly: the socket file goes with it.
    let status = agent
        .terminate(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "the agent exits cleanly: {status:?}");
    assert!(
        !spec.control_socket.exists(),
        "the socket file is removed on shutdown"
    );
    assert_not_running(
        &spec,
        &format!("rae-agent is not running (no control socket at {socket})"),
    );
}
