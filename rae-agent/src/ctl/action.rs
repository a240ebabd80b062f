//! The action side of `raectl`: one request to the running agent over its control socket
//! (frames in [`crate::control::frame`]), its reply rendered for a person or as JSON.
//!
//! `raectl` never writes the database: an action is carried out by the agent, whose core
//! decides it exactly as it decides the same cloud command. Failures are told apart so that
//! scripts can act on them: the agent not running (exit 2), the agent refusing or failing the
//! action, no permission on the socket, no reply in time (exit 1).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rae_proto::{CommandError, CommandReply, CommandRequest, ReplyBody, SessionSeq};
use serde_json::{json, Value};

use crate::config::{Config, ConfigError, Overrides};
use crate::control::frame::{self, FrameError, MAX_REPLY_FRAME};

use super::format::{duration_ms, terminal_safe};

/// Where the agent listens when no configuration says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/rae-agent/control.sock";
/// How long `raectl` waits for a reply by default: the agent answers after the action's
/// commit, well within this even for a resync of every session at the cap.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why an action did not happen. The messages are whole sentences for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(
        "cannot read the agent configuration to find the control socket \
         (or name it with --socket PATH)"
    )]
    Config(#[source] ConfigError),
    #[error("rae-agent is not running (no control socket at {path})")]
    NoSocket { path: PathBuf },
    #[error(
        "rae-agent is not running (nothing listens on the control socket {path}; \
         the file was left by an agent that stopped)"
    )]
    Refused { path: PathBuf },
    #[error("permission denied on the control socket {path}: {who}")]
    PermissionDenied { path: PathBuf, who: String },
    #[error(
        "rae-agent is not taking connections on the control socket {path} (its queue is \
         full: it may be stuck; see `journalctl -u rae-agent`)"
    )]
    Busy { path: PathBuf },
    #[error(
        "rae-agent did not reply within {} (control socket {path}); the action may still \
         take effect: check with `raectl show`",
        duration_ms(i64::try_from(waited.as_millis()).unwrap_or(i64::MAX))
    )]
    Timeout { path: PathBuf, waited: Duration },
    #[error(
        "rae-agent closed the connection without a reply (control socket {path}); \
         it may be stopping: see `journalctl -u rae-agent`"
    )]
    NoReply { path: PathBuf },
    #[error("cannot talk to rae-agent on the control socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rae-agent's reply on {path} is not one this raectl understands")]
    BadReply {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The agent answered with an error: it refused or failed the action.
    #[error("rae-agent answered {0}")]
    Agent(CommandError),
}

impl ActionError {
    /// 2 when the agent is not running (as for bad usage: nothing was tried), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ActionError::NoSocket { .. } | ActionError::Refused { .. } => 2,
            _ => 1,
        }
    }
}

/// Why raectl talks to the socket it talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketOrigin {
    Flag,
    Config(PathBuf),
    /// No configuration file: the built-in path.
    BuiltIn,
}

/// `--socket PATH`, else `agent.control_socket` of the configuration (`-c FILE`, else the
/// default file when it exists), else [`DEFAULT_CONTROL_SOCKET`].
pub fn locate_socket(
    flag: Option<&Path>,
    config: Option<&Path>,
    default_config: &Path,
) -> Result<(PathBuf, SocketOrigin), ActionError> {
    if let Some(path) = flag {
        return Ok((path.to_owned(), SocketOrigin::Flag));
    }
    let file = match config {
        Some(file) => file,
        None if !default_config.exists() => {
            return Ok((PathBuf::from(DEFAULT_CONTROL_SOCKET), SocketOrigin::BuiltIn))
        }
        None => default_config,
    };
    let loaded = Config::load(file, &Overrides::default()).map_err(ActionError::Config)?;
    Ok((
        loaded.agent.control_socket,
        SocketOrigin::Config(file.to_owned()),
    ))
}

/// Sends `request` to the agent at `path` and waits up to `timeout` for the reply. An error
/// reply comes back as [`ActionError::Agent`].
pub fn send(
    path: &Path,
    request: &CommandRequest,
    timeout: Duration,
) -> Result<ReplyBody, ActionError> {
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ActionError::Timeout {
            path: path.to_owned(),
            waited: timeout,
        },
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ActionError::NoReply {
            path: path.to_owned(),
        },
        _ => ActionError::Io {
            path: path.to_owned(),
            source,
        },
    };
    let mut stream = connect(path)?;
    let timeout = timeout.max(Duration::from_millis(1));
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let bytes = request.encode().map_err(|source| ActionError::BadReply {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    frame::write_blocking(&mut stream, &bytes).map_err(io_err)?;
    let body = match frame::read_blocking(&mut stream, MAX_REPLY_FRAME) {
        Ok(body) => body,
        Err(FrameError::Truncated) => {
            return Err(ActionError::NoReply {
                path: path.to_owned(),
            })
        }
        Err(FrameError::Io(source)) => return Err(io_err(source)),
        Err(err) => {
            return Err(ActionError::BadReply {
                path: path.to_owned(),
                source: Box::new(err),
            })
        }
    };
    match CommandReply::decode(&body) {
        Ok(CommandReply::Ok(body)) => Ok(body),
        Ok(CommandReply::Error(error)) => Err(ActionError::Agent(error)),
        Err(source) => Err(ActionError::BadReply {
            path: path.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// Connects without blocking: a blocking connect would wait, past any timeout, on an agent
/// whose backlog is full (stuck); that is [`ActionError::Busy`] instead.
fn connect(path: &Path) -> Result<UnixStream, ActionError> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let io_err = |source: io::Error| ActionError::Io {
        path: path.to_owned(),
        source,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|errno| io_err(errno.into()))?;
    let addr = UnixAddr::new(path).map_err(|errno| io_err(errno.into()))?;
    if let Err(errno) = nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
        if errno == nix::Error::EAGAIN {
            return Err(ActionError::Busy {
                path: path.to_owned(),
            });
        }
        let source = io::Error::from(errno);
        return Err(match source.kind() {
            io::ErrorKind::NotFound => ActionError::NoSocket {
                path: path.to_owned(),
            },
            io::ErrorKind::ConnectionRefused => ActionError::Refused {
                path: path.to_owned(),
            },
            io::ErrorKind::PermissionDenied => ActionError::PermissionDenied {
                path: path.to_owned(),
                who: who_may(path),
            },
            _ => io_err(source),
        });
    }
    let stream = UnixStream::from(fd);
    // Reads and writes block, bounded by the timeouts `send` sets.
    stream.set_nonblocking(false).map_err(io_err)?;
    Ok(stream)
}

/// Who may use the socket, from its group (or its directory's, when this user cannot even
/// look at the socket): said when permission is denied.
fn who_may(path: &Path) -> String {
    let gid = std::fs::metadata(path)
        .or_else(|_| std::fs::metadata(path.parent().unwrap_or(Path::new("/"))))
        .map(|meta| meta.gid());
    let name = gid.ok().map(|gid| {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map_or_else(|| format!("gid {gid}"), |group| group.name)
    });
    match name {
        Some(group) => format!(
            "only root and members of group {group} may use it \
             (`usermod -aG {group} USER`, then log in again)"
        ),
        None => "run raectl as root or as a member of the agent's group".to_owned(),
    }
}

/// A device's session and seq, as the lines say them.
fn session_seq(one: &SessionSeq) -> String {
    format!("session {} seq {}", one.session, one.seq)
}

/// The line (or lines) saying what was done.
pub fn reply_text(request: &CommandRequest, body: &ReplyBody) -> String {
    let what = match request {
        CommandRequest::SetAvailability {
            device,
            availability,
        } => format!("{device}: availability set to {availability}"),
        CommandRequest::SetEsn {
            device,
            esn: Some(esn),
        } => format!("{device}: ESN set to {}", terminal_safe(esn)),
        CommandRequest::SetEsn { device, esn: None } => format!("{device}: ESN cleared"),
        CommandRequest::Resync {
            device: Some(device),
        } => format!("{device}: resynced"),
        CommandRequest::Resync { device: None } => "resynced".to_owned(),
        CommandRequest::Forget { device } => format!("{device}: forgotten, session closed"),
        CommandRequest::Inventory => "inventory published".to_owned(),
        CommandRequest::Ping => "rae-agent is running".to_owned(),
    };
    match body {
        ReplyBody::Done => format!("{what}\n"),
        ReplyBody::Device(one) => format!("{what} ({})\n", session_seq(one)),
        ReplyBody::Sessions(many) => {
            let mut text = match (request, many.as_slice()) {
                (CommandRequest::Resync { device: Some(_) }, [one]) => {
                    return format!("{what} ({})\n", session_seq(one))
                }
                (_, []) => format!("{what}: no open session\n"),
                (_, [_]) => format!("{what}: 1 session, a Snapshot each\n"),
                (_, all) => format!("{what}: {} sessions, a Snapshot each\n", all.len()),
            };
            for one in many {
                text.push_str(&format!("  {}\n", session_seq(one)));
            }
            text
        }
        ReplyBody::Inventory(inventory) => {
            format!("{what}: {} open sessions\n", inventory.sessions.len())
        }
        ReplyBody::Pong(pong) => format!(
            "rae-agent {} is running: up {}, {} session{} open\n",
            terminal_safe(&pong.version),
            duration_ms(i64::try_from(pong.uptime_secs.saturating_mul(1000)).unwrap_or(i64::MAX)),
            pong.sessions_open,
            if pong.sessions_open == 1 { "" } else { "s" }
        ),
    }
}

fn seq_json(one: &SessionSeq) -> Value {
    json!({ "session": one.session.to_string(), "seq": one.seq })
}

fn request_json(request: &CommandRequest) -> Value {
    let device = |d: &rae_proto::DeviceRef| json!(d.to_string());
    let mut object = json!({ "command": request.kind().topic_level() });
    match request {
        CommandRequest::SetAvailability {
            device: d,
            availability,
        } => {
            object["device"] = device(d);
            object["availability"] = json!(availability.as_str());
        }
        CommandRequest::SetEsn { device: d, esn } => {
            object["device"] = device(d);
            object["esn"] = json!(esn);
        }
        CommandRequest::Resync { device: d } => object["device"] = json!(d.map(|d| d.to_string())),
        CommandRequest::Forget { device: d } => object["device"] = device(d),
        CommandRequest::Inventory | CommandRequest::Ping => {}
    }
    object
}

/// `{"ok": true, "request": {...}, "reply": {...}}`.
pub fn reply_json(request: &CommandRequest, body: &ReplyBody) -> Value {
    let reply = match body {
        ReplyBody::Done => json!({ "done": true }),
        ReplyBody::Device(one) => seq_json(one),
        ReplyBody::Sessions(many) => {
            json!({ "sessions": many.iter().map(seq_json).collect::<Vec<_>>() })
        }
        ReplyBody::Inventory(inventory) => json!({
            "sessions": inventory.sessions.iter().map(seq_json).collect::<Vec<_>>()
        }),
        ReplyBody::Pong(pong) => json!({
            "version": pong.version,
            "uptime_secs": pong.uptime_secs,
            "sessions_open": pong.sessions_open,
        }),
    };
    json!({ "ok": true, "request": request_json(request), "reply": reply })
}

/// `{"ok": false, "request": {...}, "error": {"kind": ..., "message": ...}}`; `kind` is the
/// agent's [`ErrorKind`](rae_proto::ErrorKind), or `not_running`, `permission_denied`,
/// `timeout`, `no_reply`, `io`, `bad_reply`, `config` for what happened on this side.
pub fn error_json(request: &CommandRequest, err: &ActionError) -> Value {
    let (kind, message) = match err {
        ActionError::Agent(error) => (error.kind.as_str(), error.message.clone()),
        other => (
            match other {
                ActionError::NoSocket { .. } | ActionError::Refused { .. } => "not_running",
                ActionError::PermissionDenied { .. } => "permission_denied",
                ActionError::Timeout { .. } | ActionError::Busy { .. } => "timeout",
                ActionError::NoReply { .. } => "no_reply",
                ActionError::BadReply { .. } => "bad_reply",
                ActionError::Config(_) => "config",
                ActionError::Io { .. } | ActionError::Agent(_) => "io",
            },
            crate::error_chain(other),
        ),
    };
    json!({
        "ok": false,
        "request": request_json(request),
        "error": { "kind": kind, "message": message },
    })
}

#[cfg(test)]
#[path = "action_tests.rs"]
mod tests;
