//! The catalogue of the agent's own metrics: every `gopher_*` family's name, type, labels and
//! HELP text, declared once here so that the full list lives in one place.

use super::Kind::{self, Counter, FloatCounter, Gauge};

pub const BUILD_INFO: &str = "gopher_build_info";
pub const PROBE_STATE: &str = "gopher_probe_state";
pub const PROBE_RESTARTS: &str = "gopher_probe_restarts_total";
pub const PROBE_PANICS: &str = "gopher_probe_panics_total";
pub const TASK_RESTARTS: &str = "gopher_task_restarts_total";
pub const ROWS_INGESTED: &str = "gopher_rows_ingested_total";
pub const ROWS_DROPPED: &str = "gopher_rows_dropped_total";
pub const EBPF_EVENTS_LOST: &str = "gopher_ebpf_events_lost_total";
pub const EBPF_MAP_FULL: &str = "gopher_ebpf_map_full_total";
pub const PROBE_ERRORS: &str = "gopher_probe_errors_total";
pub const PROBE_LAST_FAILURE: &str = "gopher_probe_last_failure_info";
pub const PROBE_ROWS: &str = "gopher_probe_rows_total";
pub const PROBE_ROWS_REJECTED: &str = "gopher_probe_rows_rejected_total";
pub const PROBE_LINES_IGNORED: &str = "gopher_probe_lines_ignored_total";
pub const START_CHECK_FAILURES: &str = "gopher_start_check_failures_total";
pub const SCRAPE_DURATION: &str = "gopher_scrape_duration_seconds";
pub const SCRAPE_RENDERS: &str = "gopher_scrape_renders_total";
pub const SCRAPES: &str = "gopher_scrapes_total";
pub const HTTP_REFUSED: &str = "gopher_http_refused_total";
pub const IMDB_RECORDS: &str = "gopher_imdb_records";
pub const IMDB_TABLES: &str = "gopher_imdb_tables";
pub const FAMILIES_SKIPPED: &str = "gopher_prometheus_families_skipped";
pub const KAFKA_QUEUED: &str = "gopher_kafka_queued_total";
pub const KAFKA_DELIVERED: &str = "gopher_kafka_delivered_total";
pub const KAFKA_FAILED: &str = "gopher_kafka_failed_total";
pub const KAFKA_DROPPED: &str = "gopher_kafka_dropped_total";
pub const KAFKA_QUEUE_MESSAGES: &str = "gopher_kafka_queue_messages";
pub const CONTROL_REQUESTS: &str = "gopher_control_requests_total";
pub const CONFIG_RELOADS: &str = "gopher_config_reloads_total";
pub const WEB_TLS_RELOADS: &str = "gopher_web_tls_reloads_total";
pub const PROBE_COLLECT_SECONDS: &str = "gopher_probe_collect_seconds";
pub const TCP_LINKS_AGGREGATED: &str = "gopher_tcp_links_aggregated_total";
pub const TCP_SOCKETS_EXCLUDED: &str = "gopher_tcp_sockets_excluded_total";
pub const TCP_RESETS_UNATTRIBUTED: &str = "gopher_tcp_resets_unattributed_total";
pub const TCP_NETNS_ERRORS: &str = "gopher_tcp_netns_errors_total";
pub const TCP_SOCKET_SOURCE: &str = "gopher_tcp_socket_source";
pub const NGINX_BINARIES_TRACED: &str = "gopher_nginx_binaries_traced";
pub const NGINX_SESSIONS_SKIPPED: &str = "gopher_nginx_sessions_skipped_total";
pub const EBPF_RUN_SECONDS: &str = "gopher_ebpf_program_run_seconds_total";
pub const EBPF_RUNS: &str = "gopher_ebpf_program_runs_total";
// The standard process collector's families (names and HELP as the client libraries have them).
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_VIRTUAL: &str = "process_virtual_memory_bytes";
pub const PROCESS_RESIDENT: &str = "process_resident_memory_bytes";
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
pub const PROCESS_THREADS: &str = "process_threads";

/// The reasons the table store refuses a row of a registered table for (`ImdbError::reason`),
/// and loses one for (`ingest_panic`: the batch being stored when the ingest task panicked,
/// `imdb::REASON_INGEST_PANIC`), whose `gopher_rows_dropped_total` series are shown at 0
/// before the first drop.
pub const ROW_REFUSALS: [&str; 4] = ["field_count", "bad_value", "record_limit", "ingest_panic"];

/// The reasons of `gopher_http_refused_total`, shown at 0 from the start.
pub const HTTP_REFUSED_REASONS: [&str; 7] = [
    "connections",
    "scrapes",
    "header_timeout",
    "write_timeout",
    "deadline",
    "unauthorized",
    "tls_handshake",
];

/// The values of `gopher_probe_state{state}`; exactly one is 1 per probe.
pub const PROBE_STATES: [&str; 4] = ["stopped", "starting", "running", "failed"];

/// One family: name, type, label names (in render order), HELP text.
pub(super) type Declaration = (&'static str, Kind, &'static [&'static str], &'static str);

/// Every family, in render order.
// One flat list of declarations: splitting it would scatter the catalogue.
#[allow(clippy::too_many_lines)]
pub(super) fn declared() -> [Declaration; 47] {
    [
        (
            CONTROL_REQUESTS,
            Counter,
            &["method", "code"],
            "Control channel (gRPC) calls by method and outcome (ok, not_found, invalid_argument, unauthenticated, ...).",
        ),
        (
            CONFIG_RELOADS,
            Counter,
            &["result"],
            "Configuration reloads (SIGHUP): ok, or error when the new file was refused and the old one kept.",
        ),
        (
            WEB_TLS_RELOADS,
            Counter,
            &["result"],
            "Metrics-endpoint TLS certificate and key read again because a file changed: ok, or error when they could not be used and the previous ones stayed served.",
        ),
        (
            BUILD_INFO,
            Gauge,
            &["version", "revision"],
            "Always 1; the labels carry the agent's version and the git revision it was built from (unknown when built outside a git checkout).",
        ),
        (
            PROBE_STATE,
            Gauge,
            &["probe", "state"],
            "1 for the probe's current lifecycle state (stopped, starting, running, failed), 0 for the others.",
        ),
        (
            PROBE_RESTARTS,
            Counter,
            &["probe"],
            "Times the supervisor restarted the probe after it ended on its own (exit, crash, error).",
        ),
        (
            PROBE_PANICS,
            Counter,
            &["probe"],
            "Times a probe's code panicked; the supervisor counts it as a failure and restarts the probe.",
        ),
        (
            TASK_RESTARTS,
            Counter,
            &["task"],
            "Times one of the agent's own tasks (web, ingest, kafka) panicked or ended unexpectedly and was restarted.",
        ),
        (
            ROWS_INGESTED,
            Counter,
            &["table"],
            "Rows accepted into the in-memory table store.",
        ),
        (
            ROWS_DROPPED,
            Counter,
            &["table", "reason"],
            "Rows refused by the table store, lost with the batch being stored when the ingest task panicked (reason=\"ingest_panic\"), and records aged out of it (reason=\"expired\").",
        ),
        (
            EBPF_EVENTS_LOST,
            Counter,
            &["probe"],
            "eBPF events the kernel could not deliver to the agent.",
        ),
        (
            EBPF_MAP_FULL,
            Counter,
            &["probe", "map"],
            "Inserts an eBPF map refused because it was full (tcp, links: sockets tracked without their owner; a socket can count at connect and again at the handshake).",
        ),
        (
            PROBE_ERRORS,
            Counter,
            &["probe"],
            "Errors a running probe hit and carried on from (a failed sock_diag dump, say).",
        ),
        (
            PROBE_LAST_FAILURE,
            Gauge,
            &["probe", "reason"],
            "Always 1; the reason label says why the probe last ended on its own (exit status, signal, last stderr line).",
        ),
        (
            PROBE_COLLECT_SECONDS,
            Gauge,
            &["probe"],
            "Seconds the probe's last collection took (tcp: sock_diag dumps of every namespace, owners, ageing).",
        ),
        (
            TCP_LINKS_AGGREGATED,
            Counter,
            &[],
            "TCP sockets folded into an aggregate tcp_link row (client_ip 0.0.0.0 or ::) because the probe's max_series links existed.",
        ),
        (
            TCP_RESETS_UNATTRIBUTED,
            Counter,
            &[],
            "TCP connection resets not counted in any tcp_link row's send_rsts/receive_rsts: the reset socket was never seen by the probe (closed before a dump and without an eBPF entry).",
        ),
        (
            TCP_SOCKETS_EXCLUDED,
            Counter,
            &[],
            "TCP sockets left out of tcp_link by the probe's include/exclude filters (ports, CIDRs, processes).",
        ),
        (
            TCP_NETNS_ERRORS,
            Counter,
            &["reason"],
            "Network namespaces the tcp probe could not read: open (no sock_diag socket in it) or dump (the dump failed); their sockets are kept, not declared gone.",
        ),
        (
            TCP_SOCKET_SOURCE,
            Gauge,
            &["source"],
            "1 for where the tcp probe reads live sockets from: iterator (the eBPF iter/tcp program) or sock_diag (the fallback when the iterator cannot load, or socket_iterator = false).",
        ),
        (
            NGINX_BINARIES_TRACED,
            Gauge,
            &[],
            "nginx binaries the nginx probe has its uprobes on (0 while no nginx runs).",
        ),
        (
            NGINX_SESSIONS_SKIPPED,
            Counter,
            &["reason"],
            "nginx upstream connections seen but not counted in nginx_statistic, per interval: not_tcp (UDP or unix-socket upstream or client), unreadable (the process went away while being read).",
        ),
        (
            PROBE_ROWS,
            Counter,
            &["probe"],
            "Rows a probe sent to the table store (for extension probes: lines that passed the format checks).",
        ),
        (
            PROBE_ROWS_REJECTED,
            Counter,
            &["probe", "reason"],
            "Lines an extension probe printed as rows that were refused (not_utf8, too_long, malformed, unknown_table, field_count, bad_value).",
        ),
        (
            PROBE_LINES_IGNORED,
            Counter,
            &["probe"],
            "Lines an extension probe printed that do not start with '|' and so are not rows.",
        ),
        (
            START_CHECK_FAILURES,
            Counter,
            &["probe", "reason"],
            "Start checks of switch=auto probes that gave no answer (timeout, spawn, bad_output, killed).",
        ),
        (
            SCRAPE_DURATION,
            Gauge,
            &[],
            "Seconds the previous scrape spent taking the snapshot and rendering it.",
        ),
        (
            SCRAPE_RENDERS,
            Counter,
            &[],
            "Renders of /metrics. Scrapes that arrive while one is in progress share it, so this grows slower than gopher_scrapes_total under concurrent scrapes.",
        ),
        (
            SCRAPES,
            Counter,
            &["encoding"],
            "GET requests for /metrics answered, by response encoding (identity, gzip).",
        ),
        (
            HTTP_REFUSED,
            Counter,
            &["reason"],
            "Metrics-endpoint connections closed or requests refused to keep /metrics available: connections (open-connection cap), scrapes (concurrent /metrics cap, answered 503), header_timeout (request headers too slow), write_timeout (client stopped reading), deadline (response took too long), unauthorized (basic auth missing or wrong, answered 401), tls_handshake (TLS handshake failed or too slow).",
        ),
        (
            IMDB_RECORDS,
            Gauge,
            &["table"],
            "Records currently held per table.",
        ),
        (IMDB_TABLES, Gauge, &[], "Tables currently registered."),
        (
            FAMILIES_SKIPPED,
            Gauge,
            &[],
            "Metric families left out of the last scrape because their name clashed with an earlier family.",
        ),
        (
            KAFKA_QUEUED,
            Counter,
            &[],
            "Kafka messages (records and table definitions) accepted into the producer queue.",
        ),
        (
            KAFKA_DELIVERED,
            Counter,
            &[],
            "Kafka messages the broker acknowledged.",
        ),
        (
            KAFKA_FAILED,
            Counter,
            &["reason"],
            "Queued Kafka messages whose delivery failed after the producer's retries (timeout, unknown_topic, too_large, other).",
        ),
        (
            KAFKA_DROPPED,
            Counter,
            &["reason"],
            "Kafka messages never queued (queue_full, too_large, unknown_topic, other) or still queued when shutdown's wait ran out (shutdown).",
        ),
        (
            KAFKA_QUEUE_MESSAGES,
            Gauge,
            &[],
            "Kafka messages in the producer queue (waiting or in flight), sampled every egress interval.",
        ),
        (
            EBPF_RUN_SECONDS,
            FloatCounter,
            &["probe", "program"],
            "Seconds the probe's eBPF program ran in the kernel (bpf_prog_info run_time_ns); counted only while kernel.bpf_stats_enabled=1, else 0.",
        ),
        (
            EBPF_RUNS,
            Counter,
            &["probe", "program"],
            "Times the probe's eBPF program ran (bpf_prog_info run_cnt); counted only while kernel.bpf_stats_enabled=1, else 0.",
        ),
        (
            PROCESS_CPU,
            FloatCounter,
            &[],
            "Total user and system CPU time spent in seconds.",
        ),
        (
            PROCESS_OPEN_FDS,
            Gauge,
            &[],
            "Number of open file descriptors.",
        ),
        (
            PROCESS_MAX_FDS,
            Gauge,
            &[],
            "Maximum number of open file descriptors.",
        ),
        (PROCESS_VIRTUAL, Gauge, &[], "Virtual memory size in bytes."),
        (
            PROCESS_RESIDENT,
            Gauge,
            &[],
            "Resident memory size in bytes.",
        ),
        (
            PROCESS_START_TIME,
            Gauge,
            &[],
            "Start time of the process since unix epoch in seconds.",
        ),
        (
            PROCESS_THREADS,
            Gauge,
            &[],
            "Number of OS threads in the process.",
        ),
    ]
}
