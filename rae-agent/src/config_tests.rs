//! The configuration: defaults, the shipped example, and every kind of bad config.

use super::*;

const MINIMAL: &str = r#"
    [agent]
    serial = "RAE-0001"
    lan_interface = "lan0"
    [mqtt]
    host = "broker.lab"
"#;

fn parse_valid(text: &str) -> Result<Config, ConfigError> {
    let config = Config::parse(text)?;
    config.validate()?;
    Ok(config)
}

fn expect_invalid(text: &str, key: &str) {
    match parse_valid(text) {
        Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
        other => panic!("expected {key} to be rejected, got {other:?}"),
    }
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let config = parse_valid(MINIMAL).expect("minimal config is valid");
    assert_eq!(config.mqtt.port, 1883);
    assert_eq!(config.client_id(), "RAE-0001");
    assert_eq!(config.registry.probe_interval_secs, 10);
    assert_eq!(config.registry.offline_after_misses, 3);
    assert_eq!(config.registry.gone_after_secs, 600);
    assert_eq!(config.registry.ipv6_expire_after_secs, 1800);
    assert_eq!(config.agent.state_dir, Path::new("/var/lib/rae-agent"));
    assert_eq!(config.log.format, LogFormat::Text);
    assert!(config.publish.commit_adaptive);
    assert_eq!(config.publish.commit_max_delay_ms, 100);
    assert_eq!(config.control.max_commands_per_sec, 20);
    assert_eq!(config.control.burst, 100);
    assert_eq!(config.control.duplicate_window_secs, 600);
    assert_eq!(config.control.duplicate_max_entries, 1024);
}

#[test]
fn the_commit_policy_comes_from_the_publish_table() {
    let text =
        format!("{MINIMAL}\n[publish]\ncommit_adaptive = false\ncommit_max_delay_ms = 250\n");
    let config = parse_valid(&text).expect("valid");
    let commit = crate::store::StoreThreadOptions::from_config(&config).commit;
    assert!(!commit.adaptive);
    assert_eq!(commit.max_delay, std::time::Duration::from_millis(250));
}

#[test]
fn the_shipped_example_is_valid_and_spells_out_the_defaults() {
    let example = parse_valid(include_str!("../config.example.toml"))
        .expect("config.example.toml must stay valid");
    let mut minimal = parse_valid(MINIMAL).expect("minimal config is valid");
    minimal.mqtt.host = example.mqtt.host.clone();
    assert_eq!(example, minimal, "the example must show the real defaults");
}

#[test]
fn unknown_keys_are_rejected_in_every_table() {
    for (table, extra) in [
        ("[agent]", "colour = \"blue\""),
        ("[mqtt]", "hostname = \"x\""),
    ] {
        let text = MINIMAL.replace(table, &format!("{table}\n{extra}"));
        let err = Config::parse(&text).expect_err("unknown key must fail");
        assert!(
            err.to_string().contains("unknown field"),
            "error should name the unknown field: {err}"
        );
    }
    let text = format!("{MINIMAL}\n[registry]\ngone_after = 5\n");
    assert!(Config::parse(&text).is_err());
    let text = format!("{MINIMAL}\n[surprise]\nx = 1\n");
    assert!(Config::parse(&text).is_err());
}

#[test]
fn missing_required_keys_are_named() {
    let err = Config::parse("[agent]\nserial = \"A\"\n").expect_err("no mqtt table");
    let text = err.to_string();
    assert!(
        text.contains("lan_interface") || text.contains("mqtt"),
        "error should name what is missing: {text}"
    );
}

#[test]
fn wrong_types_are_rejected() {
    let text = MINIMAL.replace("host = \"broker.lab\"", "host = \"b\"\nport = \"x\"");
    assert!(Config::parse(&text).is_err());
    let text = MINIMAL.replace("host = \"broker.lab\"", "host = \"b\"\nport = 70000");
    assert!(Config::parse(&text).is_err());
}

#[test]
fn bad_values_are_rejected_with_their_key() {
    expect_invalid(&MINIMAL.replace("RAE-0001", "rae/0001"), "agent.serial");
    expect_invalid(&MINIMAL.replace("RAE-0001", ""), "agent.serial");
    expect_invalid(
        &MINIMAL.replace("RAE-0001", &"x".repeat(65)),
        "agent.serial",
    );
    expect_invalid(
        &MINIMAL.replace("lan0", "a-very-long-interface-name"),
        "agent.lan_interface",
    );
    expect_invalid(&MINIMAL.replace("broker.lab", " "), "mqtt.host");
    expect_invalid(
        &format!("{MINIMAL}\n[registry]\nprobe_interval_secs = 0\n"),
        "registry.probe_interval_secs",
    );
    expect_invalid(
        &format!("{MINIMAL}\n[registry]\noffline_after_misses = 0\n"),
        "registry.offline_after_misses",
    );
    expect_invalid(
        &format!("{MINIMAL}\n[registry]\nprobe_interval_secs = 10\ngone_after_secs = 30\n"),
        "registry.gone_after_secs",
    );
    expect_invalid(
        &format!("{MINIMAL}\n[registry]\nipv6_expire_after_secs = 10\n"),
        "registry.ipv6_expire_after_secs",
    );
    expect_invalid(
        &format!("{MINIMAL}\n[publish]\noutbox_max_bytes = 10\n"),
        "publish.outbox_max_bytes",
    );
    expect_invalid(
        &format!("{MINIMAL}\n[publish]\ncommit_max_delay_ms = 0\n"),
        "publish.commit_max_delay_ms",
    );
    expect_invalid(&format!("{MINIMAL}\n[log]\nlevel = \"=[\"\n"), "log.level");
    expect_invalid(
        &format!("{MINIMAL}\n[registry]\nmax_sessions = 0\n"),
        "registry.max_sessions",
    );
    expect_invalid(
        &format!("{MINIMAL}\n[log]\nmax_per_minute = 0\n"),
        "log.max_per_minute",
    );
    expect_invalid(
        &format!("{MINIMAL}\n[disk]\nmin_free_percent = 90\n"),
        "disk.min_free_percent",
    );
    expect_invalid(
        &format!("{MINIMAL}\n[disk]\nlow_outbox_max_bytes = 100\n"),
        "disk.low_outbox_max_bytes",
    );
    for (key, value) in [
        ("max_commands_per_sec", "0"),
        ("max_commands_per_sec", "10001"),
        ("burst", "0"),
        ("duplicate_window_secs", "0"),
        ("duplicate_max_entries", "0"),
    ] {
        expect_invalid(
            &format!("{MINIMAL}\n[control]\n{key} = {value}\n"),
            &format!("control.{key}"),
        );
    }
    assert!(
        Config::parse(&format!("{MINIMAL}\n[control]\nmax_per_sec = 5\n")).is_err(),
        "an unknown [control] key is an error"
    );
    assert!(
        Config::parse(&format!("{MINIMAL}\n[disk]\nmin_free = 1\n")).is_err(),
        "an unknown [disk] key is an error"
    );
}

#[test]
fn overrides_replace_file_values_and_are_validated() {
    let mut config = Config::parse(MINIMAL).expect("parses");
    config.apply(&Overrides {
        serial: Some("RAE-9".into()),
        mqtt_port: Some(8883),
        lan_interface: Some("br0".into()),
        ..Overrides::default()
    });
    assert_eq!(config.agent.serial, "RAE-9");
    assert_eq!(config.mqtt.port, 8883);
    assert_eq!(config.agent.lan_interface, "br0");
    config.apply(&Overrides {
        serial: Some("bad serial".into()),
        ..Overrides::default()
    });
    assert!(config.validate().is_err());
}

#[test]
fn load_names_the_file_in_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let err = Config::load(&missing, &Overrides::default()).expect_err("missing file");
    assert!(err.to_string().contains("nope.toml"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[agent\n").expect("write");
    let err = Config::load(&bad, &Overrides::default()).expect_err("bad toml");
    assert!(err.to_string().contains("bad.toml"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, MINIMAL).expect("write");
    let config = Config::load(&good, &Overrides::default()).expect("good config loads");
    assert_eq!(config.agent.serial, "RAE-0001");
}

#[test]
fn a_probe_budget_below_what_the_session_cap_needs_is_said() {
    let config = parse_valid(MINIMAL).expect("minimal config is valid");
    assert_eq!(
        config.probe_budget_warning(),
        None,
        "the defaults probe every device of the cap once a round"
    );
    let short = format!("{MINIMAL}\n[probe]\nmax_per_sec = 200\n");
    let config = parse_valid(&short).expect("a small probe budget is still valid");
    let warning = config
        .probe_budget_warning()
        .expect("200/s cannot probe 4096 devices every 10 s");
    assert!(warning.contains("beyond 2000 devices"), "{warning}");
    assert!(
        config.to_string().contains(&warning),
        "--check-config says it"
    );
}

#[test]
fn a_send_buffer_out_of_range_is_refused() {
    let with = |bytes: u32| {
        MINIMAL.replace(
            "[mqtt]",
            &format!("[mqtt]\ntcp_send_buffer_bytes = {bytes}"),
        )
    };
    let config = parse_valid(&with(8192)).expect("8 KiB is valid");
    assert_eq!(config.mqtt.tcp_send_buffer_bytes, Some(8192));
    expect_invalid(&with(100), "mqtt.tcp_send_buffer_bytes");
    expect_invalid(&with(64 << 20), "mqtt.tcp_send_buffer_bytes");
    let text = MINIMAL.replace("[mqtt]", "[mqtt]\ntcp_send_buffer_bytes = \"big\"");
    assert!(Config::parse(&text).is_err(), "not a number");
}

#[test]
fn the_control_group_is_a_name_and_unset_by_default() {
    let config = parse_valid(MINIMAL).expect("minimal config is valid");
    assert_eq!(config.agent.control_group, None);
    let with =
        |group: &str| MINIMAL.replace("[mqtt]", &format!("control_group = {group:?}\n[mqtt]"));
    let config = parse_valid(&with("rae-ops")).expect("a group name is valid");
    assert_eq!(config.agent.control_group.as_deref(), Some("rae-ops"));
    for bad in ["", "rae ops", "rae:ops"] {
        expect_invalid(&with(bad), "agent.control_group");
    }
    let text = MINIMAL.replace("[mqtt]", "control_group = 1000\n[mqtt]");
    assert!(Config::parse(&text).is_err(), "a gid is not a group name");
}

/// A CA and a client certificate CN=`cn` (rcgen), in `dir`; returns the `[mqtt.tls]` table.
fn write_pki(dir: &Path, cn: &str) -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::new()).unwrap();
    client.distinguished_name.push(DnType::CommonName, cn);
    let cert = client.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("client.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("client.key"), key.serialize_pem()).unwrap();
    format!(
        "[mqtt.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client.key")
    )
}

fn load_text(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    Config::load_with_identity(&path, &Overrides::default())
}

#[test]
fn the_serial_comes_from_the_certificate_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let tls = write_pki(dir.path(), "RAE-0042");
    let base = "[agent]\nlan_interface = \"lan0\"\nserial_from_certificate = true\n\
                [mqtt]\nhost = \"127.0.0.1\"\n";
    let config = load_text(dir.path(), &format!("{base}{tls}")).unwrap();
    assert_eq!(config.agent.serial, "RAE-0042");
    assert_eq!(config.identity_warning(), None);

    let agreeing = base.replace("[agent]\n", "[agent]\nserial = \"RAE-0042\"\n");
    load_text(dir.path(), &format!("{agreeing}{tls}")).unwrap();
    let disagreeing = base.replace("[agent]\n", "[agent]\nserial = \"RAE-0001\"\n");
    let err = load_text(dir.path(), &format!("{disagreeing}{tls}")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("agent.serial") && text.contains("RAE-0042") && text.contains("client.pem"),
        "{text}"
    );

    // Without serial_from_certificate a different serial is allowed, and said.
    let config = load_text(dir.path(), &format!("{MINIMAL}{tls}")).unwrap();
    let warning = config
        .identity_warning()
        .expect("a serial that is not the CN is said");
    assert!(warning.contains("RAE-0042"), "{warning}");
}

#[test]
fn bad_tls_and_credential_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = write_pki(dir.path(), "RAE-0001");
    let valid = load_text(dir.path(), &format!("{MINIMAL}{tls}")).unwrap();
    assert!(valid.mqtt.tls.is_some());
    assert!(valid.to_string().contains("tls on (CA"), "{valid}");

    let no_key = tls
        .lines()
        .filter(|l| !l.starts_with("key_file"))
        .collect::<Vec<_>>();
    expect_invalid(&format!("{MINIMAL}{}\n", no_key.join("\n")), "mqtt.tls");
    let no_cert = "[agent]\nlan_interface = \"lan0\"\nserial_from_certificate = true\n\
                   [mqtt]\nhost = \"b\"\n[mqtt.tls]\nca_file = \"/ca.pem\"\n";
    expect_invalid(no_cert, "agent.serial_from_certificate");
    expect_invalid(
        &MINIMAL.replace(
            "host = \"broker.lab\"",
            "host = \"b\"\npassword_file = \"/p\"",
        ),
        "mqtt.password_file",
    );
    assert!(Config::parse(&format!("{MINIMAL}{tls}colour = 1\n")).is_err());

    // Files that cannot be used fail the load, naming the file.
    let missing = tls.replace("client.key", "gone.key");
    let err = load_text(dir.path(), &format!("{MINIMAL}{missing}")).unwrap_err();
    assert!(matches!(err, ConfigError::Tls { .. }), "{err:?}");
    assert!(crate::error_chain(&err).contains("gone.key"), "{err:?}");
    // raectl reads only the state directory: it need not be able to read the key.
    let path = dir.path().join("config.toml");
    assert!(Config::load(&path, &Overrides::default()).is_ok());
    std::fs::write(dir.path().join("junk.pem"), "nothing\n").unwrap();
    let junk = tls.replace("ca.pem", "junk.pem");
    let err = load_text(dir.path(), &format!("{MINIMAL}{junk}")).unwrap_err();
    assert!(crate::error_chain(&err).contains("junk.pem"), "{err:?}");
}

#[test]
fn the_password_comes_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let text = MINIMAL.replace(
        "host = \"broker.lab\"",
        &format!("host = \"b\"\nusername = \"rae\"\npassword_file = {file:?}"),
    );
    let config = load_text(dir.path(), &text).unwrap();
    let credentials = config.mqtt.credentials.clone().expect("credentials");
    assert_eq!(
        (credentials.user.as_str(), credentials.password.as_str()),
        ("rae", "s3cret")
    );
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "Debug hides the password"
    );
    let gone = text.replace("password\"", "nothing\"");
    assert!(matches!(
        load_text(dir.path(), &gone),
        Err(ConfigError::Read { .. })
    ));
}
