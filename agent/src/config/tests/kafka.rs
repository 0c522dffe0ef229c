//! `[kafka]`: producer settings, properties and implicit tables.

use super::*;

#[test]
fn kafka_producer_defaults() {
    let k = ok("").kafka;
    assert_eq!(k.metadata_topic, "gala_gopher_metadata");
    assert_eq!(k.batch_num_messages, 10_000);
    assert_eq!(k.queue_buffering_max_messages, 100_000);
    assert_eq!(k.queue_buffering_max_kbytes, 1_048_576);
    assert_eq!(k.queue_buffering_max_ms, 5);
    assert_eq!(k.compression_codec, Compression::None);
    assert_eq!(k.message_max_bytes, 1_000_000);
    assert_eq!(k.message_timeout_ms, 300_000);
    assert_eq!(k.flush_timeout, Duration::from_secs(10));
    assert!(k.properties.is_empty());
}

#[test]
fn kafka_producer_settings_are_read() {
    let k = ok(r#"
[kafka]
switch = "on"
kafka_broker = "k1:9092,k2:9093"
metadata_topic = "meta"
batch_num_messages = 500
queue_buffering_max_messages = 2000
queue_buffering_max_kbytes = 4096
queue_buffering_max_ms = 50
compression_codec = "lz4"
message_max_bytes = 2000000
message_timeout_ms = 60000
flush_timeout = 3

[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "PLAIN"
"ssl.ca.location" = "/etc/ssl/ca.pem"
"#)
    .kafka;
    assert_eq!(k.metadata_topic, "meta");
    assert_eq!(k.batch_num_messages, 500);
    assert_eq!(k.queue_buffering_max_messages, 2000);
    assert_eq!(k.queue_buffering_max_kbytes, 4096);
    assert_eq!(k.queue_buffering_max_ms, 50);
    assert_eq!(k.compression_codec, Compression::Lz4);
    assert_eq!(k.compression_codec.as_str(), "lz4");
    assert_eq!(k.message_max_bytes, 2_000_000);
    assert_eq!(k.message_timeout_ms, 60_000);
    assert_eq!(k.flush_timeout, Duration::from_secs(3));
    assert_eq!(
        k.properties,
        vec![
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ("sasl.mechanisms".to_owned(), "PLAIN".to_owned()),
            ("ssl.ca.location".to_owned(), "/etc/ssl/ca.pem".to_owned()),
        ]
    );
}

#[test]
fn kafka_producer_settings_are_validated() {
    let cases: [(&str, usize, &str, DiagnosticKind, &str); 9] = [
        (
            "[kafka]\ncompression_codec = \"brotli\"\n",
            2,
            "kafka.compression_codec",
            DiagnosticKind::InvalidValue,
            "\"none\", \"gzip\", \"snappy\", \"lz4\" or \"zstd\"",
        ),
        (
            "[kafka]\nqueue_buffering_max_messages = 0\n",
            2,
            "kafka.queue_buffering_max_messages",
            DiagnosticKind::OutOfRange,
            "",
        ),
        (
            "[kafka]\nbatch_num_messages = \"10\"\n",
            2,
            "kafka.batch_num_messages",
            DiagnosticKind::WrongType,
            "",
        ),
        (
            "[kafka]\nmessage_max_bytes = 10\n",
            2,
            "kafka.message_max_bytes",
            DiagnosticKind::OutOfRange,
            "",
        ),
        (
            "[kafka]\nmetadata_topic = \"a/b\"\n",
            2,
            "kafka.metadata_topic",
            DiagnosticKind::InvalidValue,
            "[a-zA-Z0-9._-]",
        ),
        (
            "[kafka]\nkafka_topic = \"t\"\nmetadata_topic = \"t\"\n",
            3,
            "kafka.metadata_topic",
            DiagnosticKind::InvalidValue,
            "must differ",
        ),
        (
            "[kafka]\n[kafka.properties]\n\"sasl.username\" = 5\n",
            3,
            "kafka.properties.sasl.username",
            DiagnosticKind::WrongType,
            "expected a string",
        ),
        (
            "[kafka]\nproperties = { \"message.timeout.ms\" = \"1\" }\n",
            2,
            "kafka.properties.message.timeout.ms",
            DiagnosticKind::InvalidValue,
            "set by the agent",
        ),
        (
            "[kafka]\nflush_timeout = -1\n",
            2,
            "kafka.flush_timeout",
            DiagnosticKind::OutOfRange,
            "",
        ),
    ];
    for (text, line, key, kind, msg) in cases {
        let d = one(text, line, key, kind);
        assert!(d.to_string().contains(msg), "{d}");
    }
    // Unknown keys in [kafka] are still refused.
    one(
        "[kafka]\nlinger = 5\n",
        2,
        "kafka.linger",
        DiagnosticKind::UnknownKey,
    );
}

/// Tables TOML makes implicitly (`[kafka.properties]` with no `[kafka]` header, dotted keys)
/// have no place of their own in the reader's answer; they are read like any other table, and
/// a problem inside one still names file:line and the key path.
#[test]
fn implicit_tables_are_read_and_placed() {
    let k = ok("[kafka.properties]\n\"client.id\" = \"node-1\"\n").kafka;
    assert_eq!(k.switch, OnOff::Off);
    assert_eq!(
        k.properties,
        vec![("client.id".to_owned(), "node-1".to_owned())]
    );
    // Unquoted dotted names are librdkafka's names all the same, with or without [kafka].
    for text in [
        "[kafka.properties]\nsecurity.protocol = \"sasl_plaintext\"\nsasl.mechanism = \"PLAIN\"\n",
        "[kafka]\nswitch = \"on\"\n[kafka.properties]\nsecurity.protocol = \"sasl_plaintext\"\nsasl.mechanism = \"PLAIN\"\n",
        "kafka.properties.security.protocol = \"sasl_plaintext\"\nkafka.properties.\"sasl.mechanism\" = \"PLAIN\"\n",
    ] {
        assert_eq!(
            ok(text).kafka.properties,
            vec![
                ("security.protocol".to_owned(), "sasl_plaintext".to_owned()),
                ("sasl.mechanism".to_owned(), "PLAIN".to_owned()),
            ],
            "{text}"
        );
    }
    let cases: [(&str, usize, &str, DiagnosticKind, &str); 5] = [
        (
            "[kafka.properties]\n\"sasl.username\" = 5\n",
            2,
            "kafka.properties.sasl.username",
            DiagnosticKind::WrongType,
            "expected a string",
        ),
        (
            "\n[kafka.properties]\nmessage.timeout.ms = \"1\"\n",
            3,
            "kafka.properties.message.timeout.ms",
            DiagnosticKind::InvalidValue,
            "set by the agent",
        ),
        (
            "[kafak.properties]\n\"a\" = \"b\"\n",
            1,
            "kafak",
            DiagnosticKind::UnknownKey,
            "unknown key",
        ),
        (
            "[kafka.propertes]\n\"a\" = \"b\"\n",
            1,
            "kafka.propertes",
            DiagnosticKind::UnknownKey,
            "unknown key",
        ),
        (
            "[[extend_probes]]\nname = \"a\"\ncommand = \"a\"\nswitch = \"on\"\nstart.check = 1\n",
            5,
            "extend_probes[0].start",
            DiagnosticKind::UnknownKey,
            "unknown key",
        ),
    ];
    for (text, line, key, kind, msg) in cases {
        let d = one(text, line, key, kind);
        assert!(d.to_string().contains(msg), "{d}");
        assert!(!d.message.contains("borrowed"), "{d}");
    }
}
