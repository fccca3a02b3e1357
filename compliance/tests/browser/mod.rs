//! Drives the verifier page (`verifier/vellum-verify.html`) in headless
//! Chromium through chromedriver's W3C WebDriver HTTP API on loopback:
//! picks a bundle's files and a policy file the way a user does, clicks
//! Verify and returns the page's JSON report. Shared by
//! `compliance/tests/verifier_page.rs` and the demo test
//! (`tests/cli_end_to_end.rs`, which includes this file by path).
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver may take to answer /status after it starts.
const DRIVER_START_MS_MAX: u64 = 15_000;
/// How long one verification in the page may take.
const VERIFY_MS_MAX: u64 = 60_000;
/// How long one WebDriver request may take.
const REQUEST_MS_MAX: u64 = 60_000;
/// How long ending a session may take on the way out of a failed test.
const SESSION_END_MS_MAX: u64 = 5_000;
/// The page polls at this interval.
const POLL_MS: u64 = 50;

/// The page in this repository (from the workspace root or a member crate).
pub fn page_path() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    [here.join("verifier"), here.join("../verifier")]
        .iter()
        .map(|dir| dir.join("vellum-verify.html"))
        .find(|path| path.is_file())
        .and_then(|path| path.canonicalize().ok())
        .expect("verifier/vellum-verify.html exists")
}

/// An executable from the environment variable `var`, else the first of
/// `names` on PATH.
pub fn find_program(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// A chromedriver process and one browser session, ended on drop.
pub struct Browser {
    http: reqwest::Client,
    port: u16,
    base: String,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_MS_MAX))
            .build()
            .expect("http client");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(response) = ready
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_millis(DRIVER_START_MS_MAX),
                "chromedriver did not answer within {DRIVER_START_MS_MAX} ms"
            );
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let mut browser = Browser {
            http,
            port,
            base,
            session: String::new(),
            driver,
            _profile: profile,
        };
        let created = browser.post("/session", capabilities).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
    }

    /// A WebDriver command; returns its `value`, panicking on an error.
    async fn post(&self, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status();
        let answer: Value = response.json().await.expect("a JSON answer");
        assert!(status.is_success(), "POST {path} -> {status}: {answer}");
        answer["value"].clone()
    }

    /// Ends the session (chromedriver quits the browser).
    pub async fn quit(mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let ended = self.http.delete(&url).send().await;
        assert!(
            ended.is_ok_and(|r| r.status().is_success()),
            "DELETE {url} failed"
        );
        self.session.clear();
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    async fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Opens the page, picks the files, clicks Verify and returns the
    /// page's report (JSON), or `{"error": ...}` when it verified nothing.
    pub async fn verify(&self, bundle_files: &[PathBuf], policy: &Path) -> Value {
        self.verify_with(&page_path(), bundle_files, policy).await
    }

    /// [`Browser::verify`] with the copy of the page at `page` (the one the
    /// demo writes into its directory).
    pub async fn verify_with(&self, page: &Path, bundle_files: &[PathBuf], policy: &Path) -> Value {
        let url = format!("file://{}", page.display());
        self.post("/url", json!({ "url": url })).await;
        let paths: Vec<String> = bundle_files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let input = self.element("#bundle-files").await;
        self.post(
            &format!("/element/{input}/value"),
            json!({"text": paths.join("\n")}),
        )
        .await;
        let input = self.element("#policy-file").await;
        self.post(
            &format!("/element/{input}/value"),
            json!({"text": policy.display().to_string()}),
        )
        .await;
        let button = self.element("#verify").await;
        self.post(&format!("/element/{button}/click"), json!({}))
            .await;
        let started = Instant::now();
        let done = "const s = document.getElementById('status'); \
                    return s.dataset.state === 'done' && s.dataset.run === '1';";
        while self.script(done).await != json!(true) {
            assert!(
                started.elapsed() < Duration::from_millis(VERIFY_MS_MAX),
                "the page did not finish within {VERIFY_MS_MAX} ms"
            );
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        let text = self
            .script("return document.getElementById('report-json').textContent;")
            .await;
        serde_json::from_str(text.as_str().expect("report text")).expect("report JSON")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            end_session(self.port, &self.session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Ends a WebDriver session, which makes chromedriver quit its browser
/// (killing chromedriver alone leaves the browser running). Blocking, so it
/// also runs while a failed test unwinds.
fn end_session(port: u16, session: &str) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(SESSION_END_MS_MAX)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut answer = Vec::new();
        let _ = stream.take(1 << 20).read_to_end(&mut answer);
    }
}

/// The files of a bundle directory, as a user picks them all.
pub fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list bundle")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}
