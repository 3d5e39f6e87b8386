//! Loads a page in headless Chromium and reports console errors, failed loads and images that did not
//! decode, through the DevTools protocol over `--remote-debugging-pipe` (NUL-separated JSON on fds 3/4,
//! which a shell maps onto the child's stdin/stdout; no WebSocket client needed).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Chromium binary, or `None` (a failure under CI=true, see `super::missing`).
pub fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        }) {
            return Some(p);
        }
    }
    super::missing("chromium (apt-get install chromium)");
    None
}

const FLAGS: &str = "--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
--disable-sync --no-first-run --disable-dev-shm-usage";

struct Browser {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<Value>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(chromium: &Path) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let cmd = format!(
            "exec '{}' {FLAGS} --user-data-dir='{}' --remote-debugging-pipe 3<&0 4>&1 0</dev/null 1>/dev/null 2>/dev/null",
            chromium.display(),
            profile.path().display()
        );
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for msg in BufReader::new(stdout).split(0).map_while(|m| m.ok()) {
                if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Browser {
            child,
            stdin,
            events,
            next_id: 0,
            _profile: profile,
        }
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.stdin.write_all(msg.to_string().as_bytes()).unwrap();
        self.stdin.write_all(b"\0").unwrap();
        self.stdin.flush().unwrap();
        self.next_id
    }

    /// Waits for the message `done` accepts, passing every message to `seen`.
    fn until(
        &mut self,
        deadline: Instant,
        seen: &mut Vec<Value>,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("Chromium did not answer in time");
            let msg = self
                .events
                .recv_timeout(left)
                .expect("Chromium did not answer in time (or exited)");
            seen.push(msg.clone());
            if done(&msg) {
                return msg;
            }
        }
    }

    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        deadline: Instant,
        seen: &mut Vec<Value>,
    ) -> Value {
        let id = self.send(session, method, params);
        let reply = self.until(deadline, seen, |m| m["id"] == json!(id));
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What went wrong on the page: console errors, exceptions, failed requests, images not shown.
pub fn page_problems(chromium: &Path, page: &Path) -> Vec<String> {
    let mut b = Browser::start(chromium);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let target = b.call(
        None,
        "Target.createTarget",
        json!({"url": "about:blank"}),
        deadline,
        &mut seen,
    );
    let attached = b.call(
        None,
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
        deadline,
        &mut seen,
    );
    let session = attached["sessionId"].as_str().unwrap().to_string();
    for domain in [
        "Runtime.enable",
        "Log.enable",
        "Page.enable",
        "Network.enable",
    ] {
        b.call(Some(&session), domain, json!({}), deadline, &mut seen);
    }
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    b.call(
        Some(&session),
        "Page.navigate",
        json!({"url": url}),
        deadline,
        &mut seen,
    );
    b.until(deadline, &mut seen, |m| {
        m["method"] == "Page.loadEventFired"
    });
    let check = "JSON.stringify([...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src))";
    let broken = b.call(
        Some(&session),
        "Runtime.evaluate",
        json!({"expression": check, "returnByValue": true}),
        deadline,
        &mut seen,
    );
    let count = b.call(
        Some(&session),
        "Runtime.evaluate",
        json!({"expression": "document.images.length", "returnByValue": true}),
        deadline,
        &mut seen,
    );
    eprintln!("{}: {} images", page.display(), count["result"]["value"]);
    let mut problems: Vec<String> =
        serde_json::from_str::<Vec<String>>(broken["result"]["value"].as_str().unwrap())
            .unwrap()
            .into_iter()
            .map(|src| format!("image not shown: {src}"))
            .collect();
    problems.extend(seen.iter().filter_map(problem));
    problems
}

fn problem(m: &Value) -> Option<String> {
    let p = &m["params"];
    match m["method"].as_str()? {
        "Runtime.exceptionThrown" => Some(format!("exception: {}", p["exceptionDetails"])),
        "Runtime.consoleAPICalled" if p["type"] == "error" || p["type"] == "assert" => {
            Some(format!("console.{}: {}", p["type"], p["args"]))
        }
        "Log.entryAdded" if p["entry"]["level"] == "error" => {
            Some(format!("log: {} {}", p["entry"]["text"], p["entry"]["url"]))
        }
        "Network.loadingFailed" => Some(format!("load failed: {}", p["errorText"])),
        _ => None,
    }
}
