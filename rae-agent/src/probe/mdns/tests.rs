use super::*;

const CAST: &str = "_googlecast._tcp.local.";

fn settings() -> MdnsSettings {
    MdnsSettings {
        report_every: Duration::from_secs(10),
        max_hosts: 2,
        max_services_per_host: 2,
        ..MdnsSettings::default()
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::from([198, 18, 1, last])
}

fn instance(name: &str, host: &str, addr: u8) -> ResolvedInstance {
    let fullname = format!("{name}.{CAST}");
    resolved_instance(
        CAST,
        &fullname,
        host,
        8009,
        [v4(addr)],
        [("md", Some(&b"Chromecast"[..]))],
        &settings(),
    )
    .unwrap()
}

#[test]
fn instance_with_selected_txt_keys_in_order() {
    let txt: Vec<(&str, Option<&[u8]>)> = vec![
        ("id", Some(b"3e1cc7c3")),
        ("cd", Some(b"DROPPED")),
        ("md", Some(b"Chromecast Ultra")),
        ("fn", Some(b"Living Room TV")),
        ("ID", Some(b"second id is ignored")),
        ("mf", None),
        ("ty", Some(b"")),
    ];
    let i = resolved_instance(
        CAST,
        "Living Room TV._googlecast._tcp.local.",
        "living-room-tv.local.",
        8009,
        [v4(30), "fe80::1".parse().unwrap(), v4(30)],
        txt,
        &MdnsSettings::default(),
    )
    .unwrap();
    assert_eq!(i.hostname, "living-room-tv");
    assert_eq!(i.addresses, vec![v4(30), "fe80::1".parse().unwrap()]);
    assert_eq!(i.service.service_type, CAST);
    assert_eq!(i.service.instance, "Living Room TV");
    assert_eq!(i.service.port, 8009);
    let keys: Vec<(&str, Option<&[u8]>)> = i
        .service
        .txt
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_ref().map(Text::as_bytes)))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("id", Some(&b"3e1cc7c3"[..])),
            ("md", Some(&b"Chromecast Ultra"[..])),
            ("fn", Some(&b"Living Room TV"[..])),
            ("mf", None),
            ("ty", Some(&b""[..])),
        ]
    );
}

#[test]
fn long_txt_values_are_cut_and_bad_names_refused() {
    let long = vec![b'x'; 1000];
    let i = resolved_instance(
        CAST,
        "a._googlecast._tcp.local.",
        "a.local.",
        1,
        [],
        [("md", Some(&long[..]))],
        &MdnsSettings::default(),
    )
    .unwrap();
    assert_eq!(i.service.txt[0].value.as_ref().unwrap().len(), 128);
    assert!(resolved_instance(CAST, "", "a.local.", 1, [], [], &settings()).is_none());
    assert!(resolved_instance(CAST, "a", ".local.", 1, [], [], &settings()).is_none());
    let long_name = "a".repeat(300);
    assert!(resolved_instance(CAST, &long_name, "a.local.", 1, [], [], &settings()).is_none());
    // A full name that does not end with its type is kept whole.
    let odd = resolved_instance(CAST, "odd", "a.local.", 1, [], [], &settings()).unwrap();
    assert_eq!(odd.service.instance, "odd");
}

#[test]
fn a_host_is_reported_on_change_at_most_once_per_interval() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut table = MdnsTable::new(&settings());
    table.resolved(instance("TV", "tv.local.", 30), t0);
    assert_eq!(table.next_due(), Some(t0));
    let reports = table.take_due(t0);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].hostname, "tv");
    assert_eq!(reports[0].addresses, vec![v4(30)]);
    assert_eq!(reports[0].services[0].instance, "TV");
    // The same resolution again is no change.
    table.resolved(instance("TV", "tv.local.", 30), t0 + s(1));
    assert_eq!(table.next_due(), None);
    // A change within the interval waits for its end.
    table.resolved(instance("TV", "tv.local.", 31), t0 + s(2));
    assert_eq!(table.next_due(), Some(t0 + s(10)));
    assert!(table.take_due(t0 + s(5)).is_empty());
    let reports = table.take_due(t0 + s(10));
    assert_eq!(reports[0].addresses, vec![v4(31)]);
}

#[test]
fn services_are_sorted_and_a_host_without_services_is_reported_empty_then_forgotten() {
    let t0 = Instant::now();
    let mut table = MdnsTable::new(&settings());
    table.resolved(instance("Zeta", "tv.local.", 30), t0);
    table.resolved(instance("Alpha", "TV.local.", 30), t0);
    let reports = table.take_due(t0);
    let names: Vec<&str> = reports[0]
        .services
        .iter()
        .map(|s| s.instance.as_str())
        .collect();
    assert_eq!(names, ["Alpha", "Zeta"]);
    let later = t0 + Duration::from_secs(60);
    table.removed(&format!("Zeta.{CAST}"), later);
    table.removed(&format!("ALPHA.{}", CAST.to_uppercase()), later);
    let reports = table.take_due(later);
    assert_eq!(reports.len(), 1);
    assert!(reports[0].services.is_empty());
    assert_eq!(table.next_due(), None);
    assert!(table.take_due(later + Duration::from_secs(60)).is_empty());
}

#[test]
fn an_instance_that_moves_host_leaves_the_old_one() {
    let t0 = Instant::now();
    let mut table = MdnsTable::new(&settings());
    table.resolved(instance("TV", "old.local.", 30), t0);
    table.take_due(t0);
    let later = t0 + Duration::from_secs(60);
    table.resolved(instance("TV", "new.local.", 31), later);
    let reports = table.take_due(later);
    let by_host: Vec<(&str, usize)> = reports
        .iter()
        .map(|r| (r.hostname.as_str(), r.services.len()))
        .collect();
    assert_eq!(by_host, [("new", 1), ("old", 0)]);
}

#[test]
fn tables_are_bounded() {
    let t0 = Instant::now();
    let mut table = MdnsTable::new(&settings());
    table.resolved(instance("A", "a.local.", 1), t0);
    table.resolved(instance("B", "b.local.", 2), t0);
    table.resolved(instance("C", "c.local.", 3), t0);
    assert_eq!(table.refused, 1, "third host");
    table.resolved(instance("A2", "a.local.", 1), t0);
    table.resolved(instance("A3", "a.local.", 1), t0);
    assert_eq!(table.refused, 2, "third service of a host");
    assert_eq!(table.take_due(t0).len(), 2);
}

#[test]
fn browsable_types() {
    assert!(browsable_type(CAST));
    assert!(browsable_type("_airplay._tcp.local."));
    assert!(browsable_type("_sleep-proxy._udp.local."));
    assert!(!browsable_type(META_QUERY));
    assert!(!browsable_type("_http._tcp.example."));
    assert!(!browsable_type("printer.local."));
    assert!(!browsable_type(&format!(
        "_{}._tcp.local.",
        "a".repeat(300)
    )));
}

proptest::proptest! {
    #[test]
    fn arbitrary_names_never_panic(
        ty in "\\PC{0,40}",
        name in "\\PC{0,60}",
        host in "\\PC{0,40}",
        key in "\\PC{0,10}",
        value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
    ) {
        let _ = browsable_type(&ty);
        let i = resolved_instance(&ty, &name, &host, 1, [], [(key.as_str(), Some(&value[..]))], &MdnsSettings::default());
        if let Some(i) = i {
            let mut table = MdnsTable::new(&MdnsSettings::default());
            let now = Instant::now();
            table.resolved(i.clone(), now);
            table.removed(&i.fullname, now);
            let _ = table.take_due(now);
        }
    }
}
