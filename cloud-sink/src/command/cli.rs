//! `cloud-sink command --serial S <command> [args]`: one request, its reply printed, and an
//! exit status that tells success, a refusal and a timeout apart (see [`Exit`]).

use std::time::Duration;

use rae_proto::{CommandReply, CommandRequest, DeviceRef, ReplyBody, RequesterId, Serial};
use serde_json::{json, Value};

use super::requester::{Request, RequestError, Requester};
use crate::config::{CommandAction, CommandArgs};
use crate::mqtt_connect;

/// The exit status of `cloud-sink command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The RAE carried out the command.
    Done = 0,
    /// The RAE refused it (an error reply).
    Refused = 1,
    /// Usage error, broker unreachable, or a reply that does not decode.
    Failed = 2,
    /// No reply within the timeout.
    Timeout = 3,
}

/// Runs the subcommand; prints to stdout (the reply) and stderr (what went wrong).
pub async fn run(args: &CommandArgs) -> Exit {
    let (serial, requester, body) = match parse(args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("cloud-sink command: {message}");
            return Exit::Failed;
        }
    };
    let client_id = args
        .broker
        .mqtt_client_id
        .clone()
        .unwrap_or_else(|| format!("cloud-sink-{requester}"));
    let options = match mqtt_connect::options(&args.broker, &client_id) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("cloud-sink command: {e}");
            return Exit::Failed;
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let request = Request::new(serial, body);
    let client = match Requester::connect(options, requester.clone(), timeout).await {
        Ok(client) => client,
        Err(e) => return report_failure(args, &requester, &request, &e),
    };
    let result = client.send(&request, timeout).await;
    client.disconnect().await;
    match result {
        Ok(answer) => {
            if args.json {
                println!(
                    "{}",
                    json!({
                        "serial": answer.serial.as_str(),
                        "requester": requester.as_str(),
                        "command": request.body.kind().topic_level(),
                        // What was sent, and what the reply carried (the same, or the
                        // reply would not have matched).
                        "correlation": hex(&request.correlation),
                        "reply_correlation": hex(&answer.correlation),
                        "round_trip_ms": answer.round_trip.as_secs_f64() * 1000.0,
                        "outcome": outcome(&answer.reply),
                        "reply": reply_json(&answer.reply),
                    })
                );
            } else {
                println!("{}", reply_text(&request, &answer.reply));
            }
            match answer.reply {
                CommandReply::Ok(_) => Exit::Done,
                CommandReply::Error(_) => Exit::Refused,
            }
        }
        Err(e) => report_failure(args, &requester, &request, &e),
    }
}

fn parse(args: &CommandArgs) -> Result<(Serial, RequesterId, CommandRequest), String> {
    let serial = Serial::new(args.serial.clone()).map_err(|e| format!("--serial: {e}"))?;
    let requester = match &args.requester {
        Some(id) => RequesterId::new(id.clone()).map_err(|e| format!("--requester: {e}"))?,
        None => {
            let suffix = uuid::Uuid::new_v4().simple().to_string();
            RequesterId::new(format!("cli-{}", &suffix[..12]))
                .map_err(|e| format!("requester id: {e}"))?
        }
    };
    let device = |text: &str| {
        text.parse::<DeviceRef>()
            .map_err(|e| format!("device {text:?}: {e}"))
    };
    let body = match &args.action {
        CommandAction::SetAvailability {
            device: d,
            availability,
        } => CommandRequest::SetAvailability {
            device: device(d)?,
            availability: (*availability).into(),
        },
        CommandAction::SetEsn {
            device: d,
            esn,
            clear,
        } => {
            let esn = match (esn, clear) {
                (_, true) => None,
                (Some(esn), false) => {
                    rae_proto::check_esn(esn).map_err(|e| format!("ESN: {e}"))?;
                    Some(esn.clone())
                }
                (None, false) => return Err("set-esn needs an ESN or --clear".into()),
            };
            CommandRequest::SetEsn {
                device: device(d)?,
                esn,
            }
        }
        CommandAction::Resync { device: d } => CommandRequest::Resync {
            device: d.as_deref().map(device).transpose()?,
        },
        CommandAction::Forget { device: d } => CommandRequest::Forget { device: device(d)? },
        CommandAction::Inventory => CommandRequest::Inventory,
        CommandAction::Ping => CommandRequest::Ping,
    };
    Ok((serial, requester, body))
}

fn report_failure(
    args: &CommandArgs,
    requester: &RequesterId,
    request: &Request,
    error: &RequestError,
) -> Exit {
    let (exit, outcome) = match error {
        RequestError::Timeout(_) => (Exit::Timeout, "timeout"),
        RequestError::UndecodableReply(_) => (Exit::Failed, "undecodable_reply"),
        RequestError::BrokerUnreachable(_) | RequestError::SubscriptionRefused(_) => {
            (Exit::Failed, "broker_unreachable")
        }
        _ => (Exit::Failed, "failed"),
    };
    if args.json {
        println!(
            "{}",
            json!({
                "serial": request.serial.as_str(),
                "requester": requester.as_str(),
                "command": request.body.kind().topic_level(),
                "correlation": hex(&request.correlation),
                "outcome": outcome,
                "error": error.to_string(),
            })
        );
    }
    match error {
        RequestError::Timeout(after) => eprintln!(
            "cloud-sink command: no reply from {} within {} ms (is the RAE online?)",
            request.serial,
            after.as_millis()
        ),
        other => eprintln!("cloud-sink command: {other}"),
    }
    exit
}

fn outcome(reply: &CommandReply) -> &'static str {
    match reply {
        CommandReply::Ok(_) => "ok",
        CommandReply::Error(_) => "error",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn reply_json(reply: &CommandReply) -> Value {
    let sessions = |list: &[rae_proto::SessionSeq]| -> Value {
        list.iter()
            .map(|s| json!({"session": s.session.to_string(), "seq": s.seq}))
            .collect()
    };
    match reply {
        CommandReply::Error(e) => json!({"error": {"kind": e.kind.as_str(), "message": e.message}}),
        CommandReply::Ok(ReplyBody::Done) => json!({"done": {}}),
        CommandReply::Ok(ReplyBody::Device(s)) => {
            json!({"device": {"session": s.session.to_string(), "seq": s.seq}})
        }
        CommandReply::Ok(ReplyBody::Sessions(list)) => json!({"sessions": sessions(list)}),
        CommandReply::Ok(ReplyBody::Inventory(inv)) => json!({"inventory": {
            "serial": inv.serial.as_str(),
            "at_ms": inv.at_ms,
            "sessions": sessions(&inv.sessions),
        }}),
        CommandReply::Ok(ReplyBody::Pong(p)) => json!({"pong": {
            "version": p.version,
            "uptime_secs": p.uptime_secs,
            "sessions_open": p.sessions_open,
        }}),
    }
}

fn reply_text(request: &Request, reply: &CommandReply) -> String {
    let command = request.body.kind();
    let serial = &request.serial;
    match reply {
        CommandReply::Error(e) => {
            format!("{command} refused by {serial}: {}: {}", e.kind, e.message)
        }
        CommandReply::Ok(ReplyBody::Done) => format!("{command}: done on {serial}"),
        CommandReply::Ok(ReplyBody::Device(s)) => format!(
            "{command}: done on {serial}; session {} now at seq {}",
            s.session, s.seq
        ),
        CommandReply::Ok(ReplyBody::Sessions(list)) => {
            let mut text = format!("{command}: {} session(s) on {serial}", list.len());
            for s in list {
                text.push_str(&format!("\n  session {} seq {}", s.session, s.seq));
            }
            text
        }
        CommandReply::Ok(ReplyBody::Inventory(inv)) => {
            let mut text = format!(
                "inventory of {}: {} open session(s)",
                inv.serial,
                inv.sessions.len()
            );
            for s in &inv.sessions {
                text.push_str(&format!("\n  session {} seq {}", s.session, s.seq));
            }
            text
        }
        CommandReply::Ok(ReplyBody::Pong(p)) => format!(
            "pong from {serial}: rae-agent {}, up {} s, {} session(s) open",
            p.version, p.uptime_secs, p.sessions_open
        ),
    }
}
