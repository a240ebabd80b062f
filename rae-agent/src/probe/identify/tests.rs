use super::*;

use rae_proto::DialAppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([198, 18, 1, last])
}

fn response(location: &str, st: &str, usn: &str) -> SsdpMessage {
    SsdpMessage::parse(
        format!("HTTP/1.1 200 OK\r\nLOCATION: {location}\r\nST: {st}\r\nUSN: {usn}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap()
}

#[test]
fn one_candidate_per_device_per_window_preferring_the_dial_location() {
    let t0 = Instant::now();
    let window = Duration::from_secs(3);
    let mut s = Sightings::new(window, 8);
    let root = "http://198.18.1.20:49152/root.xml";
    let dial = "http://198.18.1.20:8008/dd.xml";
    s.offer(
        ip(20),
        &response(root, "upnp:rootdevice", "uuid:a::upnp:rootdevice"),
        t0,
    )
    .unwrap();
    assert!(matches!(
        s.offer(
            ip(20),
            &response(root, "upnp:rootdevice", "uuid:a::upnp:rootdevice"),
            t0
        ),
        Err(Ignored::Duplicate)
    ));
    s.offer(ip(20), &response(dial, ST_DIAL, "uuid:b::dial"), t0)
        .unwrap();
    assert_eq!(s.next_due(), Some(t0 + window));
    assert!(s.take_due(t0 + Duration::from_secs(2)).is_empty());
    let due = s.take_due(t0 + window);
    assert_eq!(
        due,
        vec![Candidate {
            ip: ip(20),
            location: HttpUrl::parse(dial).unwrap(),
            dial: true,
        }]
    );
    assert_eq!(s.next_due(), None);
}

#[test]
fn a_location_on_another_host_is_never_a_candidate() {
    let mut s = Sightings::new(Duration::from_secs(3), 8);
    let liar = response("http://198.18.1.22:80/dd.xml", ST_DIAL, "uuid:x");
    assert!(matches!(
        s.offer(ip(21), &liar, Instant::now()),
        Err(Ignored::BadLocation(HttpError::ForeignHost { .. }))
    ));
    let named = response("http://printer.local/dd.xml", ST_ALL, "uuid:y");
    assert!(matches!(
        s.offer(ip(21), &named, Instant::now()),
        Err(Ignored::BadLocation(HttpError::InvalidUrl { .. }))
    ));
    assert_eq!(s.next_due(), None);
}

#[test]
fn searches_byebyes_and_errors_are_not_announcements() {
    let mut s = Sightings::new(Duration::from_secs(3), 8);
    let now = Instant::now();
    for raw in [
        &m_search(ST_ALL, 2)[..],
        b"NOTIFY * HTTP/1.1\r\nNTS: ssdp:byebye\r\nLOCATION: http://198.18.1.20/\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\nLOCATION: http://198.18.1.20/\r\n\r\n",
    ] {
        let msg = SsdpMessage::parse(raw).unwrap();
        assert!(matches!(
            s.offer(ip(20), &msg, now),
            Err(Ignored::NotAnnouncement)
        ));
    }
    let alive = SsdpMessage::parse(
        b"NOTIFY * HTTP/1.1\r\nNTS: ssdp:alive\r\nNT: upnp:rootdevice\r\nLOCATION: http://198.18.1.20/\r\n\r\n",
    )
    .unwrap();
    s.offer(ip(20), &alive, now).unwrap();
    assert!(matches!(
        s.offer(
            ip(20),
            &SsdpMessage::parse(b"HTTP/1.1 200 OK\r\n\r\n").unwrap(),
            now
        ),
        Err(Ignored::NoLocation)
    ));
}

#[test]
fn the_window_holds_a_bounded_number_of_devices() {
    let mut s = Sightings::new(Duration::from_secs(3), 2);
    let now = Instant::now();
    for last in [20, 21] {
        let loc = format!("http://198.18.1.{last}/dd.xml");
        s.offer(ip(last), &response(&loc, ST_ALL, "u"), now)
            .unwrap();
    }
    let loc = "http://198.18.1.22/dd.xml";
    assert!(matches!(
        s.offer(ip(22), &response(loc, ST_ALL, "u"), now),
        Err(Ignored::Full)
    ));
}

const DESCRIPTION: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device>
<friendlyName>Lab TV</friendlyName><manufacturer>Acme</manufacturer>
<modelName>Cast</modelName><modelNumber>7</modelNumber><serialNumber>SN1</serialNumber>
<UDN>uuid:lab-tv</UDN></device></root>"#;

const NETFLIX: &str = r#"<service xmlns="urn:dial-multiscreen-org:schemas:dial">
<name>Netflix</name><state>stopped</state>
<additionalData><esn>ESN-LAB-1</esn></additionalData></service>"#;

#[tokio::test]
async fn identification_of_a_dial_device() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let application_url = format!("Application-URL: http://127.0.0.1:{port}/apps/\r\n");
    let server = tokio::spawn(async move {
        let mut paths = Vec::new();
        for _ in 0..3 {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 2048];
            let n = conn.read(&mut req).await.unwrap();
            let req = String::from_utf8_lossy(&req[..n]).into_owned();
            let path = req.split(' ').nth(1).unwrap_or_default().to_owned();
            let (status, headers, body) = match path.as_str() {
                "/dd.xml" => (200, application_url.as_str(), DESCRIPTION),
                "/apps/Netflix" => (200, "", NETFLIX),
                _ => (404, "", ""),
            };
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{headers}\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(body.as_bytes()).await.unwrap();
            paths.push(path);
        }
        paths
    });
    let device = IpAddr::from([127, 0, 0, 1]);
    let candidate = Candidate {
        ip: device,
        location: HttpUrl::parse(&format!("http://127.0.0.1:{port}/dd.xml")).unwrap(),
        dial: true,
    };
    let apps = vec!["YouTube".to_owned(), "Netflix".to_owned()];
    let found = identify(&candidate, Some(device), &apps, &HttpLimits::default())
        .await
        .unwrap();
    assert_eq!(found.ip, device);
    assert_eq!(found.upnp.friendly_name.as_deref(), Some("Lab TV"));
    assert_eq!(found.upnp.serial_number.as_deref(), Some("SN1"));
    assert_eq!(found.upnp.udn.as_deref(), Some("uuid:lab-tv"));
    assert_eq!(
        found.dial_apps.len(),
        1,
        "YouTube answered 404: not installed"
    );
    assert_eq!(found.dial_apps[0].name, "Netflix");
    assert_eq!(found.dial_apps[0].state, DialAppState::Stopped);
    assert_eq!(found.esn.as_deref(), Some("ESN-LAB-1"));
    assert_eq!(
        server.await.unwrap(),
        ["/dd.xml", "/apps/YouTube", "/apps/Netflix"]
    );
}

#[tokio::test]
async fn a_foreign_application_url_is_not_followed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut req = vec![0u8; 2048];
        let _ = conn.read(&mut req).await.unwrap();
        let head = format!(
            "HTTP/1.1 200 OK\r\nApplication-URL: http://127.0.0.2:{port}/apps/\r\nContent-Length: {}\r\n\r\n",
            DESCRIPTION.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(DESCRIPTION.as_bytes()).await.unwrap();
        // A second connection would be a followed Application-URL.
        tokio::time::timeout(Duration::from_millis(300), listener.accept())
            .await
            .is_err()
    });
    let device = IpAddr::from([127, 0, 0, 1]);
    let candidate = Candidate {
        ip: device,
        location: HttpUrl::parse(&format!("http://127.0.0.1:{port}/dd.xml")).unwrap(),
        dial: true,
    };
    let found = identify(
        &candidate,
        None,
        &["Netflix".to_owned()],
        &HttpLimits::default(),
    )
    .await
    .unwrap();
    assert_eq!(found.upnp.friendly_name.as_deref(), Some("Lab TV"));
    assert!(found.dial_apps.is_empty());
    assert!(server.await.unwrap(), "a second request was made");
}

#[tokio::test]
async fn a_failed_description_is_an_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut req = vec![0u8; 2048];
        let _ = conn.read(&mut req).await.unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>")
            .await
            .unwrap();
    });
    let device = IpAddr::from([127, 0, 0, 1]);
    let candidate = Candidate {
        ip: device,
        location: HttpUrl::parse(&format!("http://127.0.0.1:{port}/dd.xml")).unwrap(),
        dial: false,
    };
    let result = identify(&candidate, None, &[], &HttpLimits::default()).await;
    assert!(matches!(result, Err(ProbeError::Xml { .. })), "{result:?}");
    server.await.unwrap();
}
