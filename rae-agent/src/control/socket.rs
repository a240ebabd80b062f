//! The control Unix socket: `raectl` actions in, one [`Job`] per request to the core task,
//! its [`CommandReply`] back (framing in [`super::frame`]).
//!
//! Who may act is decided by the file system: the socket is mode 0660, owned by the agent's
//! user and by `agent.control_group` (else the agent's own group), so only those users (and
//! root) can connect. The peer's uid (SO_PEERCRED) names the actor in the history.
//!
//! Start-up claims the path: a socket file nobody answers on (left by a crash) is replaced,
//! one that answers belongs to a running agent and start-up fails, anything else at the path
//! is left alone and start-up fails. The new socket is bound under a temporary name, given its
//! mode and group, then renamed into place, so the path never shows a socket with other
//! permissions. The file is removed when the server stops (or its task is dropped).
//!
//! Bounds: at most [`SocketLimits::max_connections`] connections at once (more are answered
//! `rate_limited` and closed), each frame must arrive within [`SocketLimits::read_timeout`],
//! a request larger than [`MAX_REQUEST_FRAME`] or one that does not decode is answered
//! `bad_request` and the connection closed, a full job queue is answered `rate_limited`.
//! Each refusal is counted in the `control.*` status entries.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rae_proto::{CommandError, CommandReply, CommandRequest, ErrorKind};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc::error::TrySendError, oneshot, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::frame::{self, FrameError, MAX_REQUEST_FRAME};
use super::{Job, JobSender, Origin};

/// The socket's mode: the agent's user and its group read and write (connect), nobody else.
pub const SOCKET_MODE: u32 = 0o660;

/// After a failed accept (out of file descriptors), wait this long before the next, so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The bounds on what peers can make the server hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Connections served at once; `raectl` opens one per action.
    pub max_connections: usize,
    /// Each frame (and the wait for the next one) must complete within this.
    pub read_timeout: Duration,
    /// How long a connection waits for the core's reply before answering `internal`.
    pub reply_timeout: Duration,
    /// How long writing a reply may take (a peer that stops reading).
    pub write_timeout: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        SocketLimits {
            max_connections: 16,
            read_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the socket goes and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSettings {
    pub path: PathBuf,
    /// A group name (`agent.control_group`); `None`: the agent's own group.
    pub group: Option<String>,
    pub limits: SocketLimits,
}

impl SocketSettings {
    pub fn from_config(config: &crate::config::Config) -> SocketSettings {
        SocketSettings {
            path: config.agent.control_socket.clone(),
            group: config.agent.control_group.clone(),
            limits: SocketLimits::default(),
        }
    }
}

/// Why the control socket could not be set up. Each message names the path (or group) and what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("agent.control_group {group:?}: no such group on this system")]
    UnknownGroup { group: String },
    #[error("agent.control_group {group:?}: cannot look the group up")]
    GroupLookup {
        group: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create the control socket's directory {path}")]
    Directory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} exists and is not a socket; refusing to replace it (remove it, or set \
         agent.control_socket to another path)"
    )]
    NotASocket { path: PathBuf },
    #[error(
        "another rae-agent is already listening on the control socket {path}; stop it first \
         (or give this one another agent.control_socket and state_dir)"
    )]
    InUse { path: PathBuf },
    #[error("cannot tell whether the control socket {path} is still in use")]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set mode 0660 on the control socket {path}")]
    Mode {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot give the control socket {path} to group {group:?} (the agent's user must be \
         a member of that group)"
    )]
    Chown {
        path: PathBuf,
        group: String,
        #[source]
        source: io::Error,
    },
}

/// What the server counted; shown by `raectl status` as `control.*`.
#[derive(Debug, Default)]
pub struct SocketCounters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    /// Connections over `max_connections`, answered `rate_limited`.
    pub refused_busy: AtomicU64,
    /// Frames announcing more than [`MAX_REQUEST_FRAME`] (or nothing), answered `bad_request`.
    pub oversize: AtomicU64,
    /// Frames that are no request, answered `bad_request`.
    pub undecodable: AtomicU64,
    /// Connections closed inside a frame.
    pub truncated: AtomicU64,
    /// Connections that sent no whole frame within `read_timeout`.
    pub read_timeouts: AtomicU64,
    /// Requests refused because the core's job queue was full (`rate_limited`).
    pub queue_full: AtomicU64,
    /// Requests the core did not answer within `reply_timeout` (`internal`).
    pub reply_timeouts: AtomicU64,
    /// Replies that could not be encoded (`internal` sent instead; the cause is logged).
    pub reply_encode_errors: AtomicU64,
    /// Replies not delivered: the peer left or stopped reading.
    pub write_errors: AtomicU64,
    /// Peers whose credentials could not be read (closed unanswered).
    pub peer_unknown: AtomicU64,
    pub accept_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl SocketCounters {
    /// The `control.*` status entries.
    pub fn entries(&self, path: &Path) -> Vec<(String, String)> {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        let mut out = vec![("control.socket".to_owned(), path.display().to_string())];
        for (key, counter) in [
            ("connections", &self.connections),
            ("requests", &self.requests),
            ("replies", &self.replies),
            ("refused_busy", &self.refused_busy),
            ("oversize", &self.oversize),
            ("undecodable", &self.undecodable),
            ("truncated", &self.truncated),
            ("read_timeouts", &self.read_timeouts),
            ("queue_full", &self.queue_full),
            ("reply_timeouts", &self.reply_timeouts),
            ("reply_encode_errors", &self.reply_encode_errors),
            ("write_errors", &self.write_errors),
            ("peer_unknown", &self.peer_unknown),
            ("accept_errors", &self.accept_errors),
        ] {
            out.push((format!("control.{key}"), read(counter)));
        }
        out
    }
}

/// The running server. Dropping it ends the server too (a start-up that fails later leaves
/// no socket behind).
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    counters: Arc<SocketCounters>,
    task: Option<JoinHandle<()>>,
}

impl ControlSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn counters(&self) -> &Arc<SocketCounters> {
        &self.counters
    }

    /// The `control.*` status entries.
    pub fn entries(&self) -> Vec<(String, String)> {
        self.counters.entries(&self.path)
    }

    /// Ends the server now and waits until it has: open connections are dropped (their peers
    /// see the close), the socket file is removed. Called once the core loop has ended, so no
    /// reply is lost that could still have been given.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Claims `settings.path`, and serves it until `shutdown` turns true. Every request becomes a
/// [`Job`] on `jobs`.
pub fn serve(
    settings: &SocketSettings,
    jobs: JobSender,
    shutdown: watch::Receiver<bool>,
) -> Result<ControlSocket, ControlError> {
    let gid = settings.group.as_deref().map(resolve_group).transpose()?;
    let path = settings.path.clone();
    let (listener, file) = claim(&path, settings.group.as_deref().zip(gid))?;
    let counters = Arc::new(SocketCounters::default());
    info!(path = %path.display(), group = ?settings.group, "control socket listening");
    let task = tokio::spawn(accept_loop(
        listener,
        file,
        jobs,
        Arc::clone(&counters),
        settings.limits,
        shutdown,
    ));
    Ok(ControlSocket {
        path,
        counters,
        task: Some(task),
    })
}

/// The gid of group `name`.
pub fn resolve_group(name: &str) -> Result<u32, ControlError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(ControlError::UnknownGroup {
            group: name.to_owned(),
        }),
        Err(source) => Err(ControlError::GroupLookup {
            group: name.to_owned(),
            source,
        }),
    }
}

/// The socket file this server created; removed on drop if it is still that file.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if !ours {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => debug!(path = %self.path.display(), "control socket removed"),
            Err(err) => {
                warn!(path = %self.path.display(), %err, "cannot remove the control socket")
            }
        }
    }
}

/// Replaces a stale socket, refuses a live one, binds with the mode and group set before the
/// socket appears at `path`.
fn claim(
    path: &Path,
    group: Option<(&str, u32)>,
) -> Result<(UnixListener, SocketFile), ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::Directory {
            path: dir.to_owned(),
            source,
        })?;
    }
    check_existing(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| bind_err(io::Error::other("the path names no file")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    // Only a socket of ours (same pid, an earlier attempt) can be there.
    if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&tmp);
    }
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(bind_err)?;
    let prepared = prepare(&tmp, path, group);
    if let Err(err) = prepared {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = UnixListener::from_std(std_listener).map_err(bind_err)?;
    Ok((listener, file))
}

/// Mode, group, then the rename that makes the socket visible at `path`.
fn prepare(tmp: &Path, path: &Path, group: Option<(&str, u32)>) -> Result<(), ControlError> {
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
        |source| ControlError::Mode {
            path: path.to_owned(),
            source,
        },
    )?;
    if let Some((name, gid)) = group {
        std::os::unix::fs::chown(tmp, None, Some(gid)).map_err(|source| ControlError::Chown {
            path: path.to_owned(),
            group: name.to_owned(),
            source,
        })?;
    }
    std::fs::rename(tmp, path).map_err(|source| ControlError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Fine when nothing is at `path` or a socket nobody answers on (it is replaced).
fn check_existing(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Probe {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_owned(),
        });
    }
    match probe_connect(path) {
        // EAGAIN: a listener whose backlog is full, so alive.
        Ok(()) | Err(nix::Error::EAGAIN) => Err(ControlError::InUse {
            path: path.to_owned(),
        }),
        Err(errno) => match io::Error::from(errno) {
            err if err.kind() == io::ErrorKind::ConnectionRefused => {
                info!(path = %path.display(), "replacing the control socket an earlier run left behind");
                Ok(())
            }
            // Removed between the two looks.
            err if err.kind() == io::ErrorKind::NotFound => Ok(()),
            source => Err(ControlError::Probe {
                path: path.to_owned(),
                source,
            }),
        },
    }
}

/// A non-blocking connect to `path`: a blocking one would wait on a live listener whose
/// backlog is full (a stuck agent) and hang this start-up.
fn probe_connect(path: &Path) -> Result<(), nix::Error> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
}

async fn accept_loop(
    listener: UnixListener,
    file: SocketFile,
    jobs: JobSender,
    counters: Arc<SocketCounters>,
    limits: SocketLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    // Dropped last: the file goes when the listener and every connection have.
    let _file = file;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                bump(&counters.accept_errors);
                if crate::log_limit::allow("control.accept_failed") {
                    warn!(%err, "control socket: accept failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        bump(&counters.connections);
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            bump(&counters.refused_busy);
            refuse_busy(&stream, limits.max_connections);
            continue;
        };
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(err) => {
                bump(&counters.peer_unknown);
                debug!(%err, "control socket: no peer credentials; closed");
                continue;
            }
        };
        let jobs = jobs.clone();
        let counters = Arc::clone(&counters);
        connections.spawn(async move {
            serve_connection(stream, uid, &jobs, &counters, limits).await;
            drop(slot);
        });
    }
    connections.shutdown().await;
    drop(listener);
}

/// A connection over the cap gets its answer without a task: a fresh socket's send buffer
/// takes a short frame at once, and if it does not, the peer just sees the close.
fn refuse_busy(stream: &UnixStream, max: usize) {
    let reply = CommandReply::Error(CommandError {
        kind: ErrorKind::RateLimited,
        message: format!("the agent serves at most {max} control connections at once; try again"),
    });
    if let Ok(bytes) = reply.encode() {
        let _ = stream.try_write(&frame::encode(&bytes));
    }
}

/// Requests in sequence until the peer closes, a frame is refused, or the agent stops.
async fn serve_connection(
    mut stream: UnixStream,
    uid: u32,
    jobs: &JobSender,
    counters: &SocketCounters,
    limits: SocketLimits,
) {
    loop {
        let read = tokio::time::timeout(
            limits.read_timeout,
            frame::read_async(&mut stream, MAX_REQUEST_FRAME),
        )
        .await;
        let body = match read {
            Err(_) => {
                bump(&counters.read_timeouts);
                debug!(uid, "control connection: no whole frame in time; closed");
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(body))) => body,
            Ok(Err(err @ (FrameError::Oversize { .. } | FrameError::Empty))) => {
                bump(&counters.oversize);
                debug!(uid, %err, "control connection: frame refused");
                let reply = CommandReply::bad_request(format!(
                    "{err} (a request is at most {MAX_REQUEST_FRAME} bytes)"
                ));
                write_reply(&mut stream, &reply, counters, limits).await;
                return;
            }
            Ok(Err(err)) => {
                bump(&counters.truncated);
                debug!(uid, cause = %crate::error_chain(&err), "control connection ended inside a frame");
                return;
            }
        };
        let request = match CommandRequest::decode(&body) {
            Ok(request) => request,
            Err(err) => {
                bump(&counters.undecodable);
                debug!(uid, %err, "control connection: undecodable request");
                let reply = CommandReply::bad_request(format!("undecodable request: {err}"));
                write_reply(&mut stream, &reply, counters, limits).await;
                return;
            }
        };
        bump(&counters.requests);
        let Some(reply) = dispatch(request, uid, jobs, counters, limits.reply_timeout).await else {
            // The agent is stopping: the peer sees the connection close.
            return;
        };
        if !write_reply(&mut stream, &reply, counters, limits).await {
            return;
        }
    }
}

/// The core's reply, or the refusal this side decides; `None` when the agent is stopping.
async fn dispatch(
    request: CommandRequest,
    uid: u32,
    jobs: &JobSender,
    counters: &SocketCounters,
    reply_timeout: Duration,
) -> Option<CommandReply> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request,
        origin: Origin::Local { uid },
        reply,
    };
    match jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            bump(&counters.queue_full);
            return Some(CommandReply::rate_limited());
        }
        Err(TrySendError::Closed(_)) => return None,
    }
    match tokio::time::timeout(reply_timeout, answer).await {
        Ok(Ok(reply)) => Some(reply),
        Ok(Err(_)) => None,
        Err(_) => {
            bump(&counters.reply_timeouts);
            if crate::log_limit::allow("control.reply_timeout") {
                warn!(
                    uid,
                    "control socket: the core did not answer a command within {reply_timeout:?}"
                );
            }
            Some(CommandReply::internal())
        }
    }
}

/// Writes one reply frame; false when it could not (the connection is done).
async fn write_reply(
    stream: &mut UnixStream,
    reply: &CommandReply,
    counters: &SocketCounters,
    limits: SocketLimits,
) -> bool {
    let bytes = match reply.encode() {
        Ok(bytes) => bytes,
        Err(err) => {
            bump(&counters.reply_encode_errors);
            warn!(cause = %crate::error_chain(&err), "control socket: reply not encodable; answering internal");
            match CommandReply::internal().encode() {
                Ok(bytes) => bytes,
                Err(_) => return false,
            }
        }
    };
    let framed = frame::encode(&bytes);
    match tokio::time::timeout(limits.write_timeout, stream.write_all(&framed)).await {
        Ok(Ok(())) => {
            bump(&counters.replies);
            true
        }
        Ok(Err(err)) => {
            bump(&counters.write_errors);
            debug!(%err, "control connection: reply not delivered");
            false
        }
        Err(_) => {
            bump(&counters.write_errors);
            debug!("control connection: peer stopped reading; closed");
            false
        }
    }
}

#[cfg(test)]
#[path = "socket_tests.rs"]
mod tests;
