//! The gateway seen by outside tools: schemathesis fuzzes every operation
//! of `/openapi.json` (no 5xx, no response outside the schema), and
//! headless Chromium drives the pages (vote, see the dashboard count go
//! up, screenshots). The tools are installed, pinned, by `ops/web-tools`.

use crate::local_stack;

use std::process::Command;
use std::time::Duration;

use local_stack::Stack;

fn web_tools(what: &str) -> String {
    let output = Command::new("bash")
        .arg(tally_lease::testing::repo_root().join("ops/web-tools"))
        .arg(what)
        .output()
        .expect("run ops/web-tools");
    assert!(
        output.status.success(),
        "ops/web-tools {what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let schemathesis = tokio::task::spawn_blocking(|| web_tools("schemathesis"))
        .await
        .unwrap();
    let stack = Stack::new().await;
    let gateway = stack
        .gateway(&[
            "--rate-ip-per-s",
            "10000",
            "--rate-ip-burst",
            "10000",
            "--rate-voter-per-s",
            "10000",
            "--rate-voter-burst",
            "10000",
        ])
        .await;
    gateway.open_poll("demo", &["a", "b"]).await;
    let admin = gateway.admin_token();
    let url = gateway.url("/openapi.json");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            .args(["run", &url])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"])
            .args(["--header", &format!("Authorization: Bearer {admin}")])
            // An endless event stream has no response to check; the API
            // tests read it.
            .args(["--exclude-path", "/v1/polls/{poll}/results/stream"])
            .args(["--max-examples", "40", "--request-timeout", "10", "--seed", "1"])
            .env("SCHEMATHESIS_HOOKS", "")
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
}

/// Runs `tests/browser/<script>` in headless Chromium against the gateway
/// at `base` for `poll`, and returns the JSON line it prints.
async fn in_browser(
    script: &str,
    base: &str,
    poll: &str,
    env: &[(&str, String)],
) -> serde_json::Value {
    let tools = tokio::task::spawn_blocking(|| web_tools("browser"))
        .await
        .unwrap();
    let field = |name: &str| {
        tools
            .split_whitespace()
            .find_map(|part| part.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {tools}"))
            .to_owned()
    };
    let mut command = Command::new("node");
    command
        .arg(
            tally_lease::testing::repo_root()
                .join("tests/browser")
                .join(script),
        )
        .env("NODE_PATH", field("node_path="))
        .env("BASE_URL", base)
        .env("POLL", poll)
        .env("CHROMIUM", field("chromium="));
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || command.output().expect("run node")),
    )
    .await
    .expect("the browser run ends within 2 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "browser run {script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("browser {script}: {stdout}");
    serde_json::from_str(stdout.trim()).unwrap()
}

/// With its results stream refused, the dashboard polls the results URL,
/// shows a vote's count, and draws the votes-per-second trend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_the_dashboard_polls_when_the_stream_is_refused() {
    let stack = Stack::new().await;
    let gateway = stack.gateway(&["--dev-tokens"]).await;
    gateway.open_poll("polled", &["red", "blue"]).await;
    let _worker = stack.worker("w1");
    let report = in_browser("dashboard_polling.cjs", &gateway.url, "polled", &[]).await;
    assert_eq!(report["connection"], "polling", "{report}");
    assert!(report["refused"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["polled"].as_u64().unwrap() >= 2, "{report}");
    assert!(report["trend_points"].as_u64().unwrap() >= 2, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_vote_moves_the_dashboard() {
    let stack = Stack::new().await;
    let gateway = stack.gateway(&["--dev-tokens"]).await;
    gateway.open_poll("final", &["red", "blue"]).await;
    let _worker = stack.worker("w1");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let report = in_browser(
        "vote_flow.cjs",
        &gateway.url,
        "final",
        &[("SCREENSHOT_DIR", shots.display().to_string())],
    )
    .await;
    assert!(report["vote_status"]
        .as_str()
        .unwrap()
        .starts_with("Counted"));
    for shot in [
        "vote-before.png",
        "vote-counted.png",
        "dashboard.png",
        "admin.png",
    ] {
        let size = std::fs::metadata(shots.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 1000, "screenshot {shot} saved");
    }
    let results = tally_store::VoteReads::counts(
        stack.store.as_ref(),
        &tally_store::PollStore::get_poll(stack.store.as_ref(), "final")
            .await
            .unwrap()
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(results.total(), 1, "one vote in the tables");
}
