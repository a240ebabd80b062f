//! `agent-bench commands --count N`: the command round trip, requester -> broker -> agent ->
//! reply, measured with the cloud's own requester (`cloud_sink::command::Requester`) against
//! the agent under test on the lab broker.
//!
//! Two series of N commands each, one at a time: `ping` (the handler only) and
//! `set-availability` of a DUT, alternating `available` / `in_test` (through the core, a
//! committed store transaction and the outbox: the reply names the new seq). Each round trip
//! is from the publish being queued to the matched reply's arrival. Replies that are refusals
//! (the agent's command rate limit) are counted and left out of the figures.
//!
//! `--broker-nodelay` runs mosquitto with `set_tcp_nodelay true`: with its default (Nagle
//! on), a forwarded request or reply can wait for the peer's delayed ACK.
//!
//! `--tls` runs the fleet broker of `deploy/mosquitto/` instead (TLS listener, client
//! certificates, the per-RAE ACL): the agent connects with its certificate, the requester
//! with the cloud's. Run the two one after the other, alternating, to compare.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cloud_sink::command::Requester;
use cloud_sink::config::BrokerArgs;
use cloud_sink::mqtt_connect;
use rae_proto::{
    Availability, CommandReply, CommandRequest, DeviceRef, ErrorKind, Mac, RequesterId, Serial,
};
use rae_tests::netlab::{wait_until, DutKind, DutSpec, LabConfig};

use crate::bed::{summary, Bed, BrokerKind, SERIAL};

pub struct Options {
    pub count: usize,
    pub tls: bool,
    /// mosquitto's `set_tcp_nodelay true` (its default is off: Nagle on the broker's sends).
    pub broker_nodelay: bool,
}

pub fn run(agent_bin: &std::path::Path, options: &Options) -> Result<()> {
    if options.tls && options.broker_nodelay {
        bail!(
            "--broker-nodelay applies to the plain broker only (the fleet broker runs as shipped)"
        );
    }
    // The agent's command rate limit (20/s by default) would measure the limit, not the
    // round trip: lift it for the bench.
    let bed = Bed::start_with(
        agent_bin,
        600,
        LabConfig::default(),
        "[control]\nmax_commands_per_sec = 10000\nburst = 100000\n",
        if options.tls {
            BrokerKind::Fleet
        } else {
            BrokerKind::Plain {
                extra_config: if options.broker_nodelay {
                    "set_tcp_nodelay true\n".to_owned()
                } else {
                    String::new()
                },
            }
        },
    )?;
    println!(
        "broker: {}",
        match (options.tls, options.broker_nodelay) {
            (true, _) => "fleet (deploy/mosquitto as shipped: TLS, ACL, set_tcp_nodelay true)",
            (false, true) => "plain TCP, set_tcp_nodelay true",
            (false, false) => "plain TCP, set_tcp_nodelay false (mosquitto's default)",
        }
    );
    let dut = bed
        .lab
        .add_dut(DutSpec::new(
            "bench-cmd-tv",
            DutKind::Udhcpc {
                hostname: Some("bench-cmd-tv".into()),
                vendor_class: None,
                client_id: None,
            },
        ))
        .context("adding a DUT")?;
    let mac: Mac = dut
        .mac()
        .to_string()
        .parse()
        .map_err(|e| anyhow::anyhow!("DUT MAC: {e:?}"))?;
    wait_until("the DUT in the agent's registry", crate::bed::WAIT, || {
        Ok(match bed.devices() {
            Ok(devices) if devices.contains(&mac) => Ok(()),
            Ok(devices) => Err(format!("{} devices so far", devices.len())),
            Err(e) => Err(e.to_string()),
        })
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("a runtime")?;
    let tls = bed.cloud_tls()?;
    let broker = BrokerArgs {
        mqtt_host: bed.broker.host().to_owned(),
        mqtt_port: bed.broker.port(),
        mqtt_client_id: None,
        mqtt_username: None,
        mqtt_password: None,
        mqtt_shared_group: None,
        mqtt_max_inflight: 100,
        mqtt_tls_ca: tls.as_ref().map(|t| t.ca_file.clone()),
        mqtt_tls_cert: tls.as_ref().and_then(|t| t.cert_file.clone()),
        mqtt_tls_key: tls.as_ref().and_then(|t| t.key_file.clone()),
        mqtt_tls_server_name: None,
    };
    let serial = Serial::new(SERIAL).context("serial")?;
    runtime.block_on(async {
        let options_mqtt = mqtt_connect::options(&broker, "bench-requester")?;
        let requester = Arc::new(
            Requester::connect(
                options_mqtt,
                RequesterId::new("bench-requester").context("requester id")?,
                Duration::from_secs(10),
            )
            .await?,
        );
        let ping = series(&requester, &serial, options.count, |_| CommandRequest::Ping).await?;
        println!("ping: {}", ping.report());
        let set = series(&requester, &serial, options.count, |i| {
            CommandRequest::SetAvailability {
                device: DeviceRef::Mac(mac),
                availability: if i % 2 == 0 {
                    Availability::InTest
                } else {
                    Availability::Available
                },
            }
        })
        .await?;
        println!("set-availability: {}", set.report());
        println!(
            "RESULT command_rtt {} ping {} | set-availability {}",
            if options.tls { "tls" } else { "plain" },
            ping.report(),
            set.report()
        );
        anyhow::Ok(())
    })?;
    Ok(())
}

struct Series {
    rtt_ms: Vec<f64>,
    refused: usize,
    timeouts: usize,
    wall: Duration,
}

impl Series {
    fn report(&self) -> String {
        format!(
            "{} refused={} timeouts={} ({:.1} commands/s)",
            summary(&self.rtt_ms),
            self.refused,
            self.timeouts,
            self.rtt_ms.len() as f64 / self.wall.as_secs_f64().max(1e-9)
        )
    }
}

/// `count` commands one at a time; rate-limited refusals wait a little and count.
async fn series(
    requester: &Requester,
    serial: &Serial,
    count: usize,
    make: impl Fn(usize) -> CommandRequest,
) -> Result<Series> {
    let started = Instant::now();
    let mut out = Series {
        rtt_ms: Vec::with_capacity(count),
        refused: 0,
        timeouts: 0,
        wall: Duration::ZERO,
    };
    // Bounded: at most 3 tries per command's worth of refusals and timeouts in all.
    let mut budget = count * 3;
    let mut i = 0;
    while i < count && budget > 0 {
        budget -= 1;
        match requester
            .request(serial.clone(), make(i), Duration::from_secs(5))
            .await
        {
            Ok(answer) => match answer.reply {
                CommandReply::Ok(_) => {
                    out.rtt_ms.push(answer.round_trip.as_secs_f64() * 1000.0);
                    i += 1;
                }
                CommandReply::Error(e) if e.kind == ErrorKind::RateLimited => {
                    out.refused += 1;
                    // The agent's bucket refills over time; wait for a token.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                CommandReply::Error(e) => bail!("command {i} refused: {e}"),
            },
            Err(cloud_sink::command::RequestError::Timeout(_)) => out.timeouts += 1,
            Err(e) => bail!("command {i}: {e}"),
        }
    }
    if i < count {
        bail!(
            "only {i} of {count} commands answered (refused {}, timeouts {})",
            out.refused,
            out.timeouts
        );
    }
    out.wall = started.elapsed();
    Ok(out)
}
