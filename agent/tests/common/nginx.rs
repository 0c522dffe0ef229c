//! A real nginx for the nginx_link probe's tests: own config in a temp dir, own loopback ports,
//! two workers, HTTP reverse proxy and stream proxy in front of backends that hold every
//! connection, and clients that hold sessions open from a chosen source address.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{Agent, connect_from, free_port, require};

pub const WAIT: Duration = Duration::from_secs(30);
/// The agent sees every nginx on the machine: the two tests must not see each other's.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// The fields of nginx_statistic, in order: gala-gopher's 2021 list.
pub const FIELDS: [&str; 7] = [
    "client_ip",
    "virtual_ip",
    "virtual_port",
    "server_ip",
    "server_port",
    "is_l7",
    "link_count",
];

pub const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

pub fn have_nginx() -> bool {
    Path::new("/usr/sbin/nginx").exists() && Path::new(STREAM_MODULE).exists()
}

/// A backend that accepts and holds every connection (answers nothing): a proxied session
/// lives until its client goes.
pub struct Backend {
    pub port: u16,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Backend {
    pub fn start() -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                h.lock().unwrap().push(s);
            }
        });
        Backend { port, held }
    }

    pub fn held(&self) -> usize {
        let mut held = self.held.lock().unwrap();
        // A connection the proxy closed reads EOF: drop it.
        held.retain(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 4096];
            let alive = loop {
                match (&*s).read(&mut b) {
                    Ok(0) => break false,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                    Err(_) => break false,
                }
            };
            s.set_nonblocking(false).unwrap();
            alive
        });
        held.len()
    }
}

pub struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    /// SIGTERM to the master: it stops its workers (SIGKILL would leave them running).
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn start_nginx(http: u16, stream: u16, http_backend: u16, stream_backend: u16) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = format!(
        r"load_module {STREAM_MODULE};
daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{http};
        location / {{ proxy_pass http://127.0.0.1:{http_backend}; proxy_read_timeout 300s; }}
    }}
}}
stream {{
    server {{
        listen 127.0.0.1:{stream};
        proxy_pass 127.0.0.1:{stream_backend};
        proxy_timeout 300s;
    }}
}}
"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new("/usr/sbin/nginx")
        .args(["-p", &d.to_string(), "-c", &conf_path.display().to_string()])
        .args(["-e", &format!("{d}/error.log")])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", stream)).is_err() {
        assert!(start.elapsed() < WAIT, "nginx did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    Nginx { child, _dir: dir }
}

/// An HTTP request in flight through the proxy (the backend never answers).
pub fn http_session(src: Ipv4Addr, port: u16) -> TcpStream {
    let mut s = connect_from(src, port);
    write!(s, "GET /held HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    s
}

pub fn stream_session(src: Ipv4Addr, port: u16) -> TcpStream {
    let mut s = connect_from(src, port);
    s.write_all(b"hello").unwrap();
    s
}

/// Waits until the backends hold `want` connections (HTTP backend, stream backend).
pub fn wait_held(hb: &Backend, sb: &Backend, want: (usize, usize)) {
    let start = Instant::now();
    while (hb.held(), sb.held()) != want {
        assert!(
            start.elapsed() < WAIT,
            "backends hold {} and {}, not {want:?}",
            hb.held(),
            sb.held()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn traced(agent: &Agent) {
    agent.wait_for(WAIT, "nginx binary traced", |s| {
        s.iter()
            .any(|x| x.name == "gopher_nginx_binaries_traced" && x.value >= 1.0)
    });
}

/// A real nginx proxying an HTTP port to one backend and a stream port to another.
pub struct Setup {
    /// Held for the test's length: the agent sees every nginx on the machine.
    pub serial: std::sync::MutexGuard<'static, ()>,
    pub hb: Backend,
    pub sb: Backend,
    pub http: u16,
    pub stream: u16,
    pub nginx: Nginx,
}

/// `None` (the test is skipped) without root or nginx's stream module.
pub fn setup() -> Option<Setup> {
    if !require(super::is_root(), "root (uprobes)")
        || !require(
            have_nginx(),
            "nginx with its stream module (apt-get install nginx libnginx-mod-stream)",
        )
    {
        return None;
    }
    let serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (hb, sb) = (Backend::start(), Backend::start());
    let (http, stream) = (free_port(), free_port());
    let nginx = start_nginx(http, stream, hb.port, sb.port);
    Some(Setup {
        serial,
        hb,
        sb,
        http,
        stream,
        nginx,
    })
}
