//! Creating a DynamoDB table unless it exists, and waiting until it is
//! `ACTIVE`.
//!
//! This module owns the order of calls: `DescribeTable` first, so a table
//! that exists (on AWS, made by Terraform) is never asked to be created and
//! a role needs no `CreateTable` grant for it; `CreateTable` only when it
//! is not found, with a table created meanwhile by another process
//! (`ResourceInUseException`) taken as created; then the `DescribeTable`
//! poll that waits for `ACTIVE`. The caller builds the whole `CreateTable`
//! request (name, key schema, attributes, billing mode, indexes): this
//! module never chooses any of them, never changes an existing table, and
//! never deletes one.
//!
//! Wraps <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_CreateTable.html>
//! and <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_DescribeTable.html>.

use std::time::Duration;

use aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder;
use aws_sdk_dynamodb::types::TableStatus;
use aws_sdk_dynamodb::Client;

use crate::error::{classify, AwsError, ErrorClass};

/// How often the table's status is read while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How many times the status is read before giving up (30 s in all).
pub const POLLS: u32 = 120;

/// Why a table is not there and `ACTIVE`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// `CreateTable` or `DescribeTable` failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The table still was not `ACTIVE` after [`POLLS`] reads.
    #[error("table {table} did not become ACTIVE in {} s", waited.as_secs())]
    NotActive { table: String, waited: Duration },
}

/// Reads the table; when it is not found, sends `request` (a
/// `CreateTable` of `client`'s, fully built by the caller) and takes a
/// table created meanwhile (`ResourceInUseException`) as created; then
/// reads the table's status every [`POLL_INTERVAL`] until it is `ACTIVE`.
/// `on_request` is called before each request, for the caller's request
/// count.
pub async fn ensure_table<F>(
    client: &Client,
    request: CreateTableFluentBuilder,
    on_request: F,
) -> Result<(), TableError>
where
    F: Fn(),
{
    let table = request.get_table_name().clone().unwrap_or_default();
    on_request();
    match client.describe_table().table_name(&table).send().await {
        Ok(described) => {
            if described.table().and_then(|table| table.table_status())
                == Some(&TableStatus::Active)
            {
                return Ok(());
            }
        }
        Err(error) if classify(&error) == ErrorClass::NotFound => {
            on_request();
            match request.send().await {
                Ok(_) => {}
                Err(error) if classify(&error) == ErrorClass::InUse => {}
                Err(error) => return Err(AwsError::from_sdk(&error).into()),
            }
        }
        Err(error) => return Err(AwsError::from_sdk(&error).into()),
    }
    for _ in 0..POLLS {
        on_request();
        let described = client
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .map_err(|error| AwsError::from_sdk(&error))?;
        if described.table().and_then(|table| table.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Err(TableError::NotActive {
        table,
        waited: POLL_INTERVAL * POLLS,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    use aws_smithy_runtime_api::client::http::{
        http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
    };
    use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::retry::RetryConfig;

    use super::*;

    /// Answers requests from a script, in order, and records each
    /// request's operation (its `X-Amz-Target`).
    #[derive(Clone, Debug, Default)]
    struct Scripted {
        answers: Arc<Mutex<VecDeque<(u16, &'static str)>>>,
        calls: Arc<Mutex<Vec<String>>>,
    }

    impl HttpConnector for Scripted {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            let target = request.headers().get("x-amz-target").unwrap_or("?");
            self.calls
                .lock()
                .expect("lock")
                .push(target.trim_start_matches("DynamoDB_20120810.").to_owned());
            let (status, body) = self
                .answers
                .lock()
                .expect("lock")
                .pop_front()
                .expect("a scripted answer");
            HttpConnectorFuture::ready(Ok(HttpResponse::new(
                StatusCode::try_from(status).expect("status"),
                SdkBody::from(body),
            )))
        }
    }

    fn client(script: &[(u16, &'static str)]) -> (Client, Scripted) {
        let scripted = Scripted::default();
        scripted.answers.lock().expect("lock").extend(script);
        let connector = SharedHttpConnector::new(scripted.clone());
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("id", "secret", None, None, "test"))
            .endpoint_url("http://localhost:1")
            .retry_config(RetryConfig::disabled())
            .http_client(http_client_fn(move |_, _| connector.clone()))
            .build();
        (Client::from_conf(config), scripted)
    }

    fn request(client: &Client) -> CreateTableFluentBuilder {
        client
            .create_table()
            .table_name("polls")
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("poll_id")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("key"),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("poll_id")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attribute"),
            )
    }

    const CREATING: &str = r#"{"Table":{"TableName":"polls","TableStatus":"CREATING"}}"#;
    const ACTIVE: &str = r#"{"Table":{"TableName":"polls","TableStatus":"ACTIVE"}}"#;
    const IN_USE: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceInUseException","message":"Table already exists: polls"}"#;
    const DENIED: &str =
        r#"{"__type":"com.amazon.coral.service#AccessDeniedException","message":"no"}"#;
    const MISSING: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","message":"Requested resource not found"}"#;

    #[tokio::test(start_paused = true)]
    async fn creates_then_waits_until_active() {
        let (client, scripted) = client(&[
            (400, MISSING),
            (200, CREATING),
            (200, CREATING),
            (200, ACTIVE),
        ]);
        let requests = AtomicU32::new(0);
        ensure_table(&client, request(&client), || {
            requests.fetch_add(1, Ordering::Relaxed);
        })
        .await
        .expect("active");
        assert_eq!(
            *scripted.calls.lock().expect("lock"),
            [
                "DescribeTable",
                "CreateTable",
                "DescribeTable",
                "DescribeTable"
            ]
        );
        assert_eq!(requests.load(Ordering::Relaxed), 4);
    }

    /// A table that is there is never asked to be created: a role that may
    /// not create it starts all the same.
    #[tokio::test(start_paused = true)]
    async fn an_existing_table_is_only_read() {
        let (client, scripted) = client(&[(200, ACTIVE)]);
        ensure_table(&client, request(&client), || {})
            .await
            .expect("active");
        assert_eq!(*scripted.calls.lock().expect("lock"), ["DescribeTable"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_still_being_made_is_waited_for() {
        let (client, scripted) = client(&[(200, CREATING), (200, ACTIVE)]);
        ensure_table(&client, request(&client), || {})
            .await
            .expect("active");
        assert_eq!(
            *scripted.calls.lock().expect("lock"),
            ["DescribeTable", "DescribeTable"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_created_meanwhile_by_another_is_waited_for() {
        let (client, scripted) = client(&[(400, MISSING), (400, IN_USE), (200, ACTIVE)]);
        ensure_table(&client, request(&client), || {})
            .await
            .expect("active");
        assert_eq!(
            *scripted.calls.lock().expect("lock"),
            ["DescribeTable", "CreateTable", "DescribeTable"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_read_is_classified_and_nothing_is_created() {
        let (client, scripted) = client(&[(400, DENIED)]);
        let error = ensure_table(&client, request(&client), || {})
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, TableError::Aws(aws) if aws.class == ErrorClass::Other),
            "{error:?}"
        );
        assert_eq!(*scripted.calls.lock().expect("lock"), ["DescribeTable"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_creation_is_classified() {
        let (client, scripted) = client(&[(400, MISSING), (400, DENIED)]);
        let error = ensure_table(&client, request(&client), || {})
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, TableError::Aws(aws) if aws.class == ErrorClass::Other),
            "{error:?}"
        );
        assert_eq!(
            *scripted.calls.lock().expect("lock"),
            ["DescribeTable", "CreateTable"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_that_vanishes_is_not_found() {
        let (client, _) = client(&[(400, MISSING), (400, IN_USE), (400, MISSING)]);
        let error = ensure_table(&client, request(&client), || {})
            .await
            .expect_err("gone");
        assert!(
            matches!(&error, TableError::Aws(aws) if aws.class == ErrorClass::NotFound),
            "{error:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_30_seconds() {
        let script = vec![(200, CREATING); 1 + POLLS as usize];
        let (client, scripted) = client(&script);
        let error = ensure_table(&client, request(&client), || {})
            .await
            .expect_err("never active");
        assert_eq!(
            error.to_string(),
            "table polls did not become ACTIVE in 30 s"
        );
        assert_eq!(
            scripted.calls.lock().expect("lock").len(),
            1 + POLLS as usize
        );
    }
}
