//! The peers `bench tail --peers` puts beside risefront: nginx and HAProxy from the system's
//! packages (Debian: `apt-get install nginx haproxy`), each as a reverse proxy in front of the
//! same plain server, reloaded their own way: `nginx -s reload` (SIGHUP to the master) and
//! HAProxy's hitless reload (master-worker mode, SIGUSR2 to the master, listeners passed on by
//! `expose-fd listeners`, closes spread by `close-spread-time`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running peer, killed (with its process group) on drop.
pub(crate) struct Peer {
    kind: &'static str,
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Peer {
    /// Starts `kind` ("nginx" or "haproxy") on a free port, proxying to `backend` with
    /// keep-alive upstream connections, sized for `connections` clients.
    pub(crate) fn start(
        kind: &str,
        backend: SocketAddr,
        scratch: &Path,
        connections: usize,
    ) -> std::io::Result<Peer> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let dir = scratch.join(kind);
        std::fs::create_dir_all(dir.join("logs"))?;
        let log = std::fs::File::create(dir.join("peer.log"))?;
        let (kind, mut command) = match kind {
            "nginx" => {
                let conf = dir.join("nginx.conf");
                std::fs::write(&conf, nginx_conf(addr, backend, connections, &dir))?;
                let mut command = Command::new(find("nginx")?);
                command.arg("-p").arg(&dir).arg("-c").arg(&conf);
                ("nginx", command)
            }
            "haproxy" => {
                let conf = dir.join("haproxy.cfg");
                std::fs::write(&conf, haproxy_cfg(addr, backend, connections, &dir))?;
                let mut command = Command::new(find("haproxy")?);
                command.arg("-W").arg("-f").arg(&conf);
                ("haproxy", command)
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("unknown peer {other}"),
                ));
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn()?;
        // Both refuse a bad configuration at once: a quick exit is a failure to start.
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("peer.log")).unwrap_or_default();
            return Err(std::io::Error::other(format!(
                "{kind} exited at start ({status}): {log}"
            )));
        }
        Ok(Peer { kind, child, addr })
    }

    /// Reloads the peer its own way; returns once the signal is sent (neither says when the
    /// new workers serve).
    pub(crate) async fn reload(&self) -> std::io::Result<()> {
        let signal = match self.kind {
            "nginx" => rustix::process::Signal::HUP,
            _ => rustix::process::Signal::USR2,
        };
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32)
            .ok_or_else(|| std::io::Error::other("no pid"))?;
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

fn find(program: &str) -> std::io::Result<std::path::PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(program);
        if path.exists() {
            return Ok(path);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{program} is not installed (Debian: apt-get install {program})"),
    ))
}

/// Two workers (one per core here), keep-alive to the clients and to the backend.
fn nginx_conf(addr: SocketAddr, backend: SocketAddr, connections: usize, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "daemon off;
master_process on;
user root;
worker_processes 2;
worker_rlimit_nofile 19000;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections {}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream backend {{ server {backend}; keepalive 512; keepalive_requests 1000000; }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
        2 * connections + 256
    )
}

/// Master-worker mode with a stats socket exposing the listeners, so that a reload is hitless;
/// closes spread over 250 ms, as risefront's default close spread.
fn haproxy_cfg(addr: SocketAddr, backend: SocketAddr, connections: usize, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "global
    master-worker
    nbthread 2
    maxconn {}
    stats socket {dir}/admin.sock mode 600 level admin expose-fd listeners
    close-spread-time 250ms
    hard-stop-after 30s
defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 75s
    option http-keep-alive
frontend front
    bind {addr}
    default_backend back
backend back
    http-reuse always
    server s1 {backend}
",
        2 * connections + 256
    )
}
