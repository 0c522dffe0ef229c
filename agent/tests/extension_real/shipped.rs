//! The repo's probes.toml as shipped: its `[[extend_probes]]` entries consistent, their checks
//! counting only the service, run verbatim from a checkout; redis authentication; all three
//! tables through promtool.

use super::*;
use auto::{processes_with, rejected, state_is, value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Processes (zombies included, as pgrep counts them) whose name is exactly `comm`.
fn count_comm(comm: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .count()
}

/// Runs a start check as the agent does (`sh -c`, from the config's directory); its number.
fn run_count_check(check: &str) -> usize {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(check)
        .current_dir(repo())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{check:?} printed {text:?}"))
}

/// The shipped entries: name, the exact process name its start check counts, its table.
const SHIPPED: [(&str, &str, &str); 3] = [
    ("nginx", "nginx", "nginx_status"),
    ("redis", "redis-server", "redis_server"),
    ("haproxy", "haproxy", "haproxy_stat"),
];

/// The agent binary on a config file of our own, started from another working directory.
struct AgentAt {
    child: Child,
    port: u16,
}

impl AgentAt {
    fn start(config: &Path, cwd: &Path, port: u16) -> AgentAt {
        let child = Command::new(env!("CARGO_BIN_EXE_gopher"))
            .arg("--config")
            .arg(config)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let agent = AgentAt { child, port };
        agent.wait_for("agent ready", |s| {
            s.iter().any(|x| x.name == "gopher_build_info")
        });
        agent
    }

    fn scrape(&self) -> Option<Vec<Sample>> {
        common::scrape_url(&format!("http://127.0.0.1:{}/metrics", self.port)).ok()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Some(s) = self.scrape()
                && pred(&s)
            {
                return s;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("timed out waiting for {what}");
    }
}

impl Drop for AgentAt {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = wait_exit(&mut self.child, Duration::from_secs(10));
    }
}

/// Each shipped entry is auto with a count check, its program is in packaging/extend_probes/
/// (relative to probes.toml) and executable, its meta file defines the table the program
/// writes, and its check counts exactly the service's processes: never the checking shell.
#[test]
fn shipped_entries_are_consistent_and_their_checks_count_only_the_service() {
    let cfg = gopher::config::load(&repo().join("probes.toml")).unwrap();
    for (name, comm, table) in SHIPPED {
        let e = cfg
            .extend_probes
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no [[extend_probes]] {name} in probes.toml"));
        assert_eq!(e.switch, gopher::config::Switch::Auto, "{name}");
        assert_eq!(e.check_type, gopher::config::CheckType::Count, "{name}");
        let program = e.command.split_whitespace().next().unwrap();
        assert!(
            program.starts_with("packaging/extend_probes/"),
            "{name}: {program}"
        );
        let path = repo().join(program);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert!(mode & 0o111 != 0, "{} is not executable", path.display());
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(
            source.contains(&format!("TABLE = \"{table}\"")),
            "{program} writes {table}"
        );
        let tables = gopher::config::load_meta_file(e.meta.as_ref().unwrap()).unwrap();
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].name, table, "{name}: meta file");

        let check = e.start_check.as_deref().unwrap();
        let (before, n, after) = (count_comm(comm), run_count_check(check), count_comm(comm));
        assert!(
            before == n && n == after,
            "{check:?} = {n}, {comm} processes: {before}/{after}"
        );
    }
    // With the test's own instances running, the checks count them (nginx: master + worker).
    let missing: Vec<_> = ["nginx", "redis-server", "haproxy"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if !require(missing.is_empty(), &format!("{missing:?} installed")) {
        return;
    }
    let _services = (start_nginx(), start_redis(), start_haproxy());
    for (name, comm, _) in SHIPPED {
        let e = cfg.extend_probes.iter().find(|e| e.name == name).unwrap();
        let check = e.start_check.as_deref().unwrap();
        let (before, n, after) = (count_comm(comm), run_count_check(check), count_comm(comm));
        assert!(n >= 1, "{check:?} = {n} while {comm} runs");
        assert!(
            before == n && n == after,
            "{check:?} = {n}, {comm} processes: {before}/{after}"
        );
    }
}

/// The extension part of the repo's probes.toml, verbatim, run by the agent from another
/// working directory with the config in a copy of the checkout's layout: the relative program
/// and meta paths resolve, the pgrep checks start every probe while the service runs and stop it
/// afterwards. (The shipped parameters point at the default ports, not at the test's
/// instances: nginx_status and redis_server rows say up = 0, which still shows them flowing.)
#[test]
fn shipped_probes_toml_entries_run_from_a_checkout() {
    let missing: Vec<_> = ["nginx", "redis-server", "haproxy"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if !require(missing.is_empty(), &format!("{missing:?} installed")) {
        return;
    }
    let text = std::fs::read_to_string(repo().join("probes.toml")).unwrap();
    let section = &text[text.find("[[extend_probes]]").unwrap()..];
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("packaging"), dir.path().join("packaging")).unwrap();
    let port = free_port();
    let config = format!(
        "[supervision]\nstart_check_interval = 1\nstop_grace = 2\n\
         [web_server]\nbind_addr = \"127.0.0.1\"\nport = {port}\n\n{section}"
    );
    let path = dir.path().join("probes.toml");
    std::fs::write(&path, config).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let agent = AgentAt::start(&path, elsewhere.path(), port);

    let others: Vec<_> = SHIPPED
        .iter()
        .filter(|(_, comm, _)| count_comm(comm) > 0)
        .collect();
    if !others.is_empty() {
        // The shipped checks count every such process on the host, so with the host's own
        // services running the stop half cannot be shown here; the start half still can.
        eprintln!("\n*** host services already run ({others:?}): checking start only ***\n");
        agent.wait_for("probes of running host services started", |s| {
            others
                .iter()
                .all(|(name, _, _)| state_is(s, name, "running"))
        });
        return;
    }
    agent.wait_for("every shipped probe stopped", |s| {
        SHIPPED
            .iter()
            .all(|(name, _, _)| state_is(s, name, "stopped"))
    });
    let services = (start_nginx(), start_redis(), start_haproxy());
    let s = agent.wait_for("every shipped probe running, rows flowing", |s| {
        SHIPPED
            .iter()
            .all(|(name, _, _)| state_is(s, name, "running"))
            && value(
                s,
                "gala_gopher_nginx_status_up",
                &[("server", "127.0.0.1:80")],
            )
            .is_some()
            && value(
                s,
                "gala_gopher_redis_server_up",
                &[("server", "127.0.0.1:6379")],
            )
            .is_some()
    });
    for (name, _, _) in SHIPPED {
        assert_eq!(rejected(&s, name), 0.0, "{name}: rows refused");
    }
    drop(services);
    agent.wait_for("every shipped probe stopped again", |s| {
        SHIPPED
            .iter()
            .all(|(name, _, _)| state_is(s, name, "stopped"))
    });
    for script in ["nginx_probe.py", "redis_probe.py", "haproxy_probe.py"] {
        eventually("probe processes gone", || {
            processes_with(&format!("extend_probes/{script}")).is_empty()
        });
    }
}

#[test]
fn redis_probe_authenticates_with_a_password_file_or_rediscli_auth() {
    if !require(
        have("redis-server"),
        "redis-server (apt-get install redis-server)",
    ) {
        return;
    }
    let meta = meta_of("redis.meta.toml");
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "s3cret word\n").unwrap();
    let pw_file = pw_file.display().to_string();
    let redis = start_redis_with(dir, free_port(), &["--requirepass", "s3cret word"]);
    let addr = format!("127.0.0.1:{}", redis.port);
    let up = |lines: &[String]| num(&parse_row(&lines[0], &meta), "up");

    assert_eq!(
        up(&probe_once("redis_probe.py", &["--addr", &addr])),
        0.0,
        "no password"
    );
    assert_eq!(
        up(&probe_once(
            "redis_probe.py",
            &["--addr", &addr, "--password-file", &pw_file]
        )),
        1.0,
        "--password-file"
    );
    let out = Command::new(shipped("redis_probe.py"))
        .args(["--addr", &addr, "--once"])
        .env("REDISCLI_AUTH", "s3cret word")
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(up(&lines), 1.0, "REDISCLI_AUTH");
    // An unreadable password file stops the probe (exit 2) rather than running without it.
    let out = Command::new(shipped("redis_probe.py"))
        .args(["--addr", &addr, "--once", "--password-file", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "unreadable password file is a usage error"
    );
}

/// All three probes' tables as the agent serves them pass `promtool check metrics` silently
/// (names, HELP, TYPE, counters' `_total`), and the agent refuses none of their rows.
#[test]
fn all_three_tables_pass_promtool() {
    let tools = ["nginx", "redis-server", "haproxy", "promtool"];
    let missing: Vec<_> = tools.into_iter().filter(|p| !have(p)).collect();
    if !require(missing.is_empty(), &format!("{missing:?} installed")) {
        return;
    }
    let (nginx, redis, hp) = (start_nginx(), start_redis(), start_haproxy());
    let entry = |name: &str, script: &str, param: String, meta: &str| {
        format!(
            "[[extend_probes]]\nname = \"{name}\"\ncommand = \"{}\"\nparam = \"{param}\"\n\
             switch = \"on\"\nmeta = \"{}\"\n",
            shipped(script).display(),
            shipped(meta).display()
        )
    };
    let config = [
        entry(
            "nginx",
            "nginx_probe.py",
            format!(
                "--url http://127.0.0.1:{}/nginx_status --interval 1",
                nginx.port
            ),
            "nginx.meta.toml",
        ),
        entry(
            "redis",
            "redis_probe.py",
            format!("--addr 127.0.0.1:{} --interval 1", redis.port),
            "redis.meta.toml",
        ),
        entry(
            "haproxy",
            "haproxy_probe.py",
            format!("--socket {} --interval 1", hp.sock),
            "haproxy.meta.toml",
        ),
    ]
    .concat();
    let agent = Agent::start(&config);
    let s = agent.wait_for(WAIT, "rows of all three tables", |s| {
        [
            "gala_gopher_nginx_status_requests_total",
            "gala_gopher_redis_server_total_commands_processed_total",
            "gala_gopher_haproxy_stat_sessions_total",
        ]
        .iter()
        .all(|m| s.iter().any(|x| x.name == *m))
    });
    for probe in ["nginx", "redis", "haproxy"] {
        assert_eq!(rejected(&s, probe), 0.0, "{probe}: rows refused");
    }
    let (ok, said) = common::promtool_check(&agent.raw());
    assert!(ok && said.trim().is_empty(), "promtool: {said}");
}
