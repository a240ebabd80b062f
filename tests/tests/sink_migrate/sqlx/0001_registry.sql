-- The Cloud Registry. Runs on PostgreSQL and CockroachDB: INT8 integers, UUID keys for
-- everything written often (no sequential keys, which make hot ranges), no advisory locks.
-- The convergence rule these columns implement is documented in cloud-sink/src/apply/fold.rs.

-- One row per RAE: its MQTT status and its latest inventory.
CREATE TABLE raes (
    serial                 TEXT PRIMARY KEY,
    status                 TEXT,            -- online | offline
    status_at_ms           INT8,            -- RAE clock of the status message
    status_changed_at      TIMESTAMPTZ,     -- when the sink saw the status change
    agent_version          TEXT,
    inventory_at_ms        INT8,            -- RAE clock of the latest inventory
    inventory_sessions     INT8,            -- how many open sessions it listed
    inventory_received_at  TIMESTAMPTZ,
    updated_at             TIMESTAMPTZ NOT NULL
);

-- One row per device session. Every record field has its value column(s) and the seq of the
-- event that last wrote it (per-field last-writer-wins by seq).
CREATE TABLE device_sessions (
    session                      UUID PRIMARY KEY,
    serial                       TEXT NOT NULL,
    mac                          TEXT,
    mac_seq                      INT8,
    ipv4                         TEXT,
    ipv4_seq                     INT8,
    ipv6                         TEXT[],
    ipv6_seq                     INT8,
    dhcp_client_id               BYTEA,
    dhcp_client_id_seq           INT8,
    hostname                     BYTEA,           -- raw: DHCP host names are often not UTF-8
    hostname_seq                 INT8,
    vendor                       TEXT,
    vendor_seq                   INT8,
    locally_administered         BOOL,
    locally_administered_seq     INT8,
    dhcp_vendor_class            BYTEA,
    dhcp_vendor_class_seq        INT8,
    dhcp_param_request_list      BYTEA,           -- option 55, one byte per option, order kept
    dhcp_param_request_list_seq  INT8,
    mdns_services_seq            INT8,            -- values: device_mdns_services
    upnp                         JSONB,
    upnp_seq                     INT8,
    dial_apps_seq                INT8,            -- values: device_dial_apps
    esn                          TEXT,
    esn_seq                      INT8,
    reachability                 TEXT,            -- online | offline
    reachability_evidence        TEXT,
    reachability_rtt_us          INT8,
    reachability_seq             INT8,
    availability                 TEXT,            -- available | in_test | maintenance
    availability_seq             INT8,
    first_seen_ms                INT8,
    first_seen_ms_seq            INT8,
    last_seen_ms                 INT8,
    last_seen_ms_seq             INT8,
    opened_seq                   INT8,            -- the lowest seq received
    opened_at_ms                 INT8,
    closed_seq                   INT8,            -- 0: closed because an inventory stopped listing it
    closed_at_ms                 INT8,
    close_reason                 TEXT,            -- gone | forgotten | unlisted
    seq_hw                       INT8 NOT NULL DEFAULT 0,
    snapshot_seq                 INT8 NOT NULL DEFAULT 0,
    contiguous_seq               INT8 NOT NULL DEFAULT 0,
    pending_seqs                 INT8[] NOT NULL DEFAULT ARRAY[]::INT8[],
    inventory_seq                INT8 NOT NULL DEFAULT 0,
    needs_resync                 BOOL NOT NULL DEFAULT false,
    received_at                  TIMESTAMPTZ NOT NULL
);

-- An inventory closes the open sessions of its RAE that it does not list.
CREATE INDEX device_sessions_open_by_serial ON device_sessions (serial) WHERE closed_seq IS NULL;

-- A session's mDNS services, replaced whole when an event with a higher mdns_services_seq wins.
CREATE TABLE device_mdns_services (
    session       UUID NOT NULL,
    position      INT8 NOT NULL,
    service_type  TEXT NOT NULL,
    instance      TEXT NOT NULL,
    port          INT8 NOT NULL,
    txt           JSONB NOT NULL,                 -- [{"key", "value" | "value_hex"}]
    PRIMARY KEY (session, position)
);

-- A session's DIAL applications, replaced like the mDNS services.
CREATE TABLE device_dial_apps (
    session          UUID NOT NULL,
    position         INT8 NOT NULL,
    name             TEXT NOT NULL,
    state            TEXT NOT NULL,               -- running | stopped | installable | hidden | other
    state_detail     TEXT,                        -- the install URL, or the verbatim other state
    additional_data  TEXT,
    PRIMARY KEY (session, position)
);

-- Records that did not decode or validate, with where they came from.
CREATE TABLE dead_letters (
    id               UUID PRIMARY KEY,
    topic            TEXT,                        -- MQTT topic / Kafka key, when there was one
    source           TEXT NOT NULL,               -- kafka | mqtt
    kafka_topic      TEXT,
    kafka_partition  INT8,
    kafka_offset     INT8,
    mqtt_lane        INT8,
    mqtt_pkid        INT8,
    payload          BYTEA NOT NULL,
    reason           TEXT NOT NULL,
    received_at      TIMESTAMPTZ NOT NULL
);

-- A Kafka record replayed after a crash is dead-lettered once.
CREATE UNIQUE INDEX dead_letters_kafka_origin ON dead_letters (kafka_topic, kafka_partition, kafka_offset);
