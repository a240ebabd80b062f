//! The control socket server against a test task that answers Jobs: framing on a real Unix
//! socket, the claim of the path (stale, live, not a socket), mode and group, and every bound
//! with its counter.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rae_proto::{CommandReply, CommandRequest, DeviceRef, ErrorKind, Mac, Pong, ReplyBody};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

use super::*;
use crate::control::frame::{self, MAX_REPLY_FRAME};
use crate::control::{Job, JobReceiver, Origin};

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    dir: tempfile::TempDir,
    socket: Option<ControlSocket>,
    stop: watch::Sender<bool>,
    /// What the answerer was asked, with the origin.
    asked: mpsc::UnboundedReceiver<(CommandRequest, Origin)>,
}

impl Server {
    fn path(&self) -> PathBuf {
        self.dir.path().join("run/control.sock")
    }

    fn counters(&self) -> &SocketCounters {
        self.socket.as_ref().expect("server running").counters()
    }

    async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(socket) = self.socket.take() {
            socket.stop().await;
        }
    }
}

fn settings(dir: &tempfile::TempDir, limits: SocketLimits) -> SocketSettings {
    SocketSettings {
        path: dir.path().join("run/control.sock"),
        group: None,
        limits,
    }
}

/// Answers Ping with a Pong, every other request with unknown_device.
fn answer(mut jobs: JobReceiver, asked: mpsc::UnboundedSender<(CommandRequest, Origin)>) {
    tokio::spawn(async move {
        while let Some(Job {
            request,
            origin,
            reply,
        }) = jobs.recv().await
        {
            let answer = match &request {
                CommandRequest::Ping => CommandReply::Ok(ReplyBody::Pong(Pong {
                    version: "test".into(),
                    uptime_secs: 1,
                    sessions_open: 0,
                })),
                CommandRequest::Forget { device } => CommandReply::unknown_device(device),
                _ => CommandReply::internal(),
            };
            let _ = asked.send((request, origin));
            let _ = reply.send(answer);
        }
    });
}

fn start(limits: SocketLimits) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let (jobs_tx, jobs_rx) = crate::control::channel();
    let (asked_tx, asked) = mpsc::unbounded_channel();
    answer(jobs_rx, asked_tx);
    let (stop, stop_rx) = watch::channel(false);
    let socket = serve(&settings(&dir, limits), jobs_tx, stop_rx).expect("serving");
    Server {
        dir,
        socket: Some(socket),
        stop,
        asked,
    }
}

async fn connect(path: &Path) -> UnixStream {
    UnixStream::connect(path)
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()))
}

async fn send(stream: &mut UnixStream, request: &CommandRequest) {
    let bytes = request.encode().expect("encodable request");
    stream
        .write_all(&frame::encode(&bytes))
        .await
        .expect("request written");
}

/// The next reply, or None when the server closed the connection.
async fn reply(stream: &mut UnixStream) -> Option<CommandReply> {
    let body = tokio::time::timeout(WAIT, frame::read_async(stream, MAX_REPLY_FRAME))
        .await
        .expect("the server answered or closed within the deadline")
        .expect("a whole frame or a clean close")?;
    Some(CommandReply::decode(&body).expect("a reply"))
}

fn error_kind(reply: Option<CommandReply>) -> ErrorKind {
    match reply {
        Some(CommandReply::Error(error)) => error.kind,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

async fn wait_counter(what: &str, read: impl Fn() -> u64, at_least: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while read() < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "counter {what} never reached {at_least} (is {})",
            read()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn requests_in_sequence_on_one_connection_carry_the_peers_uid() {
    let mut server = start(SocketLimits::default());
    let path = server.path();
    let meta = std::fs::symlink_metadata(&path).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), nix::unistd::getegid().as_raw());

    let mut stream = connect(&path).await;
    send(&mut stream, &CommandRequest::Ping).await;
    assert!(matches!(
        reply(&mut stream).await,
        Some(CommandReply::Ok(ReplyBody::Pong(_)))
    ));
    let device = DeviceRef::Mac(Mac([2, 0, 0, 0, 0, 1]));
    send(&mut stream, &CommandRequest::Forget { device }).await;
    assert_eq!(
        error_kind(reply(&mut stream).await),
        ErrorKind::UnknownDevice
    );
    drop(stream);

    let uid = nix::unistd::getuid().as_raw();
    for expected in [CommandRequest::Ping, CommandRequest::Forget { device }] {
        let (request, origin) = server.asked.recv().await.expect("asked");
        assert_eq!(request, expected);
        assert_eq!(origin, Origin::Local { uid });
    }
    wait_counter(
        "replies",
        || server.counters().replies.load(Ordering::Relaxed),
        2,
    )
    .await;
    assert_eq!(server.counters().requests.load(Ordering::Relaxed), 2);
    assert_eq!(server.counters().connections.load(Ordering::Relaxed), 1);
    let entries = server.socket.as_ref().expect("running").entries();
    assert!(entries.contains(&("control.requests".into(), "2".into())));
    assert!(entries.contains(&("control.socket".into(), path.display().to_string())));

    server.stop().await;
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "the socket file is removed on shutdown"
    );
}

#[tokio::test]
async fn an_oversize_frame_is_answered_bad_request_and_closed() {
    let mut server = start(SocketLimits::default());
    let mut stream = connect(&server.path()).await;
    let len = u32::try_from(MAX_REQUEST_FRAME + 1).expect("small");
    stream
        .write_all(&len.to_be_bytes())
        .await
        .expect("header written");
    assert_eq!(error_kind(reply(&mut stream).await), ErrorKind::BadRequest);
    assert!(reply(&mut stream).await.is_none(), "then the server closes");
    assert_eq!(server.counters().oversize.load(Ordering::Relaxed), 1);
    // An empty frame is no request either.
    let mut stream = connect(&server.path()).await;
    stream.write_all(&[0, 0, 0, 0]).await.expect("written");
    assert_eq!(error_kind(reply(&mut stream).await), ErrorKind::BadRequest);
    assert_eq!(server.counters().oversize.load(Ordering::Relaxed), 2);
    server.stop().await;
}

#[tokio::test]
async fn garbage_is_answered_bad_request_and_closed() {
    let mut server = start(SocketLimits::default());
    for garbage in [&b"\x01\xff\xff\xff\xff"[..], b"\x00", b"GET / HTTP/1.1"] {
        let mut stream = connect(&server.path()).await;
        stream
            .write_all(&frame::encode(garbage))
            .await
            .expect("written");
        match reply(&mut stream).await {
            Some(CommandReply::Error(error)) => {
                assert_eq!(error.kind, ErrorKind::BadRequest);
                assert!(error.message.starts_with("undecodable request"), "{error}");
            }
            other => panic!("expected bad_request, got {other:?}"),
        }
        assert!(reply(&mut stream).await.is_none());
    }
    assert_eq!(server.counters().undecodable.load(Ordering::Relaxed), 3);
    assert_eq!(server.counters().requests.load(Ordering::Relaxed), 0);
    // A frame cut short: closed unanswered, counted.
    let mut stream = connect(&server.path()).await;
    stream.write_all(&[0, 0, 0, 9, 1]).await.expect("written");
    stream.shutdown().await.expect("half-closed");
    assert!(reply(&mut stream).await.is_none());
    wait_counter(
        "truncated",
        || server.counters().truncated.load(Ordering::Relaxed),
        1,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_after_the_read_timeout() {
    let mut server = start(SocketLimits {
        read_timeout: Duration::from_millis(200),
        ..SocketLimits::default()
    });
    let mut stream = connect(&server.path()).await;
    // Half a header, then nothing.
    stream.write_all(&[0, 0]).await.expect("written");
    assert!(reply(&mut stream).await.is_none());
    assert_eq!(server.counters().read_timeouts.load(Ordering::Relaxed), 1);
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_rate_limited() {
    let mut server = start(SocketLimits {
        max_connections: 1,
        ..SocketLimits::default()
    });
    let mut first = connect(&server.path()).await;
    // The first one is being served: its request is answered.
    send(&mut first, &CommandRequest::Ping).await;
    assert!(matches!(reply(&mut first).await, Some(CommandReply::Ok(_))));
    let mut second = connect(&server.path()).await;
    assert_eq!(error_kind(reply(&mut second).await), ErrorKind::RateLimited);
    assert_eq!(server.counters().refused_busy.load(Ordering::Relaxed), 1);
    drop(first);
    // Its slot frees once the server sees the close.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut third = connect(&server.path()).await;
        send(&mut third, &CommandRequest::Ping).await;
        match reply(&mut third).await {
            Some(CommandReply::Ok(_)) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "the slot never freed: {other:?}"
            ),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_full_job_queue_and_a_silent_core_are_answered_and_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (jobs_tx, mut jobs_rx) = mpsc::channel::<Job>(1);
    let (stop, stop_rx) = watch::channel(false);
    let limits = SocketLimits {
        reply_timeout: Duration::from_millis(300),
        ..SocketLimits::default()
    };
    let socket = serve(&settings(&dir, limits), jobs_tx, stop_rx).expect("serving");
    let path = socket.path().to_owned();
    // The first request fills the queue (nobody takes it yet).
    let mut first = connect(&path).await;
    send(&mut first, &CommandRequest::Ping).await;
    let counters = Arc::clone(socket.counters());
    wait_counter("requests", || counters.requests.load(Ordering::Relaxed), 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while jobs_rx.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no job queued");
        tokio::task::yield_now().await;
    }
    let mut second = connect(&path).await;
    send(&mut second, &CommandRequest::Ping).await;
    assert_eq!(error_kind(reply(&mut second).await), ErrorKind::RateLimited);
    assert_eq!(counters.queue_full.load(Ordering::Relaxed), 1);
    // The core takes the first job and never answers: `internal` after the reply timeout.
    let held = jobs_rx.recv().await.expect("the first job");
    assert_eq!(error_kind(reply(&mut first).await), ErrorKind::Internal);
    assert_eq!(counters.reply_timeouts.load(Ordering::Relaxed), 1);
    // The core drops a job (it is stopping): the connection closes unanswered.
    drop(held);
    send(&mut first, &CommandRequest::Ping).await;
    drop(jobs_rx.recv().await.expect("the third job"));
    assert!(reply(&mut first).await.is_none());
    let _ = stop.send(true);
    socket.stop().await;
    assert!(std::fs::symlink_metadata(&path).is_err());
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("run/control.sock");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    // A crash leaves the file: bound, then the listener gone.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bound"));
    let stale_ino = std::fs::symlink_metadata(&path).expect("left").ino();
    let (jobs_tx, jobs_rx) = crate::control::channel();
    answer(jobs_rx, mpsc::unbounded_channel().0);
    let (stop, stop_rx) = watch::channel(false);
    let limits = SocketLimits::default();
    let socket = serve(&settings(&dir, limits), jobs_tx.clone(), stop_rx.clone())
        .expect("a stale socket is replaced");
    assert_ne!(
        std::fs::symlink_metadata(&path).expect("new").ino(),
        stale_ino
    );

    // A second server on the same path: the first one answers, so start-up fails.
    let err = serve(&settings(&dir, limits), jobs_tx.clone(), stop_rx.clone())
        .expect_err("a live socket is refused");
    assert!(matches!(err, ControlError::InUse { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains("another rae-agent is already listening"));
    // ... and the running one keeps its socket.
    let mut stream = connect(&path).await;
    send(&mut stream, &CommandRequest::Ping).await;
    assert!(matches!(
        reply(&mut stream).await,
        Some(CommandReply::Ok(_))
    ));
    let _ = stop.send(true);
    socket.stop().await;
    assert!(std::fs::symlink_metadata(&path).is_err());

    // Something else at the path is never removed.
    std::fs::write(&path, b"not a socket").expect("file written");
    let err = serve(&settings(&dir, limits), jobs_tx, stop_rx).expect_err("refused");
    assert!(matches!(err, ControlError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).expect("still there"), b"not a socket");
}

#[tokio::test]
async fn the_socket_takes_the_configured_group_and_an_unknown_one_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let own = nix::unistd::Group::from_gid(nix::unistd::getegid())
        .expect("group lookup")
        .expect("the process's group has a name");
    let (jobs_tx, _jobs_rx) = crate::control::channel();
    let (_stop, stop_rx) = watch::channel(false);
    let mut settings = settings(&dir, SocketLimits::default());
    settings.group = Some(own.name.clone());
    let socket = serve(&settings, jobs_tx.clone(), stop_rx.clone()).expect("serving");
    let meta = std::fs::symlink_metadata(socket.path()).expect("socket");
    assert_eq!(meta.gid(), own.gid.as_raw());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let path = socket.path().to_owned();
    // Stopped without the shutdown signal (the daemon ending on an error): the file goes too.
    socket.stop().await;
    assert!(std::fs::symlink_metadata(&path).is_err());

    settings.group = Some("rae-no-such-group".into());
    let err = serve(&settings, jobs_tx, stop_rx).expect_err("unknown group");
    assert_eq!(
        err.to_string(),
        "agent.control_group \"rae-no-such-group\": no such group on this system"
    );
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "no socket is created"
    );
}

#[tokio::test]
async fn a_live_socket_with_a_full_backlog_is_refused_without_waiting() {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("run/control.sock");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    // A stuck agent: listening, never accepting. Its backlog is filled until EAGAIN.
    let _stuck = std::os::unix::net::UnixListener::bind(&path).expect("bound");
    let addr = UnixAddr::new(&path).expect("address");
    let mut held = Vec::new();
    let full = (0..100_000).any(|_| {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK,
            None,
        )
        .expect("socket");
        let refused =
            connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) == Err(nix::Error::EAGAIN);
        held.push(fd);
        refused
    });
    assert!(
        full,
        "the backlog never filled after {} connects",
        held.len()
    );
    let (jobs_tx, _jobs_rx) = crate::control::channel();
    let (_stop, stop_rx) = watch::channel(false);
    let err = serve(&settings(&dir, SocketLimits::default()), jobs_tx, stop_rx)
        .expect_err("a live socket is refused");
    assert!(matches!(err, ControlError::InUse { .. }), "{err:?}");
}
