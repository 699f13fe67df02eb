//! A real `redis-server` (Debian's `redis-server`) of a test's own: on a free loopback
//! port, in a temporary directory, without persistence, stopped, paused and started again
//! on the same port by the test, killed when dropped. For the tests of the plugin KV store
//! shared by a fleet.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) redis-server.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl RedisServer {
    /// Starts one on a free port of 127.0.0.1.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            child: None,
            dir: tempfile::tempdir().expect("temporary directory"),
            port,
        };
        server.resume_or_start();
        server
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The `[kv]` table pointing a gateway at this server, as an inline table for
    /// [`crate::GatewayConfig::top`] (`kv = { ... }`), with `extra` keys appended.
    pub fn kv_table(&self, extra: &str) -> String {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        format!("{{ backend = \"redis\", url = {:?}{extra} }}", self.url())
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server (again) on its port, and waits until it answers.
    pub fn resume_or_start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run ./scripts/setup");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Kills the server: connections are reset, new ones refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the server: paused, it accepts connections
    /// and answers nothing, like a hung or overloaded Redis.
    pub fn pause(&self, paused: bool) {
        if let Some(child) = &self.child {
            let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Whether the server answers PING now.
    pub fn ping(&self) -> bool {
        self.command("PING").is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one inline command and returns the first reply line (for a test's own checks,
    /// e.g. `DBSIZE`), or `None` if the server does not answer within a second.
    pub fn command(&self, line: &str) -> Option<String> {
        use std::io::{BufRead, BufReader, Write};
        let mut stream = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        stream.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).ok()?;
        (!reply.is_empty()).then_some(reply)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server is resumed first, so the kill is not held up.
        self.pause(false);
        self.stop();
    }
}
