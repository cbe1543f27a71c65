//! Shared harness for end-to-end tests: start `rill serve` on free ports, wait until it
//! answers, stop it by PID (SIGTERM, then SIGKILL), restart it on the same ports and data dir
//! (after SIGTERM or SIGKILL), and run the Python client scripts. Data dirs live under
//! `target/test-tmp` (O_DIRECT does not work on every /tmp).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a broker to accept connections (a loaded 2-core machine is slow).
pub const BROKER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a broker gets to exit after SIGTERM before it is killed.
pub const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The release binary from scripts/test.sh, else the one cargo built for this test.
pub fn rill_bin() -> PathBuf {
    std::env::var_os("RILL_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rill")))
}

/// The venv Python with confluent-kafka and kafka-python (installed by scripts/test.sh).
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("RILL_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python");
    assert!(venv.exists(), "no Python client venv: run scripts/test.sh (it creates target/venv) or set RILL_TEST_PYTHON");
    venv
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().expect("local addr").port()
}

/// Where broker data dirs and logs go.
pub fn test_tmp() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-tmp");
    std::fs::create_dir_all(&dir).expect("create target/test-tmp");
    dir
}

/// A running broker, stopped on drop.
pub struct Broker {
    child: Option<Child>,
    /// Processes started so far (each logs "rill broker listening" once ready).
    spawns: usize,
    cores: usize,
    extra: Vec<String>,
    /// Kafka address.
    pub kafka: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    log_path: PathBuf,
}

impl Broker {
    /// Start a broker on `cores` cores with extra flags.
    pub fn start(cores: usize, extra: &[&str]) -> Broker {
        let cores = cores.min(std::thread::available_parallelism().map_or(1, |n| n.get()));
        // A port picked here may be taken before the broker binds it; retry a few times.
        for attempt in 0..5 {
            let kafka: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let data_dir = test_tmp().join(format!("rill-test-{}-{}", std::process::id(), kafka.port()));
            let log_path = data_dir.with_extension("log");
            let _ = std::fs::remove_file(&log_path);
            let extra = extra.iter().map(|arg| arg.to_string()).collect();
            let mut broker = Broker { child: None, spawns: 0, cores, extra, kafka, admin, data_dir, log_path };
            broker.spawn();
            if broker.wait_ready() {
                return broker;
            }
            eprintln!("broker attempt {attempt} did not start:\n{}", broker.log());
            broker.stop();
        }
        panic!("broker did not start after 5 attempts");
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open broker log");
        let child = Command::new(rill_bin())
            .args(["serve", "--cores", &self.cores.to_string(), "--kafka-listen", &self.kafka.to_string()])
            .args(["--admin-listen", &self.admin.to_string(), "--data-dir", self.data_dir.to_str().unwrap()])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rill serve");
        self.child = Some(child);
        self.spawns += 1;
    }

    /// SIGKILL the broker by PID and reap it (a crash: nothing is flushed or closed).
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-KILL", &child.id().to_string()]).status();
        let _ = child.wait();
        // The kernel tears a killed process's io_uring down asynchronously; until then its
        // listening socket still accepts (and later resets) connections. Wait until it is gone
        // so a restart is not mistaken for ready.
        let deadline = Instant::now() + BROKER_STOP_TIMEOUT;
        while Instant::now() < deadline && TcpStream::connect_timeout(&self.kafka, Duration::from_millis(200)).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the broker again on the same ports and data dir (after [`Broker::stop`] or
    /// [`Broker::kill`]); panics with the log if it does not come up.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        self.spawn();
        assert!(self.wait_ready(), "broker did not restart:\n{}", self.log());
    }

    /// Runs the `rill` CLI against this broker with `stdin` as its input; its stdout. Panics
    /// with its stderr, stdout and the broker's log when it fails.
    pub fn rill(&self, args: &[&str], stdin: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(rill_bin())
            .args(args)
            .env("RILL_BOOTSTRAP", self.bootstrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rill");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "rill {args:?} failed: {}\n{stdout}\nbroker log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        stdout
    }

    /// GET a path of the admin HTTP endpoint; the whole response (status line, headers, body).
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(self.admin).expect("connect admin");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                eprintln!("broker exited early: {status}");
                return false;
            }
            // Ready means this process logged that it listens (not merely that the port accepts).
            let listening = self.log().matches("rill broker listening").count() >= self.spawns;
            if listening && TcpStream::connect_timeout(&self.kafka, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The broker's process id (panics when it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// Whether the broker process is still alive.
    pub fn is_running(&self) -> bool {
        std::fs::metadata(format!("/proc/{}", self.pid())).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default().contains(") Z ")
    }

    /// Bootstrap string for clients.
    pub fn bootstrap(&self) -> String {
        self.kafka.to_string()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM, wait, SIGKILL if needed. Returns whether it exited cleanly after SIGTERM.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let deadline = Instant::now() + BROKER_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Run a Python client script from tests/python against this broker.
    pub fn run_python(&self, script: &str, args: &[&str]) -> Output {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
        let output = Command::new(python())
            .arg(&path)
            .arg(self.bootstrap())
            .args(args)
            .output()
            .expect("run python");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{script} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
            output.status,
            self.log()
        );
        println!("{script}: {stdout}");
        output
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// The sum of a metric's samples over all its label sets in Prometheus text `metrics`
/// (`name` without labels, e.g. `rill_fdatasyncs_total`).
pub fn metric_total(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .map(|line| {
            let value = line.rsplit(' ').next().unwrap_or_default();
            value.parse::<u64>().unwrap_or_else(|_| panic!("{name}: sample {value:?} is not a count"))
        })
        .sum()
}
