//! Real `tally` processes in tests: a child that is killed when dropped
//! (a failing test leaves none behind), and the command line pointed at a
//! local emulator with the settings every test process needs.

use std::ffi::OsStr;
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

/// A child process, killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Process {
    /// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits for the process to exit, at most `limit` (then panics).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The `tally` binary `binary` with the local stack's AWS settings
/// (region, dummy credentials), JSON logs and a free health port.
/// Endpoints and Tally's own settings are the caller's.
pub fn tally(binary: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(binary);
    command
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("TALLY_LOG_FORMAT", "json")
        .env("TALLY_HEALTH_ADDR", "127.0.0.1:0");
    command
}

/// Runs `command` to its end and panics, with its stderr, unless it
/// succeeded; `what` names it in the message.
pub fn succeed(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{what}: could not start: {error}"));
    assert!(
        output.status.success(),
        "{what}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The metrics lines a `tally` process logged (JSON logs, one `metrics`
/// message per interval): (uptime in ms, the metrics object), oldest
/// first. `tally tail` logs the uptime beside the metrics, `tally worker`
/// inside them.
pub fn metrics_lines(log: &std::path::Path) -> Vec<(u64, serde_json::Value)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| value["message"] == "metrics")
        .filter_map(|value| {
            let metrics: serde_json::Value =
                serde_json::from_str(value["metrics"].as_str()?).ok()?;
            let uptime = value["uptime_ms"]
                .as_u64()
                .or_else(|| metrics["uptime_ms"].as_u64())?;
            Some((uptime, metrics))
        })
        .collect()
}

/// The last metrics object a `tally` process logged, or `null`.
pub fn last_metrics(log: &std::path::Path) -> serde_json::Value {
    metrics_lines(log)
        .pop()
        .map_or(serde_json::Value::Null, |(_, metrics)| metrics)
}

/// Waits up to `limit` for a metrics line in `log` that satisfies `ready`
/// and returns it; fails the test naming `what` and the last line seen.
pub async fn wait_for_metrics(
    log: &std::path::Path,
    limit: Duration,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let metrics = last_metrics(log);
        if ready(&metrics) {
            return metrics;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not seen in {limit:?}; last metrics in {}: {metrics}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
