//! What the infrastructure relies on, checked against the code:
//! - every metric of Tally's namespace named in the Terraform dashboards,
//!   alarms and autoscaling policy is one the code publishes, under that
//!   namespace;
//! - API Gateway's request template, with its placeholders filled in the
//!   way Terraform does and rendered the way API Gateway renders it for a
//!   sample request, makes a `PutRecord` request whose data is a valid vote
//!   record for the worker, with the voter taken from the authorizer's
//!   verified claim exactly as the gateway takes it, never from the body;
//! - both vote paths read the voter from the same configured claim;
//! - the Cognito pool keys voters on a verified phone number that they
//!   cannot change, and allows self sign-up only through its check;
//! - WAF limits each token, the roles allow what the code calls and no
//!   more, `/metrics` stays off the public listener, and every setting the
//!   task definitions give is one the code reads;
//! - the gateway's admin role is the Cognito admin group's name;
//! - the CloudFront distribution caches what is the same for everyone (the
//!   pages, the results, as long as the gateway's Cache-Control says,
//!   behind Origin Shield) and nothing else (every other route of the
//!   gateway's OpenAPI document, the streams), speaks HTTPS only, has the
//!   edge web ACL and logs, never serves `/metrics`, and is the only way
//!   to the load balancer;
//! - the role of the task that runs each command on AWS allows every
//!   operation `src/operations.rs` lists for it, on the right resources;
//!   every `tally` command a runbook names exists with its flags and runs
//!   in such a task, and each `aws ecs run-task` a runbook spells out uses
//!   a task definition whose role allows its command; replay writes only
//!   tables apart from the live ones, a restore replaces no table and
//!   points the tasks and their roles at the application's restored
//!   tables; both services autoscale on the documented metrics and targets,
//!   the gateway reads every worker's metrics, rejects expire, and the
//!   prod sizing is the design doc's and the infra README's.
//!
//! The Terraform is read as text with the small helpers below (`blocks`,
//! `attr`, `strings`), which rely on `terraform fmt`'s layout: one
//! attribute per line, blocks opened at the end of a line.

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
    tally_lease::testing::repo_root().join("infra/terraform")
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

/// A request as API Gateway sees it: `$context` (the authorizer's claims
/// under `authorizer.claims.<name>`), the path parameters, the body and the
/// stage variables.
struct Request {
    context: BTreeMap<String, String>,
    path: BTreeMap<&'static str, String>,
    body: serde_json::Value,
    stage: BTreeMap<&'static str, String>,
}

/// The subset of API Gateway's template language the template uses:
/// `##` comments, `#set($x = "..."|'...'|$ref)`, `#if(a == b && c != d)`
/// ... `#end`, `$x`, `$!x` (empty when unset), `${x}`, `$context.a.b`,
/// `$context.a.b['c']`, `$stageVariables.x`, `$input.params('x')`,
/// `$input.path('$.x')`, `$util.escapeJavaScript(..)`,
/// `$util.base64Encode(..)` and `$x.replace('a', 'b')`.
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

    fn skip_spaces(text: &[char], mut at: usize) -> usize {
        while at < text.len() && text[at] == ' ' {
            at += 1;
        }
        at
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

    /// Comma-separated arguments up to the closing parenthesis at or after
    /// `at`; returns them and the position after the parenthesis.
    fn arguments(&self, text: &[char], mut at: usize) -> (Vec<String>, usize) {
        let mut arguments = Vec::new();
        loop {
            at = Self::skip_spaces(text, at);
            let (argument, after) = self.argument(text, at);
            arguments.push(argument);
            at = Self::skip_spaces(text, after);
            match text[at] {
                ',' => at += 1,
                ')' => return (arguments, at + 1),
                other => panic!("unexpected {other:?} in an argument list"),
            }
        }
    }

    /// A `$` reference at `at`; returns its value and the end.
    fn reference(&self, text: &[char], at: usize) -> (String, usize) {
        assert_eq!(text[at], '$');
        let quiet = text.get(at + 1) == Some(&'!');
        let at = if quiet { at + 1 } else { at };
        if text.get(at + 1) == Some(&'{') {
            let (name, end) = Self::ident(text, at + 2);
            assert_eq!(text[end], '}');
            return (self.vars[&name].clone(), end + 1);
        }
        let (root, mut end) = Self::ident(text, at + 1);
        let mut path = vec![root];
        loop {
            if end + 1 < text.len() && text[end] == '.' && text[end + 1].is_ascii_alphabetic() {
                let (part, next) = Self::ident(text, end + 1);
                path.push(part);
                end = next;
            } else if text.get(end) == Some(&'[') {
                // An index: `claims['cognito:groups']`.
                let (key, next) = self.argument(text, end + 1);
                assert_eq!(text[next], ']', "one key in an index");
                path.push(key);
                end = next + 1;
            } else {
                break;
            }
        }
        if text.get(end) == Some(&'(') {
            let (arguments, after) = self.arguments(text, end + 1);
            let joined = path.join(".");
            let one = || {
                assert_eq!(arguments.len(), 1, "one argument in {joined}");
                arguments[0].clone()
            };
            let value = match joined.as_str() {
                "util.escapeJavaScript" => one()
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\'', "\\'"),
                "util.base64Encode" => base64::engine::general_purpose::STANDARD.encode(one()),
                "input.params" => self.request.path[one().as_str()].clone(),
                "input.path" => {
                    let argument = one();
                    let field = argument.strip_prefix("$.").unwrap();
                    match &self.request.body[field] {
                        serde_json::Value::String(text) => text.clone(),
                        other => other.to_string(),
                    }
                }
                _ if path.last().map(String::as_str) == Some("replace") => {
                    assert_eq!(arguments.len(), 2, "replace(target, replacement)");
                    let receiver = self.lookup(&path[..path.len() - 1], quiet);
                    receiver.replace(&arguments[0], &arguments[1])
                }
                other => panic!("unsupported call {other}"),
            };
            return (value, after);
        }
        (self.lookup(&path, quiet), end)
    }

    /// The value of a reference path; unset is empty when `quiet`.
    fn lookup(&self, path: &[String], quiet: bool) -> String {
        let value = match path[0].as_str() {
            "context" => self.request.context.get(&path[1..].join(".")).cloned(),
            "stageVariables" => self.request.stage.get(path[1].as_str()).cloned(),
            name => self.vars.get(name).cloned(),
        };
        match value {
            Some(value) => value,
            None if quiet => String::new(),
            None => panic!("unset ${}", path.join(".")),
        }
    }

    fn interpolate(&self, text: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        let mut at = 0;
        while at < chars.len() {
            if chars[at] == '$'
                && chars
                    .get(at + 1)
                    .is_some_and(|c| c.is_ascii_alphabetic() || *c == '{' || *c == '!')
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

    /// `a == b`, `a != b`, joined by `&&`.
    fn condition(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        let mut at = 0;
        let mut holds = true;
        loop {
            let (left, after) = self.argument(&chars, Self::skip_spaces(&chars, at));
            at = Self::skip_spaces(&chars, after);
            let operator: String = chars[at..at + 2].iter().collect();
            let (right, after) = self.argument(&chars, Self::skip_spaces(&chars, at + 2));
            holds &= match operator.as_str() {
                "==" => left == right,
                "!=" => left != right,
                other => panic!("unsupported operator {other}"),
            };
            at = Self::skip_spaces(&chars, after);
            if at == chars.len() {
                return holds;
            }
            let and: String = chars[at..at + 2].iter().collect();
            assert_eq!(and, "&&", "conditions are joined by &&");
            at += 2;
        }
    }

    fn render(mut self, template: &str) -> String {
        let mut out = String::new();
        // One entry per open #if: whether its branch is taken.
        let mut branches: Vec<bool> = Vec::new();
        for line in template.lines() {
            let trimmed = line.trim();
            let active = branches.iter().all(|taken| *taken);
            if trimmed.starts_with("##") {
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix("#if(") {
                let condition = rest.strip_suffix(')').unwrap();
                branches.push(active && self.condition(condition));
                continue;
            }
            if trimmed == "#end" {
                branches.pop().expect("an #end closes an #if");
                continue;
            }
            if !active {
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
            assert!(!trimmed.starts_with('#'), "unsupported directive {trimmed}");
            out.push_str(&self.interpolate(line));
            out.push('\n');
        }
        assert!(branches.is_empty(), "every #if is closed");
        out
    }
}

/// The claim that says `claim` is verified, as modules/api/main.tf and the
/// gateway decide it: phone numbers and email addresses have one.
fn verified_claim(claim: &str) -> String {
    if ["phone_number", "email"].contains(&claim) {
        format!("{claim}_verified")
    } else {
        String::new()
    }
}

/// `vote-request.vm` with its placeholders filled in for `claim`, as
/// modules/api/main.tf does it (`the_template_and_the_gateway_read_the_same_claim`
/// checks that it does it this way).
fn terraform_template(claim: &str) -> String {
    std::fs::read_to_string(infra().join("modules/api/vote-request.vm"))
        .unwrap()
        .replace("__VOTER_CLAIM__", claim)
        .replace("__VERIFIED_CLAIM__", &verified_claim(claim))
}

const REQUEST_ID: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
const SUB: &str = "5f2b8c1e-0d4a-4e7b-9c3f-1a2b3c4d5e6f";
const PHONE: &str = "+447700900123";

/// Renders the template configured for `claim`, for a request whose token
/// carries `claims`, and returns the `PutRecord` request and the decoded
/// bytes of its record.
fn render(
    claim: &str,
    claims: &[(&str, &str)],
    body: serde_json::Value,
) -> (serde_json::Value, Vec<u8>) {
    let mut context = BTreeMap::from([("requestId".to_owned(), REQUEST_ID.to_owned())]);
    for (name, value) in claims {
        context.insert(format!("authorizer.claims.{name}"), (*value).to_owned());
    }
    let request = Request {
        context,
        path: BTreeMap::from([("poll", "f1-2026".to_owned())]),
        body,
        stage: BTreeMap::from([("stream", "tally-votes".to_owned())]),
    };
    let rendered = Renderer {
        request: &request,
        vars: BTreeMap::new(),
    }
    .render(&terraform_template(claim));
    let request: serde_json::Value =
        serde_json::from_str(&rendered).unwrap_or_else(|e| panic!("not JSON ({e}):\n{rendered}"));
    let data = base64::engine::general_purpose::STANDARD
        .decode(request["Data"].as_str().unwrap())
        .unwrap();
    (request, data)
}

/// A Cognito ID token's claims for a voter with a verified phone number.
fn verified_phone() -> Vec<(&'static str, &'static str)> {
    vec![
        ("sub", SUB),
        ("phone_number", PHONE),
        ("phone_number_verified", "true"),
    ]
}

#[test]
fn the_mapping_template_makes_a_valid_vote_record_keyed_by_the_authorized_voter() {
    let (request, data) = render(
        "phone_number",
        &verified_phone(),
        serde_json::json!({"option": "verstappen"}),
    );
    let voter = tally_contract::vote::voter_from_claim(PHONE).unwrap();
    assert_eq!(request["StreamName"], "tally-votes");
    assert_eq!(request["PartitionKey"], voter.as_str());
    let vote = tally_contract::vote::decode(&data).expect("a valid vote record for the worker");
    assert_eq!(vote.voter_id, voter);
    assert_eq!(vote.poll_id, "f1-2026");
    assert_eq!(vote.option, "verstappen");
    assert_eq!(vote.vote_id, REQUEST_ID);

    // A body field cannot name the voter, and a hostile option cannot
    // smuggle another voter into the record: it is escaped, and the worker
    // rejects the record as malformed (and keeps it).
    let (_, data) = render(
        "phone_number",
        &verified_phone(),
        serde_json::json!({"option": "x\",\"voter_id\":\"someone-else"}),
    );
    let text = String::from_utf8(data.clone()).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("still one JSON object");
    assert_eq!(parsed["voter_id"], voter.as_str());
    let rejected = tally_contract::vote::decode(&data).unwrap_err();
    assert_eq!(rejected.reason, tally_contract::vote::Reason::Malformed);

    // Nor can a hostile claim value (a custom attribute as the voter claim).
    let (request, data) = render(
        "custom:voter",
        &[("custom:voter", "x\",\"voter_id\":\"someone-else")],
        serde_json::json!({"option": "verstappen"}),
    );
    let text = String::from_utf8(data.clone()).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("still one JSON object");
    assert_eq!(parsed["voter_id"], "x\",\"voter_id\":\"someone-else");
    assert!(request["PartitionKey"].is_string());
    let rejected = tally_contract::vote::decode(&data).unwrap_err();
    assert_eq!(rejected.reason, tally_contract::vote::Reason::Malformed);
}

#[test]
fn the_template_takes_the_voter_from_the_verified_claim_as_the_gateway_does() {
    // The default claim, a verified phone number: the gateway's own rule.
    let (request, data) = render(
        "phone_number",
        &verified_phone(),
        serde_json::json!({"option": "hamilton"}),
    );
    let vote = tally_contract::vote::decode(&data).unwrap();
    assert_eq!(
        Some(vote.voter_id.clone()),
        tally_contract::vote::voter_from_claim(PHONE)
    );
    assert_eq!(vote.voter_id, "447700900123", "every '+' is removed");
    assert_eq!(request["PartitionKey"], "447700900123");

    // A claim without a verification flag (here the subject) is taken as is.
    let (request, data) = render("sub", &verified_phone(), serde_json::json!({"option": "x"}));
    let vote = tally_contract::vote::decode(&data).unwrap();
    assert_eq!(
        Some(vote.voter_id),
        tally_contract::vote::voter_from_claim(SUB)
    );
    assert_eq!(request["PartitionKey"], SUB);

    // A verified email address.
    let (_, data) = render(
        "email",
        &[("email", "voter@example.com"), ("email_verified", "true")],
        serde_json::json!({"option": "x"}),
    );
    assert_eq!(
        tally_contract::vote::decode(&data).unwrap().voter_id,
        "voter@example.com"
    );
}

#[test]
fn an_unverified_phone_number_makes_a_record_the_worker_rejects() {
    for verified in [Some("false"), None] {
        let mut claims = vec![("sub", SUB), ("phone_number", PHONE)];
        claims.extend(verified.map(|flag| ("phone_number_verified", flag)));
        let (request, data) = render("phone_number", &claims, serde_json::json!({"option": "x"}));
        let parsed: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(parsed["voter_id"], "", "no voter for {verified:?}");
        let rejected = tally_contract::vote::decode(&data).unwrap_err();
        assert_eq!(rejected.reason, tally_contract::vote::Reason::Malformed);
        // Kinesis refuses an empty partition key: the request id stands in,
        // so the record reaches the worker, which keeps it.
        assert_eq!(request["PartitionKey"], REQUEST_ID);
    }
    // Unverified email alike.
    let (_, data) = render(
        "email",
        &[("email", "voter@example.com"), ("email_verified", "false")],
        serde_json::json!({"option": "x"}),
    );
    assert!(tally_contract::vote::decode(&data).is_err());
}

/// The `.tf` files of `modules/<module>`, one after another.
fn module_text(module: &str) -> String {
    let mut files = Vec::new();
    terraform_files(&infra().join("modules").join(module), &mut files);
    files.sort();
    files
        .iter()
        .map(|file| std::fs::read_to_string(file).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` without its comment lines (`#` or `//` first on the line).
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs of whitespace as one space.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The bodies of the blocks at the top level of `text` whose opening line
/// starts with `header` (`resource "aws_lb" "gateway"`, `statement`,
/// `dynamic "rule"`), in order.
fn blocks<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut depth = 0i32;
    let mut open: Option<usize> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.starts_with("//") {
            continue;
        }
        let before = depth;
        depth += trimmed.matches('{').count() as i32 - trimmed.matches('}').count() as i32;
        if before == 0 && trimmed.starts_with(header) && trimmed.ends_with('{') {
            open = Some(offset);
        }
        if depth == 0 {
            if let Some(body) = open.take() {
                found.push(&text[body..start.max(body)]);
            }
        }
    }
    found
}

/// The one block of `text` opened by `header`.
fn block<'a>(text: &'a str, header: &str) -> &'a str {
    let found = blocks(text, header);
    assert_eq!(found.len(), 1, "one block {header}");
    found[0]
}

/// The value of `name = value` at the top level of a block's body (to the
/// end of the line, without a trailing comment).
fn attr<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let mut depth = 0i32;
    for line in body.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if depth == 0 {
            if let Some(rest) = trimmed.strip_prefix(name) {
                if let Some(value) = rest.trim_start().strip_prefix('=') {
                    let value = value.split(" # ").next().unwrap();
                    return Some(value.trim());
                }
            }
        }
        depth += trimmed.matches('{').count() as i32 - trimmed.matches('}').count() as i32;
    }
    None
}

/// The quoted strings of a one-line value (`["a", "b"]`).
fn strings(value: &str) -> Vec<&str> {
    value.split('"').skip(1).step_by(2).collect()
}

/// The value of `name` in any `locals` block of `text`.
fn local<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    blocks(text, "locals")
        .into_iter()
        .find_map(|body| attr(body, name))
}

/// The whole value of `name = value` in any `locals` block of `text`,
/// over as many lines as its brackets take, with runs of whitespace as one
/// space.
fn local_expression(text: &str, name: &str) -> Option<String> {
    let first = local(text, name)?;
    let body = blocks(text, "locals")
        .into_iter()
        .find(|body| attr(body, name) == Some(first))?;
    let line = body.lines().find(|line| {
        line.trim_start()
            .strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })?;
    let value = &body[body.find(line)?..];
    let value = &value[value.find('=')? + 1..];
    let mut depth = 0i32;
    for (at, c) in value.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            '\n' if depth == 0 => return Some(squeeze(&value[..at])),
            _ => {}
        }
    }
    Some(squeeze(value))
}

/// The `condition` of a variable's `validation`.
fn validation<'a>(text: &'a str, variable: &str) -> &'a str {
    let body = block(text, &format!("variable \"{variable}\""));
    attr(block(body, "validation"), "condition").expect("a validation condition")
}

/// One statement of an `aws_iam_policy_document`.
#[derive(Debug)]
struct Statement<'a> {
    sid: String,
    effect: String,
    actions: BTreeSet<String>,
    /// As written: `[var.stream_arn]`, `local.leases_arns`, ...
    resources: String,
    body: &'a str,
}

/// The statements of `data "aws_iam_policy_document" "<label>"` in `text`.
fn statements<'a>(text: &'a str, label: &str) -> Vec<Statement<'a>> {
    let document = block(
        text,
        &format!("data \"aws_iam_policy_document\" \"{label}\""),
    );
    let mut found: Vec<&str> = blocks(document, "statement");
    // Statements made by `dynamic "statement"` (their `content`).
    for dynamic in blocks(document, "dynamic \"statement\"") {
        found.extend(blocks(dynamic, "content"));
    }
    found
        .into_iter()
        .map(|body| Statement {
            sid: attr(body, "sid")
                .map(|v| v.trim_matches('"').to_owned())
                .unwrap_or_default(),
            effect: attr(body, "effect")
                .map(|v| v.trim_matches('"').to_owned())
                .unwrap_or_else(|| "Allow".into()),
            actions: strings(attr(body, "actions").expect("actions"))
                .into_iter()
                .map(str::to_owned)
                .collect(),
            resources: attr(body, "resources").unwrap_or_default().to_owned(),
            body,
        })
        .collect()
}

/// The actions an Allow statement grants on exactly `resources`.
fn granted(statements: &[Statement], resources: &str) -> BTreeSet<String> {
    statements
        .iter()
        .filter(|s| s.effect == "Allow" && s.resources == resources)
        .flat_map(|s| s.actions.iter().cloned())
        .collect()
}

/// The owned set of `items`.
fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

/// `resource "<kind>" "<label>"` in `text`: its body.
fn resource<'a>(text: &'a str, kind: &str, label: &str) -> &'a str {
    block(text, &format!("resource \"{kind}\" \"{label}\""))
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
    let tally = module_text("tally");
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
    let service = squeeze(&module_text("service"));
    assert!(
        service.contains(r#"{ name = "TALLY_AUTH_ADMIN_ROLE", value = var.auth_admin_role }"#),
        "the gateway task must set TALLY_AUTH_ADMIN_ROLE from auth_admin_role"
    );
    assert!(service.contains(r#"{ name = "TALLY_AUTH_ROLE_CLAIM", value = "cognito:groups" }"#));
}

#[test]
fn the_template_and_the_gateway_read_the_same_claim() {
    let tally = module_text("tally");
    let service_call = block(&tally, "module \"service\"");
    let api_call = block(&tally, "module \"api\"");
    // One setting, var.voter_claim, feeds both vote paths...
    assert_eq!(
        attr(service_call, "auth_voter_claim"),
        Some("var.voter_claim")
    );
    assert_eq!(attr(api_call, "voter_claim"), Some("var.voter_claim"));
    let variable = block(&tally, "variable \"voter_claim\"");
    assert_eq!(attr(variable, "default"), Some("\"phone_number\""));
    assert!(
        validation(&tally, "voter_claim").contains("^[A-Za-z0-9_:.-]{1,64}$"),
        "the claim is validated: it goes into the template between quotes"
    );
    // ...the gateway reads it as TALLY_AUTH_VOTER_CLAIM...
    let service = squeeze(&module_text("service"));
    assert!(
        service.contains(r#"{ name = "TALLY_AUTH_VOTER_CLAIM", value = var.auth_voter_claim }"#),
        "the gateway task must set TALLY_AUTH_VOTER_CLAIM from auth_voter_claim"
    );
    // ...and API Gateway's template gets it through its placeholders,
    // filled in as terraform_template() does.
    let api = module_text("api");
    let locals = squeeze(block(&api, "locals"));
    assert!(locals.contains(
        r#"verified_claim = contains(["phone_number", "email"], var.voter_claim) ? "${var.voter_claim}_verified" : """#
    ));
    assert!(locals.contains(
        r#"vote_request_template = replace(replace(file("${path.module}/vote-request.vm"), "__VOTER_CLAIM__", var.voter_claim), "__VERIFIED_CLAIM__", local.verified_claim)"#
    ));
    let integration = resource(&api, "aws_api_gateway_integration", "kinesis");
    assert!(squeeze(integration).contains(r#""application/json" = local.vote_request_template"#));
    let template = std::fs::read_to_string(infra().join("modules/api/vote-request.vm")).unwrap();
    let code: Vec<&str> = template.lines().filter(|l| !l.starts_with("##")).collect();
    let code = code.join("\n");
    assert!(code.contains("claims['__VOTER_CLAIM__']"));
    assert!(code.contains("claims['__VERIFIED_CLAIM__']"));
    assert!(
        !code.contains("claims.sub"),
        "the voter is the configured claim"
    );
    // Both paths agree on which claims need a verification flag.
    assert_eq!(verified_claim("phone_number"), "phone_number_verified");
    assert_eq!(verified_claim("email"), "email_verified");
    assert_eq!(verified_claim("sub"), "");
}

#[test]
fn the_cognito_pool_keys_voters_on_a_verified_phone_number() {
    let tally = module_text("tally");
    let pool = resource(&tally, "aws_cognito_user_pool", "voters");
    assert_eq!(
        attr(pool, "username_attributes"),
        Some(r#"["phone_number"]"#)
    );
    assert_eq!(
        attr(pool, "auto_verified_attributes"),
        Some(r#"["phone_number"]"#)
    );
    let updates = block(pool, "user_attribute_update_settings");
    assert_eq!(
        attr(updates, "attributes_require_verification_before_update"),
        Some(r#"["phone_number"]"#)
    );
    // SMS through the pool's own role, assumed with an external id.
    let sms = block(pool, "sms_configuration");
    assert_eq!(
        attr(sms, "sns_caller_arn"),
        Some("aws_iam_role.cognito_sms.arn")
    );
    assert_eq!(attr(sms, "external_id"), Some("local.sms_external_id"));
    let assume = statements(&tally, "cognito_sms_assume");
    assert!(assume[0].body.contains("\"sts:ExternalId\""));
    assert!(assume[0]
        .body
        .contains("values   = [local.sms_external_id]"));
    let send = statements(&tally, "cognito_sms");
    assert!(send.iter().all(|s| s.actions == set(&["sns:Publish"])));
    assert!(send
        .iter()
        .any(|s| s.effect == "Deny" && s.resources == r#"["arn:aws:sns:*:*:*"]"#));
    // Email through SES, never Cognito's default sender.
    let email = block(pool, "email_configuration");
    assert_eq!(attr(email, "email_sending_account"), Some(r#""DEVELOPER""#));
    assert_eq!(attr(email, "source_arn"), Some("var.ses_identity_arn"));
    // Voters recover their account through their number.
    assert!(squeeze(block(pool, "account_recovery_setting"))
        .contains(r#"name = "verified_phone_number""#));
}

#[test]
fn no_self_sign_up_without_the_pre_sign_up_check() {
    let tally = module_text("tally");
    let squeezed = squeeze(&without_comments(&tally));
    let pool = resource(&tally, "aws_cognito_user_pool", "voters");
    // Three ways to register, validated.
    assert_eq!(
        validation(&tally, "voter_registration"),
        r#"contains(["self", "preregistered", "oidc"], var.voter_registration)"#
    );
    assert!(squeezed.contains(r#"self_signup = var.voter_registration == "self""#));
    // Self sign-up is open only when the check is wired...
    let admin = block(pool, "admin_create_user_config");
    assert_eq!(
        attr(admin, "allow_admin_create_user_only"),
        Some("!local.self_signup")
    );
    let lambda_config = block(pool, "dynamic \"lambda_config\"");
    assert_eq!(
        attr(lambda_config, "for_each"),
        Some("local.self_signup ? [1] : []")
    );
    assert_eq!(
        attr(block(lambda_config, "content"), "pre_sign_up"),
        Some("aws_lambda_function.pre_sign_up[0].arn")
    );
    // ...which exists exactly then, may be called by this pool only, and
    // may only list this pool's users.
    let function = resource(&tally, "aws_lambda_function", "pre_sign_up");
    assert_eq!(attr(function, "count"), Some("local.self_signup ? 1 : 0"));
    assert!(attr(function, "reserved_concurrent_executions").is_some());
    assert_eq!(
        attr(block(function, "tracing_config"), "mode"),
        Some(r#""Active""#)
    );
    let permission = resource(&tally, "aws_lambda_permission", "pre_sign_up");
    assert_eq!(
        attr(permission, "source_arn"),
        Some("aws_cognito_user_pool.voters.arn")
    );
    let policy = statements(&tally, "pre_sign_up");
    assert_eq!(
        granted(&policy, "[aws_cognito_user_pool.voters.arn]"),
        set(&["cognito-idp:ListUsers"])
    );
    assert!(policy
        .iter()
        .all(|s| !s.actions.iter().any(|a| a.starts_with("cognito-idp:"))
            || s.resources == "[aws_cognito_user_pool.voters.arn]"));
    // The check refuses a number another account holds, and a number not
    // in E.164 form.
    let check = std::fs::read_to_string(infra().join("modules/tally/pre_sign_up.py")).unwrap();
    assert!(check.contains(r#"Filter='phone_number = "%s"' % phone"#));
    assert!(check.contains(r#"E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")"#));
}

#[test]
fn voters_cannot_change_their_number_or_get_user_admin_tokens() {
    let tally = module_text("tally");
    let client = resource(&tally, "aws_cognito_user_pool_client", "web");
    assert_eq!(attr(client, "generate_secret"), Some("false"));
    // The tokens carry the voter claim and its verification flag.
    let read = local(&tally, "voter_read_attributes").unwrap();
    for name in ["phone_number", "phone_number_verified"] {
        assert!(strings(read).contains(&name), "{name} is readable");
    }
    assert_eq!(
        attr(client, "read_attributes"),
        Some("local.voter_read_attributes")
    );
    // A voter may not write their number. Only in "oidc" mode, where Cognito
    // itself writes the provider's mapped attributes through the client,
    // is it writable; that client has no password sign-in, so its tokens
    // come from the OAuth flow, whose scopes leave the user admin scope out.
    let voter_writes = local(&tally, "voter_write_attributes").unwrap();
    assert!(!voter_writes.contains("phone_number"));
    assert_eq!(
        attr(client, "write_attributes"),
        Some("local.oidc ? concat(local.voter_write_attributes, local.federated_write_attributes) : local.voter_write_attributes")
    );
    assert_eq!(
        attr(client, "explicit_auth_flows"),
        Some(
            r#"local.oidc ? ["ALLOW_REFRESH_TOKEN_AUTH"] : ["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]"#
        )
    );
    assert_eq!(
        attr(client, "allowed_oauth_scopes"),
        Some(r#"local.oidc ? ["openid", "phone"] : []"#)
    );
    // No OAuth client anywhere grants the scope that updates or deletes users.
    let mut files = Vec::new();
    terraform_files(&infra(), &mut files);
    for file in files {
        let text = without_comments(&std::fs::read_to_string(&file).unwrap());
        assert!(
            !text.contains("aws.cognito.signin.user.admin"),
            "{} grants aws.cognito.signin.user.admin",
            file.display()
        );
    }
    // "oidc": the provider's verified phone claims become the voter's.
    let provider = resource(&tally, "aws_cognito_identity_provider", "oidc");
    assert_eq!(attr(provider, "provider_type"), Some(r#""OIDC""#));
    let mapping = block(provider, "attribute_mapping");
    assert_eq!(attr(mapping, "phone_number"), Some("var.oidc_phone_claim"));
    assert_eq!(
        attr(mapping, "phone_number_verified"),
        Some("var.oidc_phone_verified_claim")
    );
    let details = block(provider, "provider_details");
    assert_eq!(attr(details, "oidc_issuer"), Some("var.oidc_issuer"));
    assert_eq!(attr(details, "client_id"), Some("var.oidc_client_id"));
}

#[test]
fn the_waf_limits_each_token_on_the_authorization_header() {
    let waf = module_text("waf");
    let acl = resource(&waf, "aws_wafv2_web_acl", "this");
    let rule = blocks(acl, "rule")
        .into_iter()
        .find(|rule| attr(rule, "name") == Some(r#""rate-per-token""#))
        .expect("a rate-per-token rule");
    assert!(squeeze(block(rule, "action")).contains("block {}"));
    let rate = block(block(rule, "statement"), "rate_based_statement");
    assert_eq!(attr(rate, "aggregate_key_type"), Some(r#""CUSTOM_KEYS""#));
    assert_eq!(attr(rate, "limit"), Some("var.token_rate_limit_per_5_min"));
    let keys = blocks(rate, "custom_key");
    assert_eq!(keys.len(), 1, "the token alone is the key");
    let header = block(keys[0], "header");
    assert_eq!(
        attr(header, "name").map(|n| n.to_ascii_lowercase()),
        Some(r#""authorization""#.to_owned())
    );
    // The key is a credential: WAF's logs leave it out.
    let logging = resource(&waf, "aws_wafv2_web_acl_logging_configuration", "this");
    let redacted = block(block(logging, "redacted_fields"), "single_header");
    assert_eq!(attr(redacted, "name"), Some(r#""authorization""#));
    // The limit is the tally module's setting, with a justified default.
    let variable = block(&waf, "variable \"token_rate_limit_per_5_min\"");
    assert_eq!(attr(variable, "default"), Some("300"));
    let tally = module_text("tally");
    assert_eq!(
        attr(
            block(&tally, "module \"waf\""),
            "token_rate_limit_per_5_min"
        ),
        Some("var.waf_token_rate_limit_per_5_min")
    );
}

#[test]
fn the_worker_deletes_only_leases_and_never_writes_polls() {
    let iam = module_text("service");
    let worker = statements(&iam, "worker");
    let writes = [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    ];
    // Per table, what the worker calls (crates/store/src/dynamo.rs,
    // lease/src/store/dynamo.rs, lease/src/worker.rs), and nothing else.
    assert_eq!(
        granted(&worker, "local.leases_arns"),
        set(&[
            // No CreateTable: Terraform makes the table, and the worker
            // only reads it at start (crates/aws/src/table.rs).
            "dynamodb:DescribeTable",
            "dynamodb:GetItem",
            "dynamodb:Scan",
            "dynamodb:Query",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        ])
    );
    assert_eq!(
        granted(&worker, r#"[var.table_arns["polls"]]"#),
        set(&["dynamodb:GetItem"])
    );
    // put_votes (BatchExecuteStatement INSERTs, a BatchGetItem of the
    // refused ones) and put_vote (crates/store/src/dynamo.rs).
    assert_eq!(
        granted(&worker, r#"[var.table_arns["votes"]]"#),
        set(&[
            "dynamodb:PartiQLInsert",
            "dynamodb:BatchGetItem",
            "dynamodb:PutItem"
        ])
    );
    assert_eq!(
        granted(&worker, r#"[var.table_arns["tallies"]]"#),
        set(&["dynamodb:UpdateItem"])
    );
    assert_eq!(
        granted(&worker, r#"[var.table_arns["rejects"]]"#),
        set(&["dynamodb:PutItem"])
    );
    let leases = local(&iam, "leases_arns").unwrap();
    assert!(leases.starts_with(r#"[var.table_arns["leases"],"#));
    // Every DynamoDB grant is one of those; DeleteItem only on leases.
    for statement in &worker {
        if statement.actions.iter().any(|a| a.starts_with("dynamodb:")) {
            assert!(
                [
                    "local.leases_arns",
                    r#"[var.table_arns["polls"]]"#,
                    r#"[var.table_arns["votes"]]"#,
                    r#"[var.table_arns["tallies"]]"#,
                    r#"[var.table_arns["rejects"]]"#,
                ]
                .contains(&statement.resources.as_str()),
                "{} grants on {}",
                statement.sid,
                statement.resources
            );
        }
        if statement.actions.contains("dynamodb:DeleteItem") {
            assert_eq!(statement.resources, "local.leases_arns");
        }
        if statement.resources.contains("polls") {
            assert!(writes.iter().all(|w| !statement.actions.contains(*w)));
        }
    }
}

#[test]
fn the_gateway_reads_ballots_by_key_only() {
    let iam = module_text("service");
    let gateway = statements(&iam, "gateway");
    // get_vote (votes/me) and get_votes (the batched 409 pre-check).
    assert_eq!(
        granted(&gateway, r#"[var.table_arns["votes"]]"#),
        set(&["dynamodb:GetItem", "dynamodb:BatchGetItem"])
    );
    assert_eq!(
        granted(&gateway, r#"[var.table_arns["polls"]]"#),
        set(&[
            "dynamodb:GetItem",
            "dynamodb:Scan",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem"
        ])
    );
    assert_eq!(
        granted(&gateway, r#"[var.table_arns["tallies"]]"#),
        set(&["dynamodb:BatchGetItem"])
    );
    assert_eq!(
        granted(
            &gateway,
            r#"["${var.table_arns["rejects"]}/index/voter-index"]"#
        ),
        set(&["dynamodb:Query"])
    );
    assert_eq!(tally_store::dynamo::VOTER_INDEX, "voter-index");
    // Scan is granted on polls alone, and nothing on the lease table.
    for statement in &gateway {
        if statement.actions.contains("dynamodb:Scan") {
            assert_eq!(statement.resources, r#"[var.table_arns["polls"]]"#);
        }
        assert!(!statement.resources.contains("leases"));
        assert!(!statement.resources.contains("table_and_index_arns"));
    }
}

#[test]
fn the_tasks_pull_from_the_one_image_repository() {
    let iam = module_text("service");
    let execution = statements(&iam, "execution");
    let pull = execution.iter().find(|s| s.sid == "PullLayers").unwrap();
    assert_eq!(pull.resources, "[local.ecr_repository_arn]");
    assert!(!iam.contains("repository/*"));
    // Only GetAuthorizationToken, which has no resource-level permission, is on "*".
    for statement in &execution {
        if statement.resources == r#"["*"]"# {
            assert_eq!(statement.actions, set(&["ecr:GetAuthorizationToken"]));
        }
    }
    assert_eq!(
        local(&iam, "ecr_repository_arn"),
        Some(
            r#""arn:aws:ecr:${local.image_parts[1]}:${local.image_parts[0]}:repository/${local.image_parts[2]}""#
        )
    );
    // The image must be an ECR image, so the repository is known.
    for module in ["service", "tally"] {
        let text = module_text(module);
        assert!(
            validation(&text, "image").contains(r"\\.dkr\\.ecr\\."),
            "{module} validates the image"
        );
    }
}

#[test]
fn the_key_lets_only_this_accounts_alarms_use_it() {
    let tally = module_text("tally");
    let key = statements(&tally, "key");
    let alarms = key.iter().find(|s| s.sid == "AlarmsPublish").unwrap();
    assert!(alarms
        .body
        .contains("identifiers = [\"cloudwatch.amazonaws.com\"]"));
    let conditions = blocks(alarms.body, "condition");
    assert!(conditions.iter().any(|c| {
        attr(c, "test") == Some(r#""StringEquals""#)
            && attr(c, "variable") == Some(r#""aws:SourceAccount""#)
            && attr(c, "values") == Some("[local.account_id]")
    }));
    // Every service principal of the key policies (the main key's and the
    // per-region part every key shares) is held by a condition.
    let logs_key = statements(&tally, "logs_key");
    assert!(logs_key.iter().any(|s| s.sid == "LogsEncrypt"));
    for statement in key.iter().chain(&logs_key) {
        if statement.body.contains("type        = \"Service\"") {
            assert!(
                !blocks(statement.body, "condition").is_empty(),
                "{} has no condition",
                statement.sid
            );
        }
    }
}

#[test]
fn metrics_stay_off_the_public_listener() {
    let service = module_text("service");
    let gateway = resource(&service, "aws_ecs_task_definition", "gateway");
    assert!(squeeze(gateway).contains(
        r#"{ name = "TALLY_GATEWAY_METRICS_ADDR", value = "0.0.0.0:${local.gateway_metrics_port}" }"#
    ));
    assert_eq!(local(&service, "gateway_metrics_port"), Some("9465"));
    // The load balancer forwards to 8080 only...
    assert_eq!(
        attr(resource(&service, "aws_lb_target_group", "gateway"), "port"),
        Some("8080")
    );
    let ecs = resource(&service, "aws_ecs_service", "gateway");
    assert_eq!(
        attr(block(ecs, "load_balancer"), "container_port"),
        Some("8080")
    );
    // ...may only reach 8080 on the tasks, and the metrics port is open to
    // the scrapers the operator names, never to the load balancer.
    for (label, body) in [
        (
            "alb_to_gateway",
            resource(
                &service,
                "aws_vpc_security_group_egress_rule",
                "alb_to_gateway",
            ),
        ),
        (
            "gateway_from_alb",
            resource(
                &service,
                "aws_vpc_security_group_ingress_rule",
                "gateway_from_alb",
            ),
        ),
    ] {
        assert_eq!(attr(body, "from_port"), Some("8080"), "{label}");
        assert_eq!(attr(body, "to_port"), Some("8080"), "{label}");
    }
    let metrics = resource(
        &service,
        "aws_vpc_security_group_ingress_rule",
        "gateway_metrics",
    );
    assert_eq!(
        attr(metrics, "referenced_security_group_id"),
        Some("each.value")
    );
    assert_eq!(
        attr(metrics, "for_each"),
        Some("toset(var.metrics_scraper_security_group_ids)")
    );
    // Defence in depth: the listener answers /metrics itself with a 404.
    let rule = resource(&service, "aws_lb_listener_rule", "no_metrics");
    assert_eq!(
        attr(rule, "listener_arn"),
        Some("aws_lb_listener.https.arn")
    );
    let action = block(rule, "action");
    assert_eq!(attr(action, "type"), Some(r#""fixed-response""#));
    assert_eq!(
        attr(block(action, "fixed_response"), "status_code"),
        Some(r#""404""#)
    );
    let path = block(block(rule, "condition"), "path_pattern");
    assert_eq!(attr(path, "values"), Some(r#"["/metrics*"]"#));
}

/// The environment variables a clap argument set reads.
fn env_names(command: clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_setting_the_task_definitions_give_is_read_by_the_code() {
    use clap::Args;
    let common = env_names(tally_service::settings::Common::augment_args(
        clap::Command::new("c"),
    ));
    let worker = env_names(tally_worker::daemon::WorkerArgs::augment_args(
        clap::Command::new("w"),
    ));
    let gateway = env_names(tally_gateway::GatewayArgs::augment_args(
        clap::Command::new("g"),
    ));
    let service = module_text("service");
    let names = |body: &str| -> Vec<String> {
        body.split("name = \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|name| name.starts_with("TALLY_"))
            .map(str::to_owned)
            .collect()
    };
    let shared: Vec<String> = blocks(&service, "locals")
        .into_iter()
        .flat_map(&names)
        .collect();
    assert!(shared.contains(&"TALLY_STREAM".to_owned()));
    for (task, reads) in [("worker", &worker), ("gateway", &gateway)] {
        let body = resource(&service, "aws_ecs_task_definition", task);
        let set_here = names(body);
        assert!(!set_here.is_empty());
        for name in shared.iter().chain(&set_here) {
            assert!(
                common.contains(name) || reads.contains(name),
                "the {task} task sets {name}, which `tally {task}` does not read"
            );
        }
    }
}

// The CloudFront distribution (modules/cdn).

/// One cache behaviour of the distribution: its path pattern and body.
struct Behaviour<'a> {
    pattern: String,
    body: &'a str,
}

/// The distribution's resource body in `cdn`.
fn distribution(cdn: &str) -> &str {
    resource(cdn, "aws_cloudfront_distribution", "this")
}

/// The behaviours in the order CloudFront tries them: the ordered ones as
/// written, then the default (`*`).
fn behaviours(cdn: &str) -> Vec<Behaviour<'_>> {
    let distribution = distribution(cdn);
    let mut found: Vec<Behaviour> = blocks(distribution, "ordered_cache_behavior")
        .into_iter()
        .map(|body| Behaviour {
            pattern: attr(body, "path_pattern")
                .expect("a path pattern")
                .trim_matches('"')
                .to_owned(),
            body,
        })
        .collect();
    found.push(Behaviour {
        pattern: "*".into(),
        body: block(distribution, "default_cache_behavior"),
    });
    found
}

/// CloudFront's path patterns: `*` is any run of characters, slashes
/// included, `?` one character, anything else itself (case-sensitive); a
/// leading `/` is optional.
fn path_matches(pattern: &str, path: &str) -> bool {
    fn from(pattern: &[u8], path: &[u8]) -> bool {
        match pattern.split_first() {
            None => path.is_empty(),
            Some((b'*', rest)) => (0..=path.len()).any(|at| from(rest, &path[at..])),
            Some((b'?', rest)) => !path.is_empty() && from(rest, &path[1..]),
            Some((byte, rest)) => path.first() == Some(byte) && from(rest, &path[1..]),
        }
    }
    from(
        pattern.trim_start_matches('/').as_bytes(),
        path.trim_start_matches('/').as_bytes(),
    )
}

/// `path_matches` reads patterns as CloudFront does.
fn check_path_matches() {
    assert!(path_matches(
        "/v1/polls/*/results",
        "/v1/polls/demo/results"
    ));
    assert!(!path_matches(
        "/v1/polls/*/results",
        "/v1/polls/demo/results/stream"
    ));
    assert!(path_matches("/v1/*", "/v1/polls/demo/votes/me"));
    assert!(path_matches("/metrics*", "/metrics"));
    assert!(path_matches("/metrics*", "/metrics/x"));
    assert!(!path_matches("/metrics*", "/Metrics"));
    assert!(path_matches("*", "/"));
}

/// The behaviour CloudFront applies to `path`: the first that matches.
fn behaviour_for<'a, 'b>(all: &'b [Behaviour<'a>], path: &str) -> &'b Behaviour<'a> {
    all.iter()
        .find(|behaviour| path_matches(&behaviour.pattern, path))
        .expect("the default behaviour matches every path")
}

/// The block a reference (`aws_cloudfront_cache_policy.live.id`,
/// `data.aws_cloudfront_cache_policy.disabled.id`) names in `text`.
fn referenced<'a>(text: &'a str, reference: &str) -> &'a str {
    let parts: Vec<&str> = reference.split('.').collect();
    match parts.as_slice() {
        ["data", kind, label, _] => block(text, &format!("data \"{kind}\" \"{label}\"")),
        [kind, label, _] => resource(text, kind, label),
        _ => panic!("not a reference: {reference}"),
    }
}

/// Whether the behaviour uses the managed CachingDisabled policy.
fn caching_disabled(cdn: &str, behaviour: &Behaviour) -> bool {
    let policy = attr(behaviour.body, "cache_policy_id").expect("a cache policy");
    policy.starts_with("data.aws_cloudfront_cache_policy.")
        && attr(referenced(cdn, policy), "name") == Some(r#""Managed-CachingDisabled""#)
}

/// The origin block a behaviour sends its requests to.
fn origin_of<'a>(cdn: &'a str, behaviour: &Behaviour) -> &'a str {
    let target = attr(behaviour.body, "target_origin_id").expect("a target origin");
    blocks(distribution(cdn), "origin {")
        .into_iter()
        .find(|origin| attr(origin, "origin_id") == Some(target))
        .unwrap_or_else(|| panic!("an origin {target}"))
}

/// The cache key of a cache policy holds the path alone: no header (so no
/// Authorization), no cookie, no query string.
fn assert_path_alone_is_the_key(policy: &str, what: &str) {
    let key = block(policy, "parameters_in_cache_key_and_forwarded_to_origin");
    assert_eq!(
        attr(block(key, "headers_config"), "header_behavior"),
        Some(r#""none""#),
        "{what}: no header in the cache key"
    );
    assert_eq!(
        attr(block(key, "cookies_config"), "cookie_behavior"),
        Some(r#""none""#),
        "{what}: no cookie in the cache key"
    );
    assert_eq!(
        attr(block(key, "query_strings_config"), "query_string_behavior"),
        Some(r#""none""#),
        "{what}: no query string in the cache key"
    );
}

/// A cached behaviour's origin requests carry Host alone (no token, no
/// cookie), through the origin with Origin Shield in the load balancer's
/// region.
fn assert_anonymous_and_shielded(cdn: &str, behaviour: &Behaviour, what: &str) {
    let request = referenced(
        cdn,
        attr(behaviour.body, "origin_request_policy_id").expect("an origin request policy"),
    );
    let headers = block(request, "headers_config");
    assert_eq!(
        attr(headers, "header_behavior"),
        Some(r#""whitelist""#),
        "{what}"
    );
    assert_eq!(
        strings(attr(block(headers, "headers"), "items").unwrap()),
        vec!["Host"],
        "{what}: only Host goes to the origin"
    );
    assert_eq!(
        attr(block(request, "cookies_config"), "cookie_behavior"),
        Some(r#""none""#),
        "{what}"
    );
    assert_eq!(
        attr(
            block(request, "query_strings_config"),
            "query_string_behavior"
        ),
        Some(r#""none""#),
        "{what}"
    );
    let shield = block(origin_of(cdn, behaviour), "origin_shield");
    assert_eq!(
        attr(shield, "enabled"),
        Some("true"),
        "{what}: Origin Shield"
    );
    assert_eq!(
        attr(shield, "origin_shield_region"),
        Some("var.origin_shield_region")
    );
    let tally = module_text("tally");
    assert_eq!(
        attr(block(&tally, "module \"cdn\""), "origin_shield_region"),
        Some("var.region"),
        "the shield is in the load balancer's region"
    );
}

fn ttl(policy: &str, name: &str) -> u64 {
    attr(policy, name)
        .unwrap_or_else(|| panic!("{name}"))
        .parse()
        .unwrap()
}

#[test]
fn the_results_are_cached_as_long_as_the_gateway_says_behind_origin_shield() {
    check_path_matches();
    let cdn = module_text("cdn");
    let all = behaviours(&cdn);
    let results = behaviour_for(&all, "/v1/polls/demo/results");
    assert!(!caching_disabled(&cdn, results));
    let policy = referenced(&cdn, attr(results.body, "cache_policy_id").unwrap());
    // The gateway's Cache-Control decides: max-age=1 (with
    // stale-while-revalidate) while the poll can change, a day once final.
    assert_eq!(ttl(policy, "min_ttl"), 0, "the origin's max-age=1 holds");
    assert_eq!(ttl(policy, "default_ttl"), 1, "a second if it says nothing");
    assert!(
        ttl(policy, "max_ttl") >= 86_400,
        "a final poll's long max-age is kept"
    );
    assert_path_alone_is_the_key(policy, "results");
    assert_anonymous_and_shielded(&cdn, results, "results");
    let methods = strings(attr(results.body, "allowed_methods").unwrap());
    assert!(methods.contains(&"GET") && !methods.contains(&"POST"));
    // Not the stream, nor a voter's own vote, which look alike.
    for path in ["/v1/polls/demo/results/stream", "/v1/polls/demo/votes/me"] {
        assert!(caching_disabled(&cdn, behaviour_for(&all, path)), "{path}");
    }
}

#[test]
fn the_pages_are_cached_at_the_edge() {
    let cdn = module_text("cdn");
    let all = behaviours(&cdn);
    // Every route of the pages module (crates/gateway/src/pages.rs).
    let source = std::fs::read_to_string(
        tally_lease::testing::repo_root().join("crates/gateway/src/pages.rs"),
    )
    .unwrap();
    let pages: Vec<&str> = source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.split('"').nth(1))
        .collect();
    for page in ["/", "/vote", "/dashboard", "/admin"] {
        assert!(pages.contains(&page), "pages.rs serves {page}: {pages:?}");
    }
    for page in &pages {
        let behaviour = behaviour_for(&all, page);
        assert!(!caching_disabled(&cdn, behaviour), "{page} is cached");
        let policy = referenced(&cdn, attr(behaviour.body, "cache_policy_id").unwrap());
        // The pages say no-cache (for browsers): a minimum above 0 keeps
        // them at the edge anyway, for a second.
        assert!(ttl(policy, "min_ttl") >= 1, "{page}");
        assert!(ttl(policy, "max_ttl") >= ttl(policy, "min_ttl"), "{page}");
        assert_path_alone_is_the_key(policy, page);
        assert_anonymous_and_shielded(&cdn, behaviour, page);
    }
}

#[test]
fn votes_admin_routes_and_streams_are_never_cached_at_the_edge() {
    let cdn = module_text("cdn");
    let all = behaviours(&cdn);
    let mut routes: Vec<(String, String)> = [
        ("POST", "/v1/polls/demo/votes"),
        ("GET", "/v1/polls/demo/votes/me"),
        ("GET", "/v1/polls"),
        ("POST", "/v1/polls"),
        ("POST", "/v1/polls/demo/open"),
        ("POST", "/v1/polls/demo/close"),
        ("GET", "/v1/pipeline"),
        ("POST", "/v1/dev/token"),
        ("GET", "/v1/polls/demo/results/stream"),
    ]
    .into_iter()
    .map(|(method, path)| (method.to_owned(), path.to_owned()))
    .collect();
    // And every other route the gateway documents, but the two that are
    // the same for everyone (the results, the document itself) and
    // /metrics (never served: see below).
    let spec = serde_json::to_value(tally_gateway::api::spec()).unwrap();
    let paths = spec["paths"].as_object().expect("the document's paths");
    assert!(paths.len() >= 10, "{:?}", paths.keys());
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let public = (method == "get" && path == "/v1/polls/{poll}/results")
                || path == "/openapi.json"
                || path == "/metrics";
            if !public {
                routes.push((method.to_ascii_uppercase(), path.replace("{poll}", "demo")));
            }
        }
    }
    for (method, path) in &routes {
        let behaviour = behaviour_for(&all, path);
        assert!(
            caching_disabled(&cdn, behaviour),
            "{method} {path} must not be cached (behaviour {})",
            behaviour.pattern
        );
        assert!(
            strings(attr(behaviour.body, "allowed_methods").unwrap()).contains(&method.as_str()),
            "{method} {path} is allowed"
        );
        // The request reaches the gateway as the viewer sent it: the
        // token (forwardable only when caching is disabled), Content-Type,
        // Idempotency-Key, Last-Event-ID, and the query string.
        let request = referenced(
            &cdn,
            attr(behaviour.body, "origin_request_policy_id").expect("an origin request policy"),
        );
        assert_eq!(
            attr(block(request, "headers_config"), "header_behavior"),
            Some(r#""allViewer""#),
            "{method} {path}"
        );
        assert_eq!(
            attr(
                block(request, "query_strings_config"),
                "query_string_behavior"
            ),
            Some(r#""all""#),
            "{method} {path}"
        );
    }
    // Events flow as they are sent.
    let stream = behaviour_for(&all, "/v1/polls/demo/results/stream");
    assert_eq!(attr(stream.body, "compress"), Some("false"));
    // CloudFront keeps error answers too: a 4xx answers one caller (a
    // voter's 404 from votes/me, a 403 to a non-admin) and is never kept.
    let errors = block(
        blocks(&cdn, "locals")
            .into_iter()
            .find(|body| attr(body, "error_caching").is_some())
            .expect("the error caching times"),
        "error_caching",
    )
    .to_owned();
    for code in ["400", "403", "404", "405", "414"] {
        assert_eq!(attr(&errors, code), Some("0"), "{code} is not kept");
    }
    assert!(squeeze(distribution(&cdn)).contains("for_each = local.error_caching"));
}

#[test]
fn the_distribution_speaks_https_only() {
    let cdn = module_text("cdn");
    for behaviour in behaviours(&cdn) {
        let policy = attr(behaviour.body, "viewer_protocol_policy");
        assert!(
            policy == Some(r#""https-only""#) || policy == Some(r#""redirect-to-https""#),
            "{}: {policy:?}",
            behaviour.pattern
        );
    }
    let certificate = block(distribution(&cdn), "viewer_certificate");
    assert_eq!(
        attr(certificate, "minimum_protocol_version"),
        Some(r#""TLSv1.2_2021""#)
    );
    assert_eq!(
        attr(certificate, "ssl_support_method"),
        Some(r#""sni-only""#)
    );
    assert_eq!(
        attr(certificate, "acm_certificate_arn"),
        Some("var.certificate_arn")
    );
    assert!(validation(&cdn, "certificate_arn").contains(":acm:us-east-1:"));
    let origins = blocks(distribution(&cdn), "origin {");
    assert!(!origins.is_empty());
    for origin in origins {
        let config = block(origin, "custom_origin_config");
        assert_eq!(
            attr(config, "origin_protocol_policy"),
            Some(r#""https-only""#)
        );
        assert_eq!(attr(config, "origin_ssl_protocols"), Some(r#"["TLSv1.2"]"#));
    }
    // HSTS on every answer the origin gives.
    for behaviour in behaviours(&cdn) {
        if !blocks(behaviour.body, "function_association").is_empty() {
            continue; // answered at the edge (/metrics)
        }
        let headers = referenced(
            &cdn,
            attr(behaviour.body, "response_headers_policy_id")
                .unwrap_or_else(|| panic!("{}: a response headers policy", behaviour.pattern)),
        );
        let hsts = block(
            block(headers, "security_headers_config"),
            "strict_transport_security",
        );
        assert!(ttl(hsts, "access_control_max_age_sec") >= 31_536_000);
        assert_eq!(attr(hsts, "override"), Some("true"));
    }
    let tally = module_text("tally");
    assert_eq!(
        attr(block(&tally, "module \"cdn\""), "certificate_arn"),
        Some("var.cdn_certificate_arn")
    );
}

#[test]
fn the_distribution_has_the_edge_web_acl() {
    let cdn = module_text("cdn");
    assert_eq!(
        attr(distribution(&cdn), "web_acl_id"),
        Some("var.web_acl_arn")
    );
    let tally = module_text("tally");
    assert_eq!(
        attr(block(&tally, "module \"cdn\""), "web_acl_arn"),
        Some("module.waf_edge.web_acl_arn")
    );
    // A CLOUDFRONT-scope ACL, made in us-east-1, with the same rules.
    let edge = block(&tally, "module \"waf_edge\"");
    assert_eq!(attr(edge, "source"), Some(r#""../waf""#));
    assert_eq!(attr(edge, "scope"), Some(r#""CLOUDFRONT""#));
    assert_eq!(attr(block(edge, "providers"), "aws"), Some("aws.us_east_1"));
    assert_eq!(
        attr(edge, "rate_limit_per_5_min"),
        Some("var.waf_rate_limit_per_5_min")
    );
    assert_eq!(
        attr(edge, "token_rate_limit_per_5_min"),
        Some("var.waf_token_rate_limit_per_5_min")
    );
    let waf = module_text("waf");
    let acl = resource(&waf, "aws_wafv2_web_acl", "this");
    assert_eq!(attr(acl, "scope"), Some("var.scope"));
    let rules: Vec<&str> = blocks(acl, "rule")
        .into_iter()
        .filter_map(|rule| attr(rule, "name"))
        .collect();
    assert_eq!(rules, vec![r#""rate-per-address""#, r#""rate-per-token""#]);
    for group in [
        "AWSManagedRulesCommonRuleSet",
        "AWSManagedRulesKnownBadInputsRuleSet",
        "AWSManagedRulesAmazonIpReputationList",
        "AWSManagedRulesBotControlRuleSet",
    ] {
        assert!(local(&waf, "managed_groups").is_some());
        assert!(waf.contains(&format!("name = \"{group}\"")), "{group}");
    }
    // Its logs' key is in us-east-1 too.
    assert_eq!(attr(edge, "kms_key_arn"), Some("aws_kms_key.edge.arn"));
    assert_eq!(
        attr(resource(&tally, "aws_kms_key", "edge"), "provider"),
        Some("aws.us_east_1")
    );
    // The environments give the module that provider.
    for env in ["dev", "prod"] {
        let text = std::fs::read_to_string(infra().join("envs").join(env).join("main.tf")).unwrap();
        let provider = blocks(&text, "provider \"aws\"")
            .into_iter()
            .find(|body| attr(body, "alias") == Some(r#""us_east_1""#))
            .unwrap_or_else(|| panic!("{env}: a us_east_1 provider"));
        assert_eq!(attr(provider, "region"), Some(r#""us-east-1""#));
        let module = block(&text, "module \"tally\"");
        assert_eq!(
            attr(block(module, "providers"), "aws.us_east_1"),
            Some("aws.us_east_1"),
            "{env}"
        );
    }
}

#[test]
fn the_distribution_keeps_standard_logs() {
    let cdn = module_text("cdn");
    let logging = block(distribution(&cdn), "logging_config");
    assert_eq!(attr(logging, "bucket"), Some("var.log_bucket_domain_name"));
    assert_eq!(attr(logging, "include_cookies"), Some("false"));
    let tally = module_text("tally");
    assert_eq!(
        attr(block(&tally, "module \"cdn\""), "log_bucket_domain_name"),
        Some("module.buckets.cdn_logs_bucket_domain_name")
    );
    // Standard logs are delivered through the bucket ACL: ACLs are
    // enabled before the distribution names the bucket.
    let buckets = module_text("buckets");
    let ownership = resource(&buckets, "aws_s3_bucket_ownership_controls", "cdn_logs");
    assert_eq!(
        attr(block(ownership, "rule"), "object_ownership"),
        Some(r#""BucketOwnerPreferred""#)
    );
    let output = block(&buckets, "output \"cdn_logs_bucket_domain_name\"");
    assert_eq!(
        attr(output, "value"),
        Some("aws_s3_bucket.cdn_logs.bucket_domain_name")
    );
    assert_eq!(
        attr(output, "depends_on"),
        Some("[aws_s3_bucket_ownership_controls.cdn_logs]")
    );
    // Kept, never public.
    let public = resource(&buckets, "aws_s3_bucket_public_access_block", "cdn_logs");
    for setting in [
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ] {
        assert_eq!(attr(public, setting), Some("true"), "{setting}");
    }
    let lifecycle = resource(
        &buckets,
        "aws_s3_bucket_lifecycle_configuration",
        "cdn_logs",
    );
    assert!(ttl(block(block(lifecycle, "rule"), "expiration"), "days") >= 365);
}

#[test]
fn metrics_are_not_served_through_the_distribution() {
    let cdn = module_text("cdn");
    let all = behaviours(&cdn);
    for path in ["/metrics", "/metrics/", "/metrics.txt"] {
        let behaviour = behaviour_for(&all, path);
        let function = block(behaviour.body, "function_association");
        assert_eq!(
            attr(function, "event_type"),
            Some(r#""viewer-request""#),
            "{path} is answered before any origin"
        );
        assert_eq!(
            attr(function, "function_arn"),
            Some("aws_cloudfront_function.not_found.arn")
        );
    }
    let function = resource(&cdn, "aws_cloudfront_function", "not_found");
    assert_eq!(attr(function, "runtime"), Some(r#""cloudfront-js-2.0""#));
    assert_eq!(
        attr(function, "code"),
        Some(r#"file("${path.module}/not-found.js")"#)
    );
    let code = std::fs::read_to_string(infra().join("modules/cdn/not-found.js")).unwrap();
    assert!(code.contains("function handler(event)"));
    assert!(code.contains("statusCode: 404"));
    assert!(
        !code.contains("return event.request"),
        "it never passes the request on"
    );
    // And were it to reach the load balancer, its own 404 rule comes
    // before the rule that forwards the distribution's requests.
    let service = module_text("service");
    let no_metrics = resource(&service, "aws_lb_listener_rule", "no_metrics");
    let from_cdn = resource(&service, "aws_lb_listener_rule", "from_cdn");
    assert!(ttl(no_metrics, "priority") < ttl(from_cdn, "priority"));
    assert_eq!(
        attr(
            block(block(no_metrics, "condition"), "path_pattern"),
            "values"
        ),
        Some(r#"["/metrics*"]"#)
    );
}

#[test]
fn only_the_distribution_reaches_the_load_balancer() {
    let service = module_text("service");
    // The security group admits CloudFront's origin-facing addresses only.
    let ingress: Vec<&str> = blocks(&service, "resource \"aws_vpc_security_group_ingress_rule\"")
        .into_iter()
        .filter(|rule| attr(rule, "security_group_id") == Some("aws_security_group.alb.id"))
        .collect();
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        attr(ingress[0], "prefix_list_id"),
        Some("data.aws_ec2_managed_prefix_list.cloudfront.id")
    );
    assert_eq!(attr(ingress[0], "cidr_ipv4"), None);
    assert_eq!(
        attr(
            block(
                &service,
                "data \"aws_ec2_managed_prefix_list\" \"cloudfront\""
            ),
            "name"
        ),
        Some(r#""com.amazonaws.global.cloudfront.origin-facing""#)
    );
    // The listener refuses what lacks the distribution's secret header...
    let listener = resource(&service, "aws_lb_listener", "https");
    let default = block(listener, "default_action");
    assert_eq!(attr(default, "type"), Some(r#""fixed-response""#));
    assert_eq!(
        attr(block(default, "fixed_response"), "status_code"),
        Some(r#""403""#)
    );
    let from_cdn = resource(&service, "aws_lb_listener_rule", "from_cdn");
    assert_eq!(
        attr(block(from_cdn, "action"), "type"),
        Some(r#""forward""#)
    );
    let header = block(block(from_cdn, "condition"), "http_header");
    assert_eq!(
        attr(header, "http_header_name"),
        Some("var.origin_header_name")
    );
    assert_eq!(attr(header, "values"), Some("[var.origin_secret]"));
    // ...which every origin of the distribution sends.
    let cdn = module_text("cdn");
    for origin in blocks(distribution(&cdn), "origin {") {
        let custom = block(origin, "custom_header");
        assert_eq!(attr(custom, "name"), Some("var.origin_header_name"));
        assert_eq!(attr(custom, "value"), Some("var.origin_secret"));
    }
    let tally = module_text("tally");
    for module in ["module \"cdn\"", "module \"service\""] {
        let body = block(&tally, module);
        assert_eq!(
            attr(body, "origin_header_name"),
            Some("local.origin_header_name"),
            "{module}"
        );
        assert_eq!(
            attr(body, "origin_secret"),
            Some("random_password.origin_secret.result"),
            "{module}"
        );
    }
    // The gateway takes the client from the last X-Forwarded-For entry:
    // CloudFront's (the viewer), which the load balancer leaves alone.
    let alb = resource(&service, "aws_lb", "gateway");
    assert_eq!(
        attr(alb, "xff_header_processing_mode"),
        Some(r#""preserve""#)
    );
    // The regional ACL is not on the load balancer, where it would see
    // CloudFront's addresses instead of the viewers'.
    let associated = attr(block(&tally, "module \"waf\""), "associate_arns").unwrap();
    assert!(!associated.contains("module.service"), "{associated}");
}

// What each command calls on AWS (src/operations.rs), against the roles of
// the tasks that run it, and the commands the runbooks name.

#[path = "../../src/operations.rs"]
#[allow(dead_code)]
mod operations;

/// The task that runs a command on AWS, by its role's policy document in
/// modules/service: the services, the one-off finalizer task (the
/// operator's commands on the live tables) and the one-off replay task.
/// `None`: not run on AWS (Terraform does what `init` does; `tail` and
/// `load` are for the local stack; `consumer` is the operator's own), so
/// no runbook may name it. A command that is neither fails the tests, so
/// a new one cannot go unchecked.
fn role_of(command: &str) -> Option<&'static str> {
    match command {
        "worker" => Some("worker"),
        "gateway" => Some("gateway"),
        "finalize" | "resolve" | "audit" | "snapshot" | "poll" | "leases" | "results"
        | "vote-status" => Some("finalizer"),
        "replay" => Some("replay"),
        // The container health check of both services: no AWS call.
        "probe" => Some("worker"),
        "init" | "tail" | "load" | "consumer" => None,
        other => panic!(
            "`tally {other}` runs on no known role: in tests/it/infra.rs's role_of(), name the task role that runs it on AWS, or list it among the commands that run on none"
        ),
    }
}

#[test]
#[should_panic(expected = "runs on no known role")]
fn a_command_without_a_role_fails_the_checks() {
    role_of("a-new-command");
}

/// The elements of a one-line `resources` value (`[a, "b"]`, or a bare
/// `local.x`).
fn resource_elements(value: &str) -> Vec<String> {
    match value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        Some(inner) => inner
            .split(", ")
            .map(|element| element.trim().to_owned())
            .collect(),
        None => vec![value.trim().to_owned()],
    }
}

/// The `resources` elements that stand for a resource kind of
/// src/operations.rs in modules/service (the locals are checked below to
/// mean what they say).
fn elements_for(kind: &str) -> Vec<&'static str> {
    use operations::*;
    let all = "local.table_and_index_arns";
    match kind {
        k if k == STREAM => vec!["var.stream_arn"],
        k if k == CONSUMER => vec![
            r#""${var.stream_arn}/consumer/${var.app}""#,
            r#""${var.stream_arn}/consumer/${var.app}:*""#,
        ],
        k if k == REPLAY_CONSUMERS => vec![
            r#""${var.stream_arn}/consumer/${var.app}-replay*""#,
            r#""${var.stream_arn}/consumer/${var.app}-restored*""#,
        ],
        k if k == LEASES => vec![r#"var.table_arns["leases"]"#, "local.leases_arns", all],
        k if k == LEASES_INDEX => vec!["local.leases_arns", all],
        k if k == POLLS => vec![r#"var.table_arns["polls"]"#, all],
        k if k == VOTES => vec![r#"var.table_arns["votes"]"#, all],
        k if k == TALLIES => vec![r#"var.table_arns["tallies"]"#, all],
        k if k == REJECTS => vec![r#"var.table_arns["rejects"]"#, all],
        k if k == REJECTS_INDEX => vec![r#""${var.table_arns["rejects"]}/index/voter-index""#, all],
        k if k == SHADOW || k == SHADOW_INDEX => vec!["local.replay_arns"],
        k if k == OBJECTS => vec![r#""arn:aws:s3:::${statement.value}/*""#],
        k if k == METRICS => vec![r#""*""#],
        // No task may create or probe buckets.
        _ => vec![],
    }
}

/// Whether the role's statements allow `action` on `kind` and no Deny
/// statement takes it away.
fn role_permits(statements: &[Statement], action: &str, kind: &str) -> bool {
    role_allows(statements, action, kind) && !role_denies(statements, action, kind)
}

/// Whether the role's statements allow `action` on `kind`.
fn role_allows(statements: &[Statement], action: &str, kind: &str) -> bool {
    let wanted = elements_for(kind);
    statements.iter().any(|statement| {
        statement.effect == "Allow"
            && statement.actions.contains(action)
            && resource_elements(&statement.resources)
                .iter()
                .any(|element| wanted.contains(&element.as_str()))
            && (kind != operations::METRICS
                || statement
                    .body
                    .contains("values   = [var.metrics_namespace]"))
    })
}

/// What the task roles of modules/service (its text) do not let the
/// commands they run call: each call src/operations.rs lists must be
/// allowed and not denied, and the key must decrypt for any command that
/// calls anything.
fn missing_grants(service: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for (command, calls) in operations::OPERATIONS {
        let Some(role) = role_of(command) else {
            continue;
        };
        let statements = statements(service, role);
        for (action, kind) in *calls {
            if role_denies(&statements, action, kind) {
                missing.push(format!(
                    "`tally {command}` calls {action} on the {kind}: the {role} role denies it"
                ));
            } else if !role_permits(&statements, action, kind) {
                missing.push(format!(
                    "`tally {command}` calls {action} on the {kind}: the {role} role does not allow it"
                ));
            }
        }
        // The stream and the tables are encrypted with the key.
        if !calls.is_empty() && !granted(&statements, "[var.kms_key_arn]").contains("kms:Decrypt") {
            missing.push(format!("the {role} role may not decrypt"));
        }
    }
    missing
}

/// A Deny statement takes away what the role's Allow statements grant: a
/// deny of the worker's counter updates shows as a call the worker role
/// does not let `tally worker` make.
#[test]
fn a_deny_takes_away_what_a_role_allows() {
    let service = module_text("service");
    let header = "data \"aws_iam_policy_document\" \"worker\" {\n";
    assert_eq!(service.matches(header).count(), 1);
    let denied = service.replace(
        header,
        &format!(
            "{header}  statement {{\n    sid       = \"NoCounting\"\n    effect    = \"Deny\"\n    actions   = [\"dynamodb:UpdateItem\"]\n    resources = [var.table_arns[\"tallies\"]]\n  }}\n"
        ),
    );
    assert_eq!(missing_grants(&service), Vec::<String>::new());
    let missing = missing_grants(&denied);
    assert!(
        missing.contains(&format!(
            "`tally worker` calls dynamodb:UpdateItem on the {}: the worker role denies it",
            operations::TALLIES
        )),
        "{missing:?}"
    );
}

#[test]
fn every_role_allows_what_its_commands_call() {
    let service = module_text("service");
    // The locals the roles name mean what elements_for() takes them for.
    assert_eq!(
        local(&service, "leases_arns"),
        Some(r#"[var.table_arns["leases"], "${var.table_arns["leases"]}/index/*"]"#)
    );
    assert_eq!(
        local(&service, "table_and_index_arns"),
        Some(r#"flatten([for arn in values(var.table_arns) : [arn, "${arn}/index/*"]])"#)
    );
    assert_eq!(
        local(&service, "replay_arns"),
        Some(r#"flatten([for arn in var.replay_table_arns : [arn, "${arn}/index/*"]])"#)
    );
    let missing = missing_grants(&service);
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    // Each task definition runs with the role its commands are checked
    // against.
    for (task, role, command) in [
        ("worker", "worker", "worker"),
        ("gateway", "gateway", "gateway"),
        ("finalizer", "finalizer", "finalize"),
        ("replay", "replay", "replay"),
    ] {
        let body = resource(&service, "aws_ecs_task_definition", task);
        assert_eq!(
            attr(body, "task_role_arn"),
            Some(format!("aws_iam_role.{role}.arn").as_str())
        );
        assert!(
            squeeze(body).contains(&format!("command = [\"{command}\"")),
            "the {task} task runs `tally {command}`"
        );
        assert_eq!(role_of(command), Some(role));
    }
}

/// A stream ARN and an application name to fill in the roles' resource
/// patterns with.
const SAMPLE_STREAM_ARN: &str = "arn:aws:kinesis:eu-west-1:123456789012:stream/tally-votes";
const SAMPLE_APP: &str = "tally";

/// Whether `arn` matches the IAM resource pattern `pattern`: `*` stands
/// for any run of characters (none too), `?` for one, anything else for
/// itself.
fn iam_pattern_matches(pattern: &[char], arn: &[char]) -> bool {
    match pattern.split_first() {
        None => arn.is_empty(),
        Some(('*', rest)) => (0..=arn.len()).any(|skip| iam_pattern_matches(rest, &arn[skip..])),
        Some(('?', rest)) => !arn.is_empty() && iam_pattern_matches(rest, &arn[1..]),
        Some((literal, rest)) => {
            arn.first() == Some(literal) && iam_pattern_matches(rest, &arn[1..])
        }
    }
}

#[test]
fn check_iam_pattern_matches() {
    let matches = |pattern: &str, arn: &str| {
        let pattern: Vec<char> = pattern.chars().collect();
        let arn: Vec<char> = arn.chars().collect();
        iam_pattern_matches(&pattern, &arn)
    };
    assert!(matches("a/b", "a/b"));
    assert!(!matches("a/b", "a/bc"));
    assert!(matches("a/b:*", "a/b:1"));
    assert!(matches("a/b:*", "a/b:"));
    assert!(!matches("a/b:*", "a/b"));
    assert!(matches("a/b*", "a/b"));
    assert!(matches("a/?:1", "a/b:1"));
    assert!(!matches("a/?:1", "a/:1"));
}

/// The patterns of a statement's resources with `var.stream_arn` and
/// `var.app` filled in with the samples; elements that name anything else
/// (the tables' locals, the key) are left out.
fn sample_patterns(statement: &Statement) -> Vec<String> {
    resource_elements(&statement.resources)
        .iter()
        .filter_map(|element| {
            if element == "var.stream_arn" {
                return Some(SAMPLE_STREAM_ARN.to_owned());
            }
            let template = element.strip_prefix('"')?.strip_suffix('"')?;
            let pattern = template
                .replace("${var.stream_arn}", SAMPLE_STREAM_ARN)
                .replace("${var.app}", SAMPLE_APP);
            (!pattern.contains("${")).then_some(pattern)
        })
        .collect()
}

/// Whether the statements allow `action` on `arn` and deny it nowhere, as
/// IAM evaluates them, with the sample stream and application.
fn allows_on_sample(statements: &[Statement], action: &str, arn: &str) -> bool {
    let arn: Vec<char> = arn.chars().collect();
    let any = |effect: &str| {
        statements.iter().any(|statement| {
            statement.effect == effect
                && statement.actions.contains(action)
                && sample_patterns(statement).iter().any(|pattern| {
                    let pattern: Vec<char> = pattern.chars().collect();
                    iam_pattern_matches(&pattern, &arn)
                })
        })
    };
    any("Allow") && !any("Deny")
}

/// Kinesis checks `DescribeStreamConsumer` and `DeregisterStreamConsumer`,
/// which the code calls with the stream's ARN and the consumer's name, on
/// `<stream>/consumer/<name>` without the creation time, and
/// `SubscribeToShard`, called with the consumer's ARN, on
/// `<stream>/consumer/<name>:<creation time>`: each role's patterns match
/// its own consumers in the form each call is checked in, and no other
/// role's.
#[test]
fn the_consumer_grants_match_the_arns_kinesis_checks() {
    let service = module_text("service");
    let consumer = |name: &str| format!("{SAMPLE_STREAM_ARN}/consumer/{name}");
    let created = |name: &str| format!("{SAMPLE_STREAM_ARN}/consumer/{name}:1700000000");
    const DESCRIBE: &str = "kinesis:DescribeStreamConsumer";
    const SUBSCRIBE: &str = "kinesis:SubscribeToShard";
    const DEREGISTER: &str = "kinesis:DeregisterStreamConsumer";
    const REGISTER: &str = "kinesis:RegisterStreamConsumer";
    let mut wrong = Vec::new();
    let mut expect =
        |role: &str, statements: &[Statement], action: &str, arn: &str, allowed: bool| {
            if allows_on_sample(statements, action, arn) != allowed {
                let verdict = if allowed { "does not allow" } else { "allows" };
                wrong.push(format!("the {role} role {verdict} {action} on {arn}"));
            }
        };

    let worker = statements(&service, "worker");
    expect("worker", &worker, REGISTER, SAMPLE_STREAM_ARN, true);
    expect("worker", &worker, DESCRIBE, &consumer(SAMPLE_APP), true);
    expect("worker", &worker, DESCRIBE, &created(SAMPLE_APP), true);
    expect("worker", &worker, SUBSCRIBE, &created(SAMPLE_APP), true);
    for other in ["tally-replay-1", "tally-restored-1", "tally2", "other"] {
        for arn in [consumer(other), created(other)] {
            for action in [DESCRIBE, SUBSCRIBE, DEREGISTER] {
                expect("worker", &worker, action, &arn, false);
            }
        }
    }
    expect("worker", &worker, DEREGISTER, &consumer(SAMPLE_APP), false);

    let replay = statements(&service, "replay");
    expect("replay", &replay, REGISTER, SAMPLE_STREAM_ARN, true);
    for own in [
        "tally-replay-1",
        "tally-replay-restore-1",
        "tally-restored-1",
    ] {
        for arn in [consumer(own), created(own)] {
            expect("replay", &replay, DESCRIBE, &arn, true);
            expect("replay", &replay, DEREGISTER, &arn, true);
        }
        expect("replay", &replay, SUBSCRIBE, &created(own), true);
    }
    for live in [
        consumer(SAMPLE_APP),
        created(SAMPLE_APP),
        created("other-replay-1"),
    ] {
        for action in [DESCRIBE, SUBSCRIBE, DEREGISTER] {
            expect("replay", &replay, action, &live, false);
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The resource kinds of src/operations.rs a `resources` element stands
/// for: `elements_for()` read the other way round.
fn kinds_of(element: &str) -> Vec<&'static str> {
    operations::RESOURCES
        .iter()
        .copied()
        .filter(|kind| elements_for(kind).contains(&element))
        .collect()
}

/// The table a resource kind belongs to: an index's table, or the kind.
fn table_of(kind: &'static str) -> &'static str {
    use operations::*;
    match kind {
        k if k == LEASES_INDEX => LEASES,
        k if k == REJECTS_INDEX => REJECTS,
        k if k == SHADOW_INDEX => SHADOW,
        k => k,
    }
}

/// Whether `action` is in `called` on each table `element` stands for (a
/// table and its indexes count as one): an element that stands for every
/// table needs the action called on every table.
fn called_on_each_table(called: &BTreeSet<(&str, &str)>, action: &str, element: &str) -> bool {
    let kinds = kinds_of(element);
    let tables: BTreeSet<&str> = kinds.iter().copied().map(table_of).collect();
    !tables.is_empty()
        && tables.iter().all(|table| {
            kinds
                .iter()
                .any(|kind| table_of(kind) == *table && called.contains(&(action, *kind)))
        })
}

/// Least privilege the other way round: each action a task role allows on
/// a resource (the key's actions aside) is one that a command it runs
/// calls there.
#[test]
fn no_role_allows_what_its_commands_never_call() {
    let service = module_text("service");
    let mut unused = Vec::new();
    for role in ["worker", "gateway", "finalizer", "replay"] {
        let called: BTreeSet<(&str, &str)> = operations::OPERATIONS
            .iter()
            .filter(|(command, _)| role_of(command) == Some(role))
            .flat_map(|(_, calls)| calls.iter().copied())
            .collect();
        for statement in statements(&service, role) {
            if statement.effect == "Deny" {
                continue;
            }
            for action in statement.actions.iter().filter(|a| !a.starts_with("kms:")) {
                for element in resource_elements(&statement.resources) {
                    if !called_on_each_table(&called, action, &element) {
                        unused.push(format!(
                            "the {role} role allows {action} on {element} ({}), which no command it runs calls there",
                            statement.sid
                        ));
                    }
                }
            }
        }
    }
    assert!(unused.is_empty(), "{}", unused.join("\n"));
}

#[test]
fn the_replay_role_writes_only_tables_apart_from_the_live_ones() {
    let service = module_text("service");
    let replay = statements(&service, "replay");
    // The live tables (restored ones too, which the patterns match) are
    // denied every write.
    let never = replay
        .iter()
        .find(|statement| statement.sid == "NeverLiveTables")
        .expect("a deny of writes to the live tables");
    assert_eq!(never.effect, "Deny");
    assert_eq!(never.resources, "local.table_and_index_arns");
    for action in [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:PartiQLInsert",
        "dynamodb:DeleteTable",
    ] {
        assert!(never.actions.contains(action), "{action} not denied");
    }
    for statement in replay.iter().filter(|s| s.effect == "Allow") {
        let writes = statement.actions.iter().any(|action| {
            [
                "dynamodb:CreateTable",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:PartiQLInsert",
            ]
            .contains(&action.as_str())
        });
        if writes {
            assert_eq!(
                statement.resources, "local.replay_arns",
                "{}",
                statement.sid
            );
        }
    }
    // Its stream consumers are its own: it may deregister no other (the
    // live application's is `<app>`).
    for statement in &replay {
        if statement
            .actions
            .contains("kinesis:DeregisterStreamConsumer")
        {
            assert!(
                !statement.resources.contains("/consumer/*"),
                "{}",
                statement.sid
            );
        }
    }
    // The patterns: <app>-replay-* and <app>-restored-*, which no table of
    // modules/tables is named (they are <app>-leases and <app>-<role>).
    let tally = module_text("tally");
    assert_eq!(
        local(&tally, "replay_table_arns"),
        Some(
            r#"["${local.table_arn}/${var.app}-replay-*", "${local.table_arn}/${var.app}-restored-*"]"#
        )
    );
    assert_eq!(
        attr(block(&tally, "module \"service\""), "replay_table_arns"),
        Some("local.replay_table_arns")
    );
    let tables = module_text("tables");
    for role in ["polls", "votes", "tallies", "rejects"] {
        assert!(tables.contains(&format!("name  = \"${{var.table_prefix}}{role}\"")));
    }
    assert_eq!(local(&tally, "table_prefix"), Some(r#""${var.app}-""#));
    // The finalizer creates nothing.
    let finalizer = statements(&service, "finalizer");
    assert!(finalizer
        .iter()
        .all(|s| !s.actions.contains("dynamodb:CreateTable")));
}

/// One item of an anchored pattern: the characters it takes (as ranges),
/// and how many: at least `least`, and one at most when `at_most_one`.
struct PatternItem {
    ranges: Vec<(char, char)>,
    least: usize,
    at_most_one: bool,
}

impl PatternItem {
    fn accepts(&self, c: char) -> bool {
        self.ranges
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&c))
    }
}

/// Whether `text` matches `pattern`, a regular expression of the one form
/// the Terraform validations use: `^`, then items, then `$`; an item is a
/// bracketed class of characters and ranges or a character, followed by
/// `+`, `*` or nothing.
fn anchored_pattern_matches(pattern: &str, text: &str) -> bool {
    let inner = pattern
        .strip_prefix('^')
        .and_then(|rest| rest.strip_suffix('$'))
        .unwrap_or_else(|| panic!("{pattern} is anchored at both ends"));
    let chars: Vec<char> = inner.chars().collect();
    let mut items = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let mut ranges = Vec::new();
        if chars[at] == '[' {
            let end = (at..chars.len()).find(|&i| chars[i] == ']').unwrap();
            let class = &chars[at + 1..end];
            assert!(class.first() != Some(&'^'), "no negated classes");
            let mut index = 0;
            while index < class.len() {
                if index + 2 < class.len() && class[index + 1] == '-' {
                    ranges.push((class[index], class[index + 2]));
                    index += 3;
                } else {
                    ranges.push((class[index], class[index]));
                    index += 1;
                }
            }
            at = end + 1;
        } else {
            let literal = chars[at];
            assert!(
                !"\\.()|?{}".contains(literal),
                "unsupported {literal} in {pattern}"
            );
            ranges.push((literal, literal));
            at += 1;
        }
        let (least, at_most_one) = match chars.get(at) {
            Some('+') => (1, false),
            Some('*') => (0, false),
            _ => (1, true),
        };
        if !at_most_one {
            at += 1;
        }
        items.push(PatternItem {
            ranges,
            least,
            at_most_one,
        });
    }
    fn matches(items: &[PatternItem], text: &[char]) -> bool {
        let Some((item, rest)) = items.split_first() else {
            return text.is_empty();
        };
        let run = text.iter().take_while(|c| item.accepts(**c)).count();
        let most = if item.at_most_one { run.min(1) } else { run };
        (item.least..=most)
            .rev()
            .any(|taken| matches(rest, &text[taken..]))
    }
    let text: Vec<char> = text.chars().collect();
    matches(&items, &text)
}

/// The restored tables' prefix is `<app>-restored-<name>-` with a name of
/// the characters a table name may have, and no longer than the tasks take
/// as `TALLY_TABLE_PREFIX`, which keeps `<prefix>rejects` within
/// DynamoDB's 255 characters: the validation, evaluated on sample values,
/// refuses an empty name and a prefix the tasks would refuse.
#[test]
fn the_restored_tables_prefix_is_one_the_tasks_and_dynamodb_take() {
    let tally = module_text("tally");
    let condition = validation(&tally, "vote_tables_prefix");
    let shape = [
        r#"var.vote_tables_prefix == "" || (startswith(var.vote_tables_prefix, "${var.app}-restored-") && can(regex(""#,
        r#"", trimprefix(var.vote_tables_prefix, "${var.app}-restored-"))) && length(var.vote_tables_prefix) <= "#,
        ")",
    ];
    let unexpected = format!(
        "the validation is `{}<name pattern>{}<limit>{}`: {condition}",
        shape[0], shape[1], shape[2]
    );
    let rest = condition
        .strip_prefix(shape[0])
        .unwrap_or_else(|| panic!("{unexpected}"));
    let (name_pattern, rest) = rest
        .split_once(shape[1])
        .unwrap_or_else(|| panic!("{unexpected}"));
    let limit: usize = rest
        .strip_suffix(shape[2])
        .and_then(|limit| limit.parse().ok())
        .unwrap_or_else(|| panic!("{unexpected}"));
    // The condition, evaluated as Terraform does.
    let app = "tally";
    let accepted = |prefix: &str| {
        prefix.is_empty()
            || prefix
                .strip_prefix(&format!("{app}-restored-"))
                .is_some_and(|name| {
                    anchored_pattern_matches(name_pattern, name) && prefix.len() <= limit
                })
    };
    let long = |length: usize| {
        let start = format!("{app}-restored-");
        format!("{start}{}-", "x".repeat(length - start.len() - 1))
    };
    for good in [
        "",
        "tally-restored-1-",
        "tally-restored-a.b_C-2-",
        &long(limit),
    ] {
        assert!(accepted(good), "{good:?} is refused");
    }
    for bad in [
        "tally-restored--",
        "tally-restored-",
        "tally-restored-1",
        "tally-restored-a b-",
        "tally-restored-ü-",
        "other-restored-1-",
        "tally-replay-1-",
        &long(limit + 1),
    ] {
        assert!(!accepted(bad), "{bad:?} is accepted");
    }
    // The limit is the tasks' own for TALLY_TABLE_PREFIX...
    let settings = |table_prefix: String| tally_service::settings::Common {
        stream: "tally-votes".into(),
        app: app.into(),
        table_prefix,
    };
    assert!(settings(long(limit)).validate().is_ok());
    assert!(settings(long(limit + 1)).validate().is_err());
    // ...and the longest table name it makes fits DynamoDB's 255.
    for role in ["polls", "votes", "tallies", "rejects"] {
        assert!(limit + role.len() <= 255, "{role}");
    }
}

#[test]
fn a_restore_points_the_tasks_at_restored_tables_and_replaces_none() {
    let tally = module_text("tally");
    // The tables module's names never depend on the restore input...
    assert_eq!(
        attr(block(&tally, "module \"tables\""), "table_prefix"),
        Some("local.table_prefix")
    );
    // ...the tasks' prefix and their roles' table ARNs do.
    let call = block(&tally, "module \"service\"");
    assert_eq!(
        attr(call, "table_prefix"),
        Some("local.service_table_prefix")
    );
    assert_eq!(attr(call, "table_arns"), Some("local.service_table_arns"));
    assert_eq!(
        local(&tally, "service_table_prefix"),
        Some(r#"var.vote_tables_prefix == "" ? local.table_prefix : var.vote_tables_prefix"#)
    );
    // The roles' ARNs are the tables under that same prefix: the restored
    // polls, votes, tallies and rejects, and the module's own lease table,
    // which a restore never replaces.
    assert_eq!(
        local_expression(&tally, "service_table_arns").as_deref(),
        Some(
            r#"var.vote_tables_prefix == "" ? module.tables.arns : merge(module.tables.arns, { for role in ["polls", "votes", "tallies", "rejects"] : role => "${local.table_arn}/${var.vote_tables_prefix}${role}" })"#
        )
    );
    assert_eq!(
        local(&tally, "table_arn"),
        Some(r#""arn:aws:dynamodb:${var.region}:${local.account_id}:table""#)
    );
    // Those four are every table modules/tables names with the prefix.
    let tables = module_text("tables");
    let prefixed: BTreeSet<&str> = tables
        .lines()
        .filter_map(|line| line.trim().strip_prefix(r#"name  = "${var.table_prefix}"#))
        .map(|rest| rest.trim_end_matches('"'))
        .collect();
    assert_eq!(
        prefixed,
        BTreeSet::from(["polls", "votes", "tallies", "rejects"])
    );
    // The prefix is the application's own restored tables', which the
    // replay role may write (`<app>-restored-*`): the validation names
    // `var.app`, which Terraform allows from 1.9 on, and every root module
    // and the module itself ask for that version.
    let condition = validation(&tally, "vote_tables_prefix");
    assert!(
        condition.contains(r#"startswith(var.vote_tables_prefix, "${var.app}-restored-")"#),
        "the prefix must start with <app>-restored-: {condition}"
    );
    assert!(condition.contains(r#"var.vote_tables_prefix == "" ||"#));
    let mut roots: Vec<PathBuf> = std::fs::read_dir(infra().join("envs"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("main.tf"))
        .collect();
    roots.push(infra().join("modules/tally/versions.tf"));
    assert!(roots.len() >= 3, "{roots:?}");
    for file in &roots {
        let text = std::fs::read_to_string(file).unwrap();
        assert_eq!(
            attr(block(&text, "terraform"), "required_version"),
            Some(r#"">= 1.9""#),
            "{}",
            file.display()
        );
    }
    // The runbook uses that input, and restores under that name.
    let restore = std::fs::read_to_string(runbooks().join("restore.md")).unwrap();
    assert!(restore.contains("vote_tables_prefix = \"<app>-restored-1-\""));
    assert!(restore.contains("--target-table-name <app>-restored-1-votes"));
    assert!(
        !restore.contains("table_prefix`)"),
        "table_prefix is not an input"
    );
}

#[test]
fn the_gateway_service_autoscales_on_cpu_and_requests() {
    let service = module_text("service");
    let gateway = resource(&service, "aws_ecs_service", "gateway");
    assert_eq!(attr(gateway, "desired_count"), Some("var.gateways_min"));
    assert_eq!(
        attr(block(gateway, "lifecycle"), "ignore_changes"),
        Some("[desired_count]")
    );
    let target = resource(&service, "aws_appautoscaling_target", "gateways");
    assert_eq!(
        attr(target, "resource_id"),
        Some(r#""service/${aws_ecs_cluster.this.name}/${aws_ecs_service.gateway.name}""#)
    );
    assert_eq!(attr(target, "min_capacity"), Some("var.gateways_min"));
    assert_eq!(attr(target, "max_capacity"), Some("var.gateways_max"));
    // Each policy tracks its metric at the input the docs name, with the
    // documented default; requests are counted on the gateway service's
    // own target group, behind the listener the distribution reaches.
    let requests_label =
        r#""${aws_lb.gateway.arn_suffix}/${aws_lb_target_group.gateway.arn_suffix}""#;
    for (label, metric, target, resource_label) in [
        (
            "gateway_cpu",
            "ECSServiceAverageCPUUtilization",
            "gateway_cpu_target",
            None,
        ),
        (
            "gateway_requests",
            "ALBRequestCountPerTarget",
            "gateway_requests_per_target",
            Some(requests_label),
        ),
    ] {
        let policy = resource(&service, "aws_appautoscaling_policy", label);
        assert_eq!(
            attr(policy, "resource_id"),
            Some("aws_appautoscaling_target.gateways.resource_id")
        );
        let tracking = block(policy, "target_tracking_scaling_policy_configuration");
        assert_eq!(
            attr(tracking, "target_value"),
            Some(format!("var.{target}").as_str()),
            "{label}"
        );
        let predefined = block(tracking, "predefined_metric_specification");
        assert_eq!(
            attr(predefined, "predefined_metric_type"),
            Some(format!("\"{metric}\"").as_str())
        );
        assert_eq!(
            attr(predefined, "resource_label"),
            resource_label,
            "{label}"
        );
        assert_documented_default(target);
    }
    assert_eq!(
        attr(block(gateway, "load_balancer"), "target_group_arn"),
        Some("aws_lb_target_group.gateway.arn")
    );
    assert_eq!(
        attr(
            block(
                resource(&service, "aws_lb_listener_rule", "from_cdn"),
                "action"
            ),
            "target_group_arn"
        ),
        Some("aws_lb_target_group.gateway.arn")
    );
    assert_eq!(
        attr(
            resource(&service, "aws_lb_listener", "https"),
            "load_balancer_arn"
        ),
        Some("aws_lb.gateway.arn")
    );
    // The scale runbook says so, with the inputs' names.
    let scale = std::fs::read_to_string(runbooks().join("scale.md")).unwrap();
    for name in ["gateways_min", "gateways_max", "ALBRequestCountPerTarget"] {
        assert!(scale.contains(name), "scale.md names {name}");
    }
    let tally = module_text("tally");
    for name in ["gateways_min", "gateways_max"] {
        assert_eq!(
            attr(block(&tally, "module \"service\""), name),
            Some(format!("var.{name}").as_str())
        );
    }
}

/// The number the infra README and the scale runbook give in parentheses
/// after `` `name` `` (`` `gateway_cpu_target` (60%) ``, `(30,000 a
/// minute)`): the default of the input in modules/service and
/// modules/tally, which every call passes on and no environment changes.
fn assert_documented_default(name: &str) {
    let readme = std::fs::read_to_string(infra().join("README.md")).unwrap();
    let scale = std::fs::read_to_string(runbooks().join("scale.md")).unwrap();
    let documented = |doc: &str, text: &str| -> u64 {
        let squeezed = squeeze(text);
        let after = squeezed
            .split(&format!("`{name}` ("))
            .nth(1)
            .unwrap_or_else(|| panic!("{doc} gives `{name}` (number)"));
        let digits: String = after
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',')
            .filter(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("{doc}: a number after `{name}` ("))
    };
    let value = documented("infra/terraform/README.md", &readme);
    assert_eq!(documented("ops/runbooks/scale.md", &scale), value, "{name}");
    for module in ["service", "tally"] {
        let text = module_text(module);
        assert_eq!(
            attr(block(&text, &format!("variable \"{name}\"")), "default"),
            Some(value.to_string().as_str()),
            "modules/{module}: the default of {name} is the documented {value}"
        );
    }
    assert_eq!(
        attr(block(&module_text("tally"), "module \"service\""), name),
        Some(format!("var.{name}").as_str())
    );
    for env in ["dev", "prod"] {
        let text = std::fs::read_to_string(infra().join("envs").join(env).join("main.tf")).unwrap();
        assert_eq!(
            attr(block(&text, "module \"tally\""), name),
            None,
            "envs/{env} keeps the documented {name}"
        );
    }
}

#[test]
fn the_worker_service_autoscales_on_open_shards_per_worker() {
    let service = module_text("service");
    let target = resource(&service, "aws_appautoscaling_target", "workers");
    assert_eq!(
        attr(target, "resource_id"),
        Some(r#""service/${aws_ecs_cluster.this.name}/${aws_ecs_service.worker.name}""#)
    );
    assert_eq!(attr(target, "min_capacity"), Some("var.workers_min"));
    assert_eq!(attr(target, "max_capacity"), Some("var.workers_max"));
    let policy = resource(&service, "aws_appautoscaling_policy", "shards_per_worker");
    assert_eq!(
        attr(policy, "resource_id"),
        Some("aws_appautoscaling_target.workers.resource_id")
    );
    assert_eq!(
        attr(policy, "policy_type"),
        Some(r#""TargetTrackingScaling""#)
    );
    // It keeps open shards per running worker at shards_per_worker (the
    // env's number, which prod_sizing_is_the_design_docs checks)...
    let tracking = block(policy, "target_tracking_scaling_policy_configuration");
    assert_eq!(
        attr(tracking, "target_value"),
        Some("var.shards_per_worker")
    );
    assert!(blocks(tracking, "predefined_metric_specification").is_empty());
    assert_eq!(
        attr(
            block(&module_text("tally"), "module \"service\""),
            "shards_per_worker"
        ),
        Some("var.shards_per_worker")
    );
    // ...the ratio of the workers' OpenShards (their maximum, under the
    // application the workers publish as, TALLY_APP) to the worker
    // service's running tasks.
    let custom = block(tracking, "customized_metric_specification");
    let metrics = blocks(custom, "metrics");
    let by_id = |id: &str| -> &str {
        metrics
            .iter()
            .copied()
            .find(|body| attr(body, "id") == Some(format!("\"{id}\"").as_str()))
            .unwrap_or_else(|| panic!("a metric {id}"))
    };
    let returned: Vec<&str> = metrics
        .iter()
        .filter(|body| attr(body, "return_data") == Some("true"))
        .filter_map(|body| attr(body, "id"))
        .collect();
    assert_eq!(returned, vec![r#""per_worker""#], "one metric is tracked");
    assert_eq!(
        attr(by_id("per_worker"), "expression"),
        Some(r#""shards / MAX([workers, 1])""#)
    );
    let stat = |id: &str| block(by_id(id), "metric_stat");
    let shards = block(stat("shards"), "metric");
    assert_eq!(attr(stat("shards"), "stat"), Some(r#""Maximum""#));
    assert_eq!(attr(shards, "namespace"), Some("var.metrics_namespace"));
    assert_eq!(attr(shards, "metric_name"), Some(r#""OpenShards""#));
    let dimension = block(shards, "dimensions");
    assert_eq!(attr(dimension, "name"), Some(r#""Application""#));
    assert_eq!(attr(dimension, "value"), Some("var.app"));
    assert!(squeeze(&service).contains(r#"{ name = "TALLY_APP", value = var.app }"#));
    let workers = block(stat("workers"), "metric");
    assert_eq!(attr(stat("workers"), "stat"), Some(r#""Average""#));
    assert_eq!(
        attr(workers, "namespace"),
        Some(r#""ECS/ContainerInsights""#)
    );
    assert_eq!(attr(workers, "metric_name"), Some(r#""RunningTaskCount""#));
    let dimensions: Vec<(Option<&str>, Option<&str>)> = blocks(workers, "dimensions")
        .into_iter()
        .map(|body| (attr(body, "name"), attr(body, "value")))
        .collect();
    assert_eq!(
        dimensions,
        vec![
            (Some(r#""ClusterName""#), Some("aws_ecs_cluster.this.name")),
            (
                Some(r#""ServiceName""#),
                Some("aws_ecs_service.worker.name")
            ),
        ]
    );
}

#[test]
fn the_gateway_reads_every_workers_metrics() {
    let service = module_text("service");
    let gateway = squeeze(resource(&service, "aws_ecs_task_definition", "gateway"));
    assert!(gateway
        .contains(r#"{ name = "TALLY_WORKER_METRICS_URLS", value = local.worker_metrics_urls }"#));
    assert_eq!(
        local(&service, "worker_metrics_urls"),
        Some(
            r#""dns+http://${aws_service_discovery_service.workers.name}.${aws_service_discovery_private_dns_namespace.tally.name}:${local.worker_metrics_port}/metrics""#
        )
    );
    assert_eq!(local(&service, "worker_metrics_port"), Some("9464"));
    // The workers serve /metrics there...
    let worker = squeeze(resource(&service, "aws_ecs_task_definition", "worker"));
    assert!(worker.contains(
        r#"{ name = "TALLY_HEALTH_ADDR", value = "0.0.0.0:${local.worker_metrics_port}" }"#
    ));
    // ...registered under that name, every task's address (A records,
    // multivalue)...
    let ecs = resource(&service, "aws_ecs_service", "worker");
    assert_eq!(
        attr(block(ecs, "service_registries"), "registry_arn"),
        Some("aws_service_discovery_service.workers.arn")
    );
    let discovery = resource(&service, "aws_service_discovery_service", "workers");
    let dns = block(discovery, "dns_config");
    assert_eq!(attr(dns, "routing_policy"), Some(r#""MULTIVALUE""#));
    assert_eq!(attr(block(dns, "dns_records"), "type"), Some(r#""A""#));
    // ...and the security groups let the gateway reach that port.
    let egress = resource(
        &service,
        "aws_vpc_security_group_egress_rule",
        "gateway_to_worker_metrics",
    );
    let ingress = resource(
        &service,
        "aws_vpc_security_group_ingress_rule",
        "worker_metrics_from_gateway",
    );
    for (rule, from, to) in [
        (
            egress,
            "aws_security_group.gateway.id",
            "aws_security_group.worker.id",
        ),
        (
            ingress,
            "aws_security_group.worker.id",
            "aws_security_group.gateway.id",
        ),
    ] {
        assert_eq!(attr(rule, "security_group_id"), Some(from));
        assert_eq!(attr(rule, "referenced_security_group_id"), Some(to));
        assert_eq!(attr(rule, "from_port"), Some("local.worker_metrics_port"));
        assert_eq!(attr(rule, "to_port"), Some("local.worker_metrics_port"));
    }
    // The gateway accepts the entry.
    use clap::Parser;
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: tally_gateway::GatewayArgs,
    }
    let args = Wrapper::try_parse_from([
        "x",
        "--auth-secret",
        "0123456789abcdef0123456789abcdef",
        "--worker-metrics-urls",
        "dns+http://workers.tally.tally.internal:9464/metrics",
    ])
    .unwrap()
    .args;
    args.auth_config().expect("a dns+http entry is valid");
}

#[test]
fn rejects_carry_the_ttl_attribute_the_table_expires_on() {
    let tables = module_text("tables");
    let ttl = block(
        resource(&tables, "aws_dynamodb_table", "this"),
        "dynamic \"ttl\"",
    );
    assert_eq!(
        attr(ttl, "for_each"),
        Some(r#"each.key == "rejects" ? ["expires_at"] : []"#)
    );
    assert_eq!(
        tally_store::dynamo::REJECT_RETENTION,
        std::time::Duration::from_secs(30 * 24 * 3600)
    );
    let readme = std::fs::read_to_string(infra().join("README.md")).unwrap();
    assert!(readme.contains("TTL on `rejects.expires_at`"));
    assert!(
        readme.contains("30 days"),
        "the README states the retention"
    );
}

/// The number after `name` on the marked line of `text`
/// (`<!-- prod-sizing -->`).
fn marked_number(text: &str, marker: &str, name: &str) -> u64 {
    let line = text
        .lines()
        .find(|line| line.contains(marker))
        .unwrap_or_else(|| panic!("a line marked {marker}"));
    let at = line
        .find(name)
        .unwrap_or_else(|| panic!("{name} on the line marked {marker}: {line}"));
    line[at + name.len()..]
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("a number after {name}: {line}"))
}

#[test]
fn prod_sizing_is_the_design_docs() {
    let prod = std::fs::read_to_string(infra().join("envs/prod/main.tf")).unwrap();
    let call = block(&prod, "module \"tally\"");
    let number = |name: &str| -> u64 {
        attr(call, name)
            .unwrap_or_else(|| panic!("prod sets {name}"))
            .parse()
            .unwrap()
    };
    let shards = number("shard_count");
    let per_worker = number("shards_per_worker");
    let workers_max = number("workers_max");
    let vcpus = number("worker_cpu") / 1024;
    let fleet = shards.div_ceil(per_worker);
    assert!(
        fleet <= workers_max,
        "the autoscaler may reach the design point"
    );
    let design =
        std::fs::read_to_string(tally_lease::testing::repo_root().join("docs/DESIGN.md")).unwrap();
    let readme = std::fs::read_to_string(infra().join("README.md")).unwrap();
    for (doc, text) in [
        ("docs/DESIGN.md", &design),
        ("infra/terraform/README.md", &readme),
    ] {
        for (name, value) in [
            ("shards:", shards),
            ("shards per worker:", per_worker),
            ("workers at the design point:", fleet),
            ("at most:", workers_max),
            ("vCPUs per worker:", vcpus),
        ] {
            assert_eq!(
                marked_number(text, "<!-- prod-sizing -->", name),
                value,
                "{doc}: {name}"
            );
        }
    }
}

fn runbooks() -> PathBuf {
    tally_lease::testing::repo_root().join("ops/runbooks")
}

/// Every `tally ...` command line a runbook names: the text of each
/// backtick span that starts with `tally `, and each ECS command override
/// (`"command":["finalize","ID"]`), as words.
fn runbook_commands() -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(runbooks()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for (index, span) in text.split('`').enumerate() {
            if index % 2 == 1 {
                if let Some(rest) = span.strip_prefix("tally ") {
                    let words = rest
                        .split_whitespace()
                        .map(|word| word.trim_matches('"').to_owned())
                        .collect();
                    found.push((name.clone(), words));
                }
            }
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find("\"command\":[") {
            let after = &rest[at + "\"command\":[".len()..];
            let end = after.find(']').expect("a closed command array");
            let words: Vec<String> = strings(&after[..end])
                .into_iter()
                .map(str::to_owned)
                .collect();
            if !words.is_empty() {
                found.push((name.clone(), words));
            }
            rest = &after[end..];
        }
        // JSON arrays written as a command on their own: ["replay", ...].
        for (index, span) in text.split('`').enumerate() {
            if index % 2 == 1 && span.starts_with("[\"") && span.ends_with(']') {
                let words = strings(span).into_iter().map(str::to_owned).collect();
                found.push((name.clone(), words));
            }
        }
    }
    found
}

/// The Terraform outputs a runbook tells the operator to read: the name in
/// each `terraform output [flags] NAME` backtick span, and each backtick
/// span followed by the word "output" (the `NAME` output), as (runbook,
/// name).
fn runbook_outputs() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(runbooks()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let runbook = path.file_name().unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = text.split('`').collect();
        for (index, span) in parts.iter().enumerate() {
            if index % 2 == 0 {
                continue;
            }
            if let Some(rest) = span.strip_prefix("terraform output") {
                let name = rest
                    .split_whitespace()
                    .find(|word| !word.starts_with('-'))
                    .unwrap_or_else(|| panic!("{runbook}: `{span}` names no output"));
                found.push((runbook.clone(), name.to_owned()));
                continue;
            }
            let after = parts.get(index + 1).copied().unwrap_or_default();
            let names_an_output = after.split_whitespace().next().is_some_and(|word| {
                word.trim_end_matches(|c: char| !c.is_ascii_alphabetic()) == "output"
            });
            if names_an_output && after.starts_with(char::is_whitespace) {
                found.push((runbook.clone(), (*span).to_owned()));
            }
        }
    }
    found
}

/// Every output a runbook names is one of every environment root (the
/// module's own outputs are not visible to `terraform output` there), and
/// the one-off run settings are what modules/service makes.
#[test]
fn every_output_a_runbook_names_is_an_output_of_every_environment() {
    let outputs = runbook_outputs();
    assert!(!outputs.is_empty(), "the scan finds the runbooks' outputs");
    let tally = module_text("tally");
    let mut envs: Vec<PathBuf> = std::fs::read_dir(infra().join("envs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    envs.sort();
    assert!(envs.len() >= 2, "{envs:?}");
    let mut missing = Vec::new();
    for env in &envs {
        let mut files = Vec::new();
        terraform_files(env, &mut files);
        let text = files
            .iter()
            .map(|file| std::fs::read_to_string(file).unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        for (runbook, name) in &outputs {
            let found = blocks(&text, &format!("output \"{name}\""));
            let value = found.first().and_then(|body| attr(body, "value"));
            if value != Some(format!("module.tally.{name}").as_str()) {
                missing.push(format!(
                    "{runbook} names the `{name}` output, which {} does not give as module.tally.{name}",
                    env.display()
                ));
            }
            if blocks(&tally, &format!("output \"{name}\"")).len() != 1 {
                missing.push(format!("{runbook}: modules/tally has no output {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    assert!(
        outputs.iter().any(|(_, name)| name == "one_off_run"),
        "the runbooks name the one_off_run output: {outputs:?}"
    );
    // What one_off_run holds: the fields the runbooks name, from
    // modules/service's outputs.
    let one_off_run = squeeze(&without_comments(block(&tally, "output \"one_off_run\"")));
    let service = module_text("service");
    for field in [
        "cluster = module.service.cluster_name",
        "finalizer = module.service.finalizer_task_definition",
        "replay = module.service.replay_task_definition",
        "security_groups = [module.service.worker_security_group_id]",
        "subnets = var.private_subnet_ids",
    ] {
        assert!(one_off_run.contains(field), "one_off_run has {field}");
        if let Some(output) = field.split("module.service.").nth(1) {
            let output = output.trim_end_matches(']');
            assert_eq!(
                blocks(&service, &format!("output \"{output}\"")).len(),
                1,
                "modules/service has the output {output}"
            );
        }
    }
    assert!(one_off_run.contains("task_definitions = {"));
}

/// A one-off run a runbook spells out: `aws ecs run-task --cluster <app>
/// --task-definition <app>-finalizer ... --overrides
/// '{"containerOverrides":[{"name":"finalizer","command":["finalize","ID"]}]}'`.
#[derive(Debug)]
struct TaskRun {
    runbook: String,
    cluster: String,
    task_definition: String,
    container: String,
    /// The command override as written between its brackets (`...` for
    /// one the text gives elsewhere), and as words.
    command_text: String,
    command: Vec<String>,
}

/// Every `aws ecs run-task` backtick span of the runbooks.
fn runbook_task_runs() -> Vec<TaskRun> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(runbooks()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let runbook = path.file_name().unwrap().to_string_lossy().into_owned();
        for (index, span) in text.split('`').enumerate() {
            if index % 2 == 0 || !span.starts_with("aws ecs run-task ") {
                continue;
            }
            let words: Vec<&str> = span.split_whitespace().collect();
            let value = |flag: &str| -> String {
                words
                    .iter()
                    .position(|word| *word == flag)
                    .and_then(|at| words.get(at + 1))
                    .unwrap_or_else(|| panic!("{runbook}: no {flag} in `{span}`"))
                    .to_string()
            };
            let between = |text: &str, open: &str, close: char| -> String {
                let (_, rest) = text
                    .split_once(open)
                    .unwrap_or_else(|| panic!("{runbook}: no {open} in `{span}`"));
                rest.split(close).next().unwrap().to_owned()
            };
            let overrides = between(span, "--overrides '", '\'');
            let command_text = between(&overrides, "\"command\":[", ']');
            found.push(TaskRun {
                runbook: runbook.clone(),
                cluster: value("--cluster"),
                task_definition: value("--task-definition"),
                container: between(&overrides, "\"name\":\"", '"'),
                command: strings(&command_text)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                command_text,
            });
        }
    }
    found
}

/// The name of the policy document of `aws_iam_role.<role>` in `text`: its
/// one `aws_iam_role_policy`'s `data.aws_iam_policy_document.<name>.json`.
fn role_document<'a>(text: &'a str, role: &str) -> &'a str {
    let reference = format!("aws_iam_role.{role}.id");
    let policies: Vec<&str> = blocks(text, "resource \"aws_iam_role_policy\"")
        .into_iter()
        .filter(|body| attr(body, "role") == Some(reference.as_str()))
        .collect();
    assert_eq!(policies.len(), 1, "one policy of the {role} role");
    attr(policies[0], "policy")
        .and_then(|policy| policy.strip_prefix("data.aws_iam_policy_document."))
        .and_then(|policy| policy.strip_suffix(".json"))
        .unwrap_or_else(|| panic!("the {role} role's policy is a policy document"))
}

/// The role of the task definition a runbook names (`<app>-finalizer`), by
/// its `family` in modules/service, and that task's container name.
fn task_definition_role<'a>(service: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    let family = format!("\"{}\"", name.replace("<app>", "${var.app}"));
    let task = blocks(service, "resource \"aws_ecs_task_definition\"")
        .into_iter()
        .find(|body| attr(body, "family") == Some(family.as_str()))?;
    let role = attr(task, "task_role_arn")?
        .strip_prefix("aws_iam_role.")?
        .strip_suffix(".arn")?;
    // The container's name: the first `name = "..."` line (the
    // environment's entries start with `{ name =`).
    let container = task.lines().map(str::trim).find_map(|line| {
        line.strip_prefix("name")
            .and_then(|rest| rest.trim_start().strip_prefix('='))
            .map(|value| value.trim().trim_matches('"'))
    })?;
    Some((role, container))
}

/// Whether a Deny statement of the role names `action` on `kind`.
fn role_denies(statements: &[Statement], action: &str, kind: &str) -> bool {
    let wanted = elements_for(kind);
    statements.iter().any(|statement| {
        statement.effect == "Deny"
            && statement.actions.contains(action)
            && resource_elements(&statement.resources)
                .iter()
                .any(|element| wanted.contains(&element.as_str()))
    })
}

/// The subcommand path of a command line's words (`poll close`, `audit`),
/// after the global flags (each with its value) before it.
fn subcommand(words: &[String]) -> Vec<String> {
    let mut index = 0;
    while index < words.len() && words[index].starts_with("--") {
        index += if words[index].contains('=') { 1 } else { 2 };
    }
    let Some(first) = words.get(index) else {
        return Vec::new();
    };
    let mut path = vec![first.clone()];
    if first == "poll" {
        if let Some(second) = words[index + 1..].iter().find(|w| !w.starts_with("--")) {
            path.push(second.clone());
        }
    }
    path
}

/// The flags `tally <path> --help` lists.
fn help_flags(path: &[String]) -> BTreeSet<String> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "`tally {} --help` fails: it is not a command",
        path.join(" ")
    );
    // Only the option lines (`  -s, --name <VALUE>` or `      --name`), not
    // a flag named inside another's description.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim_start)
        .filter_map(|line| {
            let line = line
                .strip_prefix('-')
                .and_then(|rest| rest.split_once(", ").map(|(_, flag)| flag))
                .unwrap_or(line);
            line.strip_prefix("--")
        })
        .map(|flag| {
            let end = flag
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(flag.len());
            format!("--{}", &flag[..end])
        })
        .collect()
}

#[test]
fn every_command_a_runbook_names_exists_and_runs_in_a_task_that_may() {
    let commands = runbook_commands();
    assert!(
        commands.len() >= 10,
        "the scan finds the runbooks' commands: {commands:?}"
    );
    let mut refused = Vec::new();
    for (runbook, words) in &commands {
        let path = subcommand(words);
        let command = path.first().cloned().unwrap_or_default();
        let flags = help_flags(&path);
        for word in words {
            if let Some(flag) = word.strip_prefix("--") {
                let flag = format!("--{}", flag.split('=').next().unwrap());
                assert!(
                    flags.contains(&flag),
                    "{runbook}: `tally {}` has no flag {flag}",
                    path.join(" ")
                );
            }
        }
        // Every command a runbook names runs in a task whose role is
        // checked against what it calls.
        match role_of(&command) {
            Some(_) => assert!(
                operations::of(&command).is_some(),
                "src/operations.rs says what `tally {command}` calls"
            ),
            None => refused.push(format!(
                "{runbook} names `tally {}`, which no task on AWS may run",
                words.join(" ")
            )),
        }
    }
    // Each one-off run spelled out runs in the task definition's own
    // container on the application's cluster, and its role allows every
    // call src/operations.rs lists for the command, and denies none.
    let service = module_text("service");
    let runs = runbook_task_runs();
    assert!(runs.len() >= 3, "the scan finds the one-off runs: {runs:?}");
    assert_eq!(
        attr(resource(&service, "aws_ecs_cluster", "this"), "name"),
        Some("var.app")
    );
    for run in &runs {
        let what = format!("{}: {}", run.runbook, run.task_definition);
        assert_eq!(
            run.cluster, "<app>",
            "{what}: the cluster is named after the app"
        );
        let (role, container) = task_definition_role(&service, &run.task_definition)
            .unwrap_or_else(|| panic!("{what}: no such task definition in modules/service"));
        assert_eq!(run.container, container, "{what}: the container's name");
        if run.command_text == "..." {
            continue;
        }
        assert!(!run.command.is_empty(), "{what}: a command or [...]");
        let command = subcommand(&run.command)
            .first()
            .cloned()
            .unwrap_or_default();
        let calls = operations::of(&command)
            .unwrap_or_else(|| panic!("{what}: src/operations.rs has no `tally {command}`"));
        let statements = statements(&service, role_document(&service, role));
        for (action, kind) in calls {
            let verdict = if role_denies(&statements, action, kind) {
                "denies"
            } else if role_allows(&statements, action, kind) {
                continue;
            } else {
                "does not allow"
            };
            refused.push(format!(
                "{what} runs `tally {}`, which calls {action} on the {kind}: the {role} role {verdict} it",
                run.command.join(" ")
            ));
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

/// The text of `runbook` from `start` up to `end`.
fn runbook_section(runbook: &str, start: &str, end: &str) -> String {
    let text = std::fs::read_to_string(runbooks().join(runbook)).unwrap();
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{runbook} has {start:?}"));
    let to = text[from..]
        .find(end)
        .map(|at| from + at)
        .unwrap_or_else(|| panic!("{runbook} has {end:?} after {start:?}"));
    text[from..to].to_owned()
}

/// restore.md replays the stream from T, so T must be within the stream's
/// retention as Terraform sets it; the workers must have stopped before
/// the restore; polls changed after T are copied into the restored polls
/// table before the replay, and none is changed until the switch.
#[test]
fn the_restore_runbook_keeps_to_the_streams_retention_and_the_polls() {
    let stream = module_text("stream");
    let retention = attr(block(&stream, "variable \"retention_hours\""), "default")
        .expect("a default retention");
    let tally = module_text("tally");
    assert_eq!(
        attr(block(&tally, "module \"stream\""), "retention_hours"),
        None,
        "modules/tally leaves the retention at modules/stream's default"
    );
    let choose = squeeze(&runbook_section("restore.md", "1. Choose", "\n2. "));
    assert!(
        choose.contains(&format!(
            "T must be within the stream's retention ({retention} hours"
        )),
        "step 1 says T must be within the stream's {retention} hours: {choose}"
    );
    let replay = squeeze(&runbook_section("restore.md", "\n4. ", "\n5. "));
    assert!(
        replay.contains(&format!("({retention} hours' retention)")),
        "{replay}"
    );
    let stop = squeeze(&runbook_section("restore.md", "\n2. ", "\n3. "));
    assert!(
        stop.contains("`aws ecs describe-services --cluster <app> --services worker --query 'services[0].runningCount'` must print 0"),
        "step 2 waits until no worker runs: {stop}"
    );
    let service = module_text("service");
    assert_eq!(
        attr(resource(&service, "aws_ecs_service", "worker"), "name"),
        Some("\"worker\"")
    );
    let restore = squeeze(&runbook_section("restore.md", "\n3. ", "\n4. "));
    for needed in [
        "aws dynamodb scan --table-name <app>-polls",
        "aws dynamodb put-item --table-name <app>-restored-1-polls",
        "change no poll",
    ] {
        assert!(
            restore.contains(needed),
            "step 3 copies the current polls into the restored table before the replay, and none changes until the switch: no {needed:?} in {restore}"
        );
    }
}

/// scale.md gives the account's default shard quotas as the Kinesis Data
/// Streams quotas page does, and says when prod's shard count needs a
/// quota increase.
#[test]
fn the_scale_runbook_gives_the_default_shard_quotas() {
    let prod = std::fs::read_to_string(infra().join("envs/prod/main.tf")).unwrap();
    let shards = attr(block(&prod, "module \"tally\""), "shard_count").expect("prod's shard count");
    let scale = squeeze(&runbook_section("scale.md", "- Reshard", "\n- Raise"));
    for needed in [
        "by default 20,000 in us-east-1, us-west-2 and eu-west-1, 1,000 or 6,000 in other regions",
        "`aws kinesis describe-limits`",
        &format!("where prod's {shards} shards"),
        "request a quota increase",
    ] {
        assert!(scale.contains(needed), "scale.md says {needed:?}: {scale}");
    }
    assert!(!scale.contains("500 by default"), "{scale}");
}

#[test]
fn every_command_is_in_the_operations_table() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    let listed: BTreeSet<String> = help
        .split("Commands:")
        .nth(1)
        .expect("a command list")
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    let table: BTreeSet<String> = operations::OPERATIONS
        .iter()
        .map(|(command, _)| (*command).to_owned())
        .collect();
    assert_eq!(listed, table, "one entry per subcommand of `tally`");
}
