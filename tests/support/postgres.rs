//! A throw-away PostgreSQL server for the store tests: `initdb` into a temporary directory,
//! then `postgres` listening on 127.0.0.1 at a free port (and on a socket in that directory),
//! stopped and removed when dropped.
//!
//! The binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`);
//! `scripts/install-test-deps.sh` installs it. PostgreSQL refuses to run as root, so a test
//! running as root runs both as the `postgres` system user, with the directory handed to it.
//! The server requires a password (SCRAM) over TCP, as a real deployment would.
//! [`TestPostgres::set_password`] changes the role's password (to a token a mock issued,
//! say); the test's own connections follow. [`TestPostgres::start_with_tls`] also serves TLS, with a certificate for `127.0.0.1` and
//! `localhost` from a private CA made by `rcgen`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const USER: &str = "gateway";
pub const PASSWORD: &str = "pw-Db-SECRET-4711";
pub const DATABASE: &str = "postgres";

/// A running test server; dropping it stops the server and removes its files.
#[derive(Debug)]
pub struct TestPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// The uid and gid to run the server as, when this test runs as root.
    run_as: Option<(u32, u32)>,
    server: Option<Child>,
    tls: bool,
    /// The role's password now: [`PASSWORD`] until [`TestPostgres::set_password`].
    password: String,
}

impl TestPostgres {
    /// Creates a cluster and starts it; panics, saying what to install, when PostgreSQL is
    /// not there.
    pub fn start() -> Self {
        Self::start_as(false)
    }

    /// Like [`TestPostgres::start`], serving TLS too; [`TestPostgres::ca_file`] is its CA.
    pub fn start_with_tls() -> Self {
        Self::start_as(true)
    }

    fn start_as(tls: bool) -> Self {
        let bin = find_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let run_as = running_as_root(dir.path()).then(postgres_user);
        let mut server = Self {
            bin,
            dir,
            port: free_port(),
            run_as,
            server: None,
            tls,
            password: PASSWORD.to_owned(),
        };
        server.init();
        if tls {
            server.write_certificates();
        }
        server.launch();
        server
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `postgres://gateway:…@127.0.0.1:PORT/postgres`, the current password included.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the role's password to `password` (plain characters, no quotes), which logins
    /// need from now on; sessions already open stay.
    pub async fn set_password(&mut self, password: &str) {
        assert!(
            !password.contains('\''),
            "a password without quotes, please"
        );
        self.client()
            .await
            .batch_execute(&format!("ALTER ROLE {USER} PASSWORD '{password}'"))
            .await
            .expect("set the role's password");
        self.password = password.to_owned();
    }

    /// A client for the test's own queries, driven on the calling runtime.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }

    /// Stops the server as an operator would (a fast shutdown: sessions are cut off).
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            signal(&server, Signal::SIGINT);
            wait_or_kill(&mut server, Duration::from_secs(20));
        }
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "stop it first");
        self.launch();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
            .env_clear()
            .env("LANG", "C")
            .env("PATH", "/usr/bin:/bin");
        command
    }

    fn init(&self) {
        let password_file = self.dir.path().join("password");
        std::fs::write(&password_file, PASSWORD).expect("write the password file");
        if let Some((uid, gid)) = self.run_as {
            for path in [self.dir.path(), &password_file] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args([
                "-U",
                USER,
                "-E",
                "UTF8",
                "--no-sync",
                "--auth=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A private CA and a server certificate it signed, where the server reads them.
    fn write_certificates(&self) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let leaf_params = rcgen::CertificateParams::new(names).expect("params");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        std::fs::write(self.ca_file(), ca.pem()).expect("write ca");
        let cert = self.data().join("server.crt");
        let key = self.data().join("server.key");
        std::fs::write(&cert, leaf.pem()).expect("write cert");
        std::fs::write(&key, leaf_key.serialize_pem()).expect("write key");
        // The server refuses a key file that others can read.
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(&key, private).expect("chmod key");
        if let Some((uid, gid)) = self.run_as {
            for path in [&cert, &key] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log file");
        let tls: &[&str] = match self.tls {
            true => &["-c", "ssl=on"],
            false => &[],
        };
        let server = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(tls)
            .args(["-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.server = Some(server);
        self.wait_until_ready();
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .expect("run pg_isready");
            if ready.success() {
                return;
            }
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|s| s.try_wait().ok().flatten())
            {
                panic!("postgres exited with {status}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "postgres did not accept connections within 30 s: {}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // An immediate shutdown: the server ends its sessions and exits at once.
        if let Some(mut server) = self.server.take() {
            signal(&server, Signal::SIGQUIT);
            wait_or_kill(&mut server, Duration::from_secs(10));
        }
    }
}

fn signal(server: &Child, signal: Signal) {
    let _ = kill(Pid::from_raw(server.id() as i32), signal);
}

fn wait_or_kill(server: &mut Child, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `postgres` and `initdb`.
fn find_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            let complete = ["postgres", "initdb", "pg_isready"]
                .iter()
                .all(|program| bin.join(program).is_file());
            complete.then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: \
             run scripts/install-test-deps.sh (as root), which installs Debian's postgresql"
        ),
    }
}

/// Whether this process runs as root: it then owns the directory it just made as uid 0.
fn running_as_root(dir: &Path) -> bool {
    std::fs::metadata(dir).expect("metadata").uid() == 0
}

/// The `postgres` system user's uid and gid, which the package creates.
fn postgres_user() -> (u32, u32) {
    let id = |flag| {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            output.status.success(),
            "no `postgres` user to run the test server as: run scripts/install-test-deps.sh"
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    (id("-u"), id("-g"))
}

/// A port nothing listens on now, on loopback.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}
