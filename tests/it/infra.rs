//! What the infrastructure relies on, checked against the code:
//! - every metric of Tally's namespace named in the Terraform dashboards,
//!   alarms and autoscaling policy is one the code publishes, under that
//!   namespace;
//! - API Gateway's request template, rendered the way API Gateway renders
//!   it for a sample request, makes a `PutRecord` request whose data is a
//!   valid vote record for the worker, with the voter taken from the
//!   authorizer, never from the body;
//! - the gateway's admin role is the Cognito admin group's name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine;

fn terraform_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            terraform_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "tf") {
            out.push(path);
        }
    }
}

fn infra() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/terraform")
}

/// Names used with Tally's namespace: `namespace = var.namespace` (or
/// `var.metrics_namespace`) followed by `metric_name = "..."`, and
/// dashboard rows `[var.namespace, "Name", ...]`.
fn tally_metric_names() -> BTreeMap<String, Vec<String>> {
    let mut files = Vec::new();
    terraform_files(&infra(), &mut files);
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (index, line) in lines.iter().enumerate() {
            let ours = line.starts_with("namespace")
                && (line.ends_with("var.namespace") || line.ends_with("var.metrics_namespace"));
            if ours {
                let name = lines[index + 1..]
                    .iter()
                    .find_map(|next| next.strip_prefix("metric_name"))
                    .and_then(|rest| rest.split('"').nth(1))
                    .expect("a metric_name after the namespace");
                names
                    .entry(name.to_owned())
                    .or_default()
                    .push(file.display().to_string());
            }
            // Per-worker metrics through SEARCH over {namespace,...} sets.
            if line.contains("SEARCH('{${var.namespace}") {
                let name = line
                    .split("MetricName=\\\"")
                    .nth(1)
                    .and_then(|rest| rest.split('\\').next())
                    .expect("a MetricName in the search");
                names
                    .entry(name.to_owned())
                    .or_default()
                    .push(file.display().to_string());
            }
            let mut rest = *line;
            while let Some(at) = rest.find("[var.namespace, \"") {
                let after = &rest[at + "[var.namespace, \"".len()..];
                let name = after.split('"').next().unwrap();
                names
                    .entry(name.to_owned())
                    .or_default()
                    .push(file.display().to_string());
                rest = after;
            }
        }
    }
    names
}

#[test]
fn every_metric_in_dashboards_alarms_and_scaling_is_published_by_the_code() {
    let published: BTreeSet<&str> = tally_service::cloudwatch::WORKER_METRICS
        .iter()
        .chain(tally_service::cloudwatch::GATEWAY_METRICS)
        .map(|def| def.name)
        .collect();
    let used = tally_metric_names();
    assert!(used.len() >= 10, "the scan finds the metrics: {used:?}");
    for required in [
        "VotesCounted",
        "VotesRejected",
        "LeasesLost",
        "RecountMismatchPolls",
        "OpenShards",
        "Retries",
    ] {
        assert!(
            used.contains_key(required),
            "{required} is used by the infrastructure"
        );
    }
    for (name, files) in &used {
        assert!(
            published.contains(name.as_str()),
            "{name} (in {files:?}) is not published by src/cloudwatch.rs"
        );
    }
    // The namespace the infrastructure defaults to is the code's default.
    let code_default = {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: tally_service::cloudwatch::CloudWatchArgs,
        }
        Wrapper::try_parse_from(["x"])
            .unwrap()
            .args
            .cloudwatch_namespace
    };
    for module in ["monitoring/main.tf", "service/variables.tf"] {
        let text = std::fs::read_to_string(infra().join("modules").join(module)).unwrap();
        assert!(
            text.contains(&format!("default = \"{code_default}\""))
                || text.contains(&format!("default     = \"{code_default}\"")),
            "{module} defaults to the namespace {code_default}"
        );
    }
    // Split dimensions used by alarms exist in the code.
    let text = std::fs::read_to_string(infra().join("modules/monitoring/main.tf")).unwrap();
    for dimension in ["Reason", "Cause"] {
        assert!(text.contains(&format!("{dimension} =")));
        assert!(tally_service::cloudwatch::WORKER_METRICS
            .iter()
            .any(|def| def.split_by == Some(dimension)));
    }
}

/// A request as API Gateway sees it.
struct Request {
    context: BTreeMap<&'static str, String>,
    path: BTreeMap<&'static str, String>,
    body: serde_json::Value,
    stage: BTreeMap<&'static str, String>,
}

/// The subset of API Gateway's template language the template uses:
/// `##` comments, `#set($x = "..."|'...'|$ref)`, `$x`, `${x}`,
/// `$context.a.b`, `$stageVariables.x`, `$input.params('x')`,
/// `$input.path('$.x')`, `$util.escapeJavaScript(..)`, `$util.base64Encode(..)`.
struct Renderer<'a> {
    request: &'a Request,
    vars: BTreeMap<String, String>,
}

impl Renderer<'_> {
    fn ident(text: &[char], mut at: usize) -> (String, usize) {
        let start = at;
        while at < text.len() && (text[at].is_ascii_alphanumeric() || text[at] == '_') {
            at += 1;
        }
        (text[start..at].iter().collect(), at)
    }

    /// An argument: a quoted literal or a reference.
    fn argument(&self, text: &[char], at: usize) -> (String, usize) {
        match text[at] {
            '\'' => {
                let end = (at + 1..text.len()).find(|&i| text[i] == '\'').unwrap();
                (text[at + 1..end].iter().collect(), end + 1)
            }
            '"' => {
                let end = (at + 1..text.len()).find(|&i| text[i] == '"').unwrap();
                let inner: String = text[at + 1..end].iter().collect();
                (self.interpolate(&inner), end + 1)
            }
            '$' => self.reference(text, at),
            other => panic!("unexpected argument start {other:?}"),
        }
    }

    /// A `$` reference at `at`; returns its value and the end.
    fn reference(&self, text: &[char], at: usize) -> (String, usize) {
        assert_eq!(text[at], '$');
        if text.get(at + 1) == Some(&'{') {
            let (name, end) = Self::ident(text, at + 2);
            assert_eq!(text[end], '}');
            return (self.vars[&name].clone(), end + 1);
        }
        let (root, mut end) = Self::ident(text, at + 1);
        let mut path = vec![root];
        while end + 1 < text.len() && text[end] == '.' && text[end + 1].is_ascii_alphabetic() {
            let (part, next) = Self::ident(text, end + 1);
            path.push(part);
            end = next;
        }
        let call = text.get(end) == Some(&'(');
        let joined = path.join(".");
        if call {
            let (argument, after) = self.argument(text, end + 1);
            assert_eq!(text[after], ')', "one argument in {joined}");
            let value = match joined.as_str() {
                "util.escapeJavaScript" => argument
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\'', "\\'"),
                "util.base64Encode" => base64::engine::general_purpose::STANDARD.encode(argument),
                "input.params" => self.request.path[argument.as_str()].clone(),
                "input.path" => {
                    let field = argument.strip_prefix("$.").unwrap();
                    match &self.request.body[field] {
                        serde_json::Value::String(text) => text.clone(),
                        other => other.to_string(),
                    }
                }
                other => panic!("unsupported call {other}"),
            };
            return (value, after + 1);
        }
        let value = match path[0].as_str() {
            "context" => self.request.context[path[1..].join(".").as_str()].clone(),
            "stageVariables" => self.request.stage[path[1].as_str()].clone(),
            name => self
                .vars
                .get(name)
                .cloned()
                .unwrap_or_else(|| panic!("unset ${name}")),
        };
        (value, end)
    }

    fn interpolate(&self, text: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        let mut at = 0;
        while at < chars.len() {
            if chars[at] == '$'
                && chars
                    .get(at + 1)
                    .is_some_and(|c| c.is_ascii_alphabetic() || *c == '{')
            {
                let (value, end) = self.reference(&chars, at);
                out.push_str(&value);
                at = end;
            } else {
                out.push(chars[at]);
                at += 1;
            }
        }
        out
    }

    fn render(mut self, template: &str) -> String {
        let mut out = String::new();
        for line in template.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("##") {
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix("#set(") {
                let (name, expression) = rest.strip_suffix(')').unwrap().split_once('=').unwrap();
                let name = name.trim().strip_prefix('$').unwrap().to_owned();
                let chars: Vec<char> = expression.trim().chars().collect();
                let (value, end) = self.argument(&chars, 0);
                assert_eq!(end, chars.len(), "the whole #set expression is read");
                self.vars.insert(name, value);
                continue;
            }
            out.push_str(&self.interpolate(line));
            out.push('\n');
        }
        out
    }
}

fn render(body: serde_json::Value) -> serde_json::Value {
    let template = std::fs::read_to_string(infra().join("modules/api/vote-request.vm")).unwrap();
    let request = Request {
        context: BTreeMap::from([
            (
                "requestId",
                "c0ffee00-1234-4abc-8def-0123456789ab".to_owned(),
            ),
            (
                "authorizer.claims.sub",
                "5f2b8c1e-0d4a-4e7b-9c3f-1a2b3c4d5e6f".to_owned(),
            ),
        ]),
        path: BTreeMap::from([("poll", "f1-2026".to_owned())]),
        body,
        stage: BTreeMap::from([("stream", "tally-votes".to_owned())]),
    };
    let rendered = Renderer {
        request: &request,
        vars: BTreeMap::new(),
    }
    .render(&template);
    serde_json::from_str(&rendered).unwrap_or_else(|e| panic!("not JSON ({e}):\n{rendered}"))
}

#[test]
fn the_mapping_template_makes_a_valid_vote_record_keyed_by_the_authorized_voter() {
    let request = render(serde_json::json!({"option": "verstappen"}));
    assert_eq!(request["StreamName"], "tally-votes");
    assert_eq!(
        request["PartitionKey"],
        "5f2b8c1e-0d4a-4e7b-9c3f-1a2b3c4d5e6f"
    );
    let data = base64::engine::general_purpose::STANDARD
        .decode(request["Data"].as_str().unwrap())
        .unwrap();
    let vote = tally_contract::vote::decode(&data).expect("a valid vote record for the worker");
    assert_eq!(vote.voter_id, "5f2b8c1e-0d4a-4e7b-9c3f-1a2b3c4d5e6f");
    assert_eq!(vote.poll_id, "f1-2026");
    assert_eq!(vote.option, "verstappen");
    assert_eq!(vote.vote_id, "c0ffee00-1234-4abc-8def-0123456789ab");

    // A hostile option cannot smuggle another voter into the record: it is
    // escaped, and the worker rejects the record as malformed (and keeps it).
    let request = render(serde_json::json!({"option": "x\",\"voter_id\":\"someone-else"}));
    let data = base64::engine::general_purpose::STANDARD
        .decode(request["Data"].as_str().unwrap())
        .unwrap();
    let text = String::from_utf8(data.clone()).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("still one JSON object");
    assert_eq!(parsed["voter_id"], "5f2b8c1e-0d4a-4e7b-9c3f-1a2b3c4d5e6f");
    let rejected = tally_contract::vote::decode(&data).unwrap_err();
    assert_eq!(rejected.reason, tally_contract::vote::Reason::Malformed);
}

/// The first `name = "..."` of `resource "TYPE" "NAME" { ... }` in `text`.
fn resource_name(text: &str, kind: &str, label: &str) -> Option<String> {
    let start = text.find(&format!("resource \"{kind}\" \"{label}\""))?;
    let body = &text[start..];
    let name = body.find("name")?;
    let quoted = &body[name..];
    let open = quoted.find('"')? + 1;
    let close = quoted[open..].find('"')? + open;
    Some(quoted[open..close].to_owned())
}

#[test]
fn the_gateway_admin_role_is_the_cognito_admin_group() {
    let read = |path: &str| std::fs::read_to_string(infra().join(path)).unwrap();
    let squeeze = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let tally = read("modules/tally/main.tf");
    let group =
        resource_name(&tally, "aws_cognito_user_group", "admins").expect("the Cognito admin group");
    assert!(!group.is_empty());
    // The group's name is what the service module gets as the admin role...
    assert!(
        squeeze(&tally).contains("auth_admin_role = aws_cognito_user_group.admins.name"),
        "the tally module must pass the admin group's name as auth_admin_role"
    );
    // ...and what the gateway task sets as TALLY_AUTH_ADMIN_ROLE, read from
    // the claim that holds Cognito's groups.
    let service = squeeze(&read("modules/service/main.tf"));
    assert!(
        service.contains(r#"{ name = "TALLY_AUTH_ADMIN_ROLE", value = var.auth_admin_role }"#),
        "the gateway task must set TALLY_AUTH_ADMIN_ROLE from auth_admin_role"
    );
    assert!(service.contains(r#"{ name = "TALLY_AUTH_ROLE_CLAIM", value = "cognito:groups" }"#));
}
