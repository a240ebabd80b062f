//! The publisher's watchdog against a broker that stops reading: a loopback TCP server that
//! answers the CONNECT with a CONNACK and then never reads or answers again, with small
//! socket buffers on both ends, so that rumqttc's writes block inside its event loop (where
//! its own keep-alive ping cannot fire). The watchdog must notice within two keep-alives,
//! drop the connection and connect again. (A real broker behind a cut path:
//! `agent_publish_faults.rs`.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rae_agent::publish::{self, PublisherSettings, PublisherStatus};
use rae_agent::registry::{Cause, Change};
use rae_agent::store::{Store, StoreHandle, StoreOptions, StoreThreadOptions};
use rae_proto::{DeviceRecord, Evidence, Mac, Serial, SessionId, Text};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

const SERIAL: &str = "RAE-watchdog-1";
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// MQTT v5 CONNACK: no session present, success, no properties.
const CONNACK: [u8; 5] = [0x20, 0x03, 0x00, 0x00, 0x00];

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(since.as_millis()).expect("ms")
}

/// Accepts connections, answers each CONNECT and then reads nothing more; reports each
/// connection. The streams are kept open (no FIN, no RST): a broker that went silent.
async fn silent_broker(connections: mpsc::UnboundedSender<usize>) -> u16 {
    let socket = TcpSocket::new_v4().expect("socket");
    // Inherited by accepted sockets: the window the agent may fill stays small.
    socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = socket.local_addr().expect("local addr").port();
    let listener = socket.listen(8).expect("listen");
    tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        for n in 1..=8 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut connect = [0u8; 256];
            if stream.read(&mut connect).await.is_err() || stream.write_all(&CONNACK).await.is_err()
            {
                continue;
            }
            held.push(stream);
            if connections.send(n).is_err() {
                return;
            }
        }
    });
    port
}

/// Rows of about 2 KB each (a long host name), many more than fit the socket buffers.
fn big_changes(count: u8) -> Vec<Change> {
    (1..=count)
        .map(|n| {
            let mut bytes = [0u8; 16];
            bytes[0] = n;
            bytes[6] = 0x40;
            bytes[8] = 0x80;
            let at_ms = now_ms();
            let mut record =
                DeviceRecord::new(Mac([0x02, 0, 0, 0, 1, n]), Evidence::DhcpRequest, at_ms);
            record.hostname = Some(Text::from(format!("dut-{n}-{}", "x".repeat(2000))));
            Change::Opened {
                session: SessionId::from_bytes(bytes),
                seq: 1,
                record,
                cause: Cause {
                    at_ms,
                    summary: "DHCP REQUEST".to_owned(),
                },
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_reading_is_dropped_within_two_keep_alives() {
    let (conn_tx, mut connections) = mpsc::unbounded_channel();
    let port = silent_broker(conn_tx).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let serial = Serial::new(SERIAL).expect("serial");
    let store =
        Store::open(dir.path().join("registry.db"), StoreOptions::default()).expect("store");
    let (handle, _thread) =
        StoreHandle::spawn(store, serial.clone(), StoreThreadOptions::default())
            .expect("store thread");
    handle.submit(big_changes(60)).await.expect("submit");
    handle.flush().await.expect("commit");

    let settings = PublisherSettings {
        serial,
        host: "127.0.0.1".to_owned(),
        port,
        client_id: format!("{SERIAL}-agent"),
        keep_alive: KEEP_ALIVE,
        tcp_send_buffer: Some(2048),
        inventory_interval: Duration::from_secs(3600),
        max_in_flight: 32,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        agent_version: "0.0.0-test".to_owned(),
        tls: None,
        credentials: None,
        fault: None,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (status_tx, mut status) = watch::channel(PublisherStatus::default());
    let (_inventory, inventory_rx) = watch::channel(Vec::new());
    let task = tokio::spawn(publish::run(
        settings,
        handle,
        inventory_rx,
        status_tx,
        shutdown_rx,
        None,
    ));

    let first = tokio::time::timeout(Duration::from_secs(10), connections.recv())
        .await
        .expect("the publisher connects within 10 s");
    assert_eq!(first, Some(1));
    let connected_at = tokio::time::Instant::now();
    // Two keep-alives, plus a second for the reconnect (backoff at most 500 ms here).
    let limit = KEEP_ALIVE * 2 + Duration::from_secs(1);
    let second = tokio::time::timeout(limit, connections.recv()).await;
    let snapshot = status.borrow_and_update().clone();
    assert!(
        matches!(second, Ok(Some(2))),
        "no new connection within two keep-alives ({limit:?}) of a broker that stopped \
         reading: {snapshot:?}"
    );
    let waited = connected_at.elapsed();
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| s.unresponsive >= 1 && s.reconnects >= 1),
    )
    .await
    .map(|s| s.map(|s| s.clone()));
    let status = match status {
        Ok(Ok(status)) => status,
        _ => panic!("broker.unresponsive and broker.reconnects never rose: {snapshot:?}"),
    };
    assert!(
        status.published > status.acked,
        "rows were in flight when the broker went silent: {status:?}"
    );
    println!("reconnected {waited:?} after the silent broker's CONNACK: {status:?}");
    let _ = shutdown.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
