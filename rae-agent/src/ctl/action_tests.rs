//! raectl's client: each way an action can end, against sockets made here, and the text and
//! JSON it prints.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use rae_proto::{
    Availability, CommandError, DeviceRef, ErrorKind, Mac, Pong, SessionId, SessionSeq,
};

use super::*;

fn device() -> DeviceRef {
    DeviceRef::Mac(Mac([0x02, 0, 0, 0, 0, 7]))
}

fn one(seq: u64) -> SessionSeq {
    SessionSeq {
        session: SessionId::from_bytes([0x11; 16]),
        seq,
    }
}

/// A one-shot peer on a socket in `dir`: reads one request frame, then does `then`.
fn peer(
    dir: &tempfile::TempDir,
    then: impl FnOnce(&mut std::os::unix::net::UnixStream) + Send + 'static,
) -> PathBuf {
    let path = dir.path().join("control.sock");
    let listener = UnixListener::bind(&path).expect("bound");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accepted");
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).expect("header");
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        stream.read_exact(&mut body).expect("body");
        CommandRequest::decode(&body).expect("raectl sends a request");
        then(&mut stream);
    });
    path
}

fn reply_with(reply: CommandReply) -> impl FnOnce(&mut std::os::unix::net::UnixStream) + Send {
    move |stream| {
        let bytes = reply.encode().expect("encodable");
        stream.write_all(&frame::encode(&bytes)).expect("written");
    }
}

#[test]
fn a_reply_comes_back_and_an_error_reply_is_the_agents_refusal() {
    let dir = tempfile::tempdir().expect("dir");
    let path = peer(
        &dir,
        reply_with(CommandReply::Ok(ReplyBody::Device(one(5)))),
    );
    let request = CommandRequest::Forget { device: device() };
    let body = send(&path, &request, Duration::from_secs(5)).expect("replied");
    assert_eq!(body, ReplyBody::Device(one(5)));

    let dir = tempfile::tempdir().expect("dir");
    let path = peer(&dir, reply_with(CommandReply::unknown_device(&device())));
    let err = send(&path, &request, Duration::from_secs(5)).expect_err("refused");
    assert_eq!(err.exit_code(), 1);
    assert_eq!(
        err.to_string(),
        "rae-agent answered unknown_device: unknown device: mac 02:00:00:00:00:07"
    );
    let json = error_json(&request, &err);
    assert_eq!(json["ok"], false);
    assert_eq!(json["error"]["kind"], "unknown_device");
    assert_eq!(json["request"]["command"], "forget");
    assert_eq!(json["request"]["device"], "mac 02:00:00:00:00:07");
}

#[test]
fn no_socket_and_a_stale_socket_mean_not_running_exit_2() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("control.sock");
    let err = send(&path, &CommandRequest::Ping, Duration::from_secs(1)).expect_err("no socket");
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        format!(
            "rae-agent is not running (no control socket at {})",
            path.display()
        )
    );
    drop(UnixListener::bind(&path).expect("bound"));
    let err = send(&path, &CommandRequest::Ping, Duration::from_secs(1)).expect_err("stale");
    assert!(matches!(err, ActionError::Refused { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().starts_with("rae-agent is not running"));
    assert_eq!(
        error_json(&CommandRequest::Ping, &err)["error"]["kind"],
        "not_running"
    );
}

#[test]
fn silence_is_a_timeout_and_a_close_is_no_reply() {
    let dir = tempfile::tempdir().expect("dir");
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let path = peer(&dir, move |_| {
        // Keeps the connection open and silent until the client gave up.
        let _ = hold_rx.recv_timeout(Duration::from_secs(10));
    });
    let err = send(&path, &CommandRequest::Ping, Duration::from_millis(200)).expect_err("silent");
    drop(hold_tx);
    assert!(matches!(err, ActionError::Timeout { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 1);
    assert!(
        err.to_string()
            .starts_with("rae-agent did not reply within 200ms"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("dir");
    let path = peer(&dir, |_| {});
    let err = send(&path, &CommandRequest::Ping, Duration::from_secs(5)).expect_err("closed");
    assert!(matches!(err, ActionError::NoReply { .. }), "{err:?}");

    let dir = tempfile::tempdir().expect("dir");
    let path = peer(&dir, |stream| {
        stream
            .write_all(&frame::encode(b"\x01garbage"))
            .expect("written");
    });
    let err = send(&path, &CommandRequest::Ping, Duration::from_secs(5)).expect_err("garbage");
    assert!(matches!(err, ActionError::BadReply { .. }), "{err:?}");
}

#[test]
fn the_socket_comes_from_the_flag_the_config_or_the_default() {
    let dir = tempfile::tempdir().expect("dir");
    let flag = dir.path().join("flag.sock");
    let missing = dir.path().join("missing.toml");
    assert_eq!(
        locate_socket(Some(&flag), None, &missing).expect("flag"),
        (flag.clone(), SocketOrigin::Flag)
    );
    assert_eq!(
        locate_socket(None, None, &missing).expect("default"),
        (PathBuf::from(DEFAULT_CONTROL_SOCKET), SocketOrigin::BuiltIn)
    );
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[agent]\nserial = \"R1\"\nlan_interface = \"lan0\"\n\
         control_socket = \"/run/lab/ctl.sock\"\n[mqtt]\nhost = \"b\"\n",
    )
    .expect("written");
    assert_eq!(
        locate_socket(None, Some(&config), &missing).expect("config"),
        (
            PathBuf::from("/run/lab/ctl.sock"),
            SocketOrigin::Config(config.clone())
        )
    );
    // The default file is read when it exists.
    assert_eq!(
        locate_socket(None, None, &config)
            .expect("default config")
            .0,
        PathBuf::from("/run/lab/ctl.sock")
    );
    let err = locate_socket(None, Some(&missing), &missing).expect_err("unreadable");
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn the_lines_say_what_was_done_with_the_session_and_its_seq() {
    let set = CommandRequest::SetAvailability {
        device: device(),
        availability: Availability::InTest,
    };
    assert_eq!(
        reply_text(&set, &ReplyBody::Device(one(9))),
        "mac 02:00:00:00:00:07: availability set to in_test \
         (session 11111111-1111-1111-1111-111111111111 seq 9)\n"
    );
    let clear = CommandRequest::SetEsn {
        device: device(),
        esn: None,
    };
    assert!(reply_text(&clear, &ReplyBody::Device(one(3))).contains("ESN cleared"));
    let resync_all = CommandRequest::Resync { device: None };
    assert_eq!(
        reply_text(&resync_all, &ReplyBody::Sessions(vec![one(4), one(8)])),
        "resynced: 2 sessions, a Snapshot each\n  \
         session 11111111-1111-1111-1111-111111111111 seq 4\n  \
         session 11111111-1111-1111-1111-111111111111 seq 8\n"
    );
    assert_eq!(
        reply_text(&resync_all, &ReplyBody::Sessions(vec![])),
        "resynced: no open session\n"
    );
    let resync_one = CommandRequest::Resync {
        device: Some(device()),
    };
    assert!(reply_text(&resync_one, &ReplyBody::Sessions(vec![one(4)])).ends_with("seq 4)\n"));
    let pong = ReplyBody::Pong(Pong {
        version: "0.1.0".into(),
        uptime_secs: 3_723,
        sessions_open: 1,
    });
    assert_eq!(
        reply_text(&CommandRequest::Ping, &pong),
        "rae-agent 0.1.0 is running: up 1h02m, 1 session open\n"
    );
    let json = reply_json(&CommandRequest::Ping, &pong);
    assert_eq!(json["reply"]["uptime_secs"], 3_723);
    assert_eq!(json["reply"]["sessions_open"], 1);
    let json = reply_json(&set, &ReplyBody::Device(one(9)));
    assert_eq!(json["ok"], true);
    assert_eq!(json["request"]["availability"], "in_test");
    assert_eq!(json["reply"]["seq"], 9);
    assert_eq!(
        json["reply"]["session"],
        "11111111-1111-1111-1111-111111111111"
    );
}

#[test]
fn raectl_speaks_to_the_real_server() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("run/control.sock");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let settings = crate::control::socket::SocketSettings {
        path: path.clone(),
        group: None,
        limits: crate::control::socket::SocketLimits::default(),
    };
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let (jobs, mut rx) = crate::control::channel();
            let mut stop = stop_rx.clone();
            let socket = crate::control::socket::serve(&settings, jobs, stop_rx).expect("serve");
            ready_tx.send(()).expect("ready");
            loop {
                // The server drops its sender when it sees the stop too.
                let job = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    job = rx.recv() => match job {
                        Some(job) => job,
                        None => break,
                    },
                };
                let reply = match job.request {
                    CommandRequest::Ping => CommandReply::Ok(ReplyBody::Pong(Pong {
                        version: "t".into(),
                        uptime_secs: 0,
                        sessions_open: 0,
                    })),
                    _ => CommandReply::Error(CommandError {
                        kind: ErrorKind::BadRequest,
                        message: "no".into(),
                    }),
                };
                let _ = job.reply.send(reply);
            }
            socket.stop().await;
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server up");
    let pong = send(&path, &CommandRequest::Ping, Duration::from_secs(5)).expect("pong");
    assert!(matches!(pong, ReplyBody::Pong(_)));
    let err = send(
        &path,
        &CommandRequest::Forget { device: device() },
        Duration::from_secs(5),
    )
    .expect_err("refused");
    assert!(
        matches!(&err, ActionError::Agent(e) if e.kind == ErrorKind::BadRequest),
        "{err:?}"
    );
    stop_tx.send(true).expect("server listening");
    server.join().expect("server thread");
    let err = send(&path, &CommandRequest::Ping, Duration::from_secs(1)).expect_err("stopped");
    assert_eq!(err.exit_code(), 2, "{err}");
}

#[test]
fn a_stuck_agent_with_a_full_backlog_is_busy_not_a_hang() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("control.sock");
    let _stuck = UnixListener::bind(&path).expect("bound");
    // Fill its backlog with connections nobody accepts, until raectl's connect is refused.
    let mut held = Vec::new();
    let err = (0..100_000)
        .find_map(|_| match connect(&path) {
            Ok(stream) => {
                held.push(stream);
                None
            }
            Err(err) => Some(err),
        })
        .expect("the backlog fills");
    assert!(matches!(err, ActionError::Busy { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 1);
    let err = send(&path, &CommandRequest::Ping, Duration::from_secs(1)).expect_err("busy");
    assert!(matches!(err, ActionError::Busy { .. }), "{err:?}");
}
