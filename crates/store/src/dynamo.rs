//! The vote tables in DynamoDB.
//!
//! Wraps <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_PutItem.html>
//! (conditional vote puts, rejects, polls),
//! <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>
//! (commits), `GetItem`, `BatchGetItem`, `UpdateItem`, `Query`, `Scan` and
//! `CreateTable`.
//!
//! Item layouts:
//! - `polls`: `poll_id` (hash key), `question`, `options` (list of
//!   `{id, label}`), `opens_at` / `closes_at` (ms, optional), `status`,
//!   `counter_shards`, `created_at`.
//! - `votes`: `voter_id` (hash key) and `poll_id` (range key): spread over
//!   voters, never hot; `option`, `vote_id`, `origin` (`shard/seq/sub`),
//!   `arrival_ms`.
//! - `tallies`: `counter_id` (`<poll>#<nnn>`, hash key), `poll_id`, and one
//!   number attribute per option, `opt_<option>`.
//! - `rejects`: `position` (`shard/seq/sub`, hash key), `reason`, `detail`,
//!   `raw` (binary, truncated), `raw_len`, `partition_key`, `arrival_ms`,
//!   `expires_at` (epoch seconds, [`REJECT_RETENTION`] after the arrival:
//!   the table's TTL attribute), and `poll_id` / `voter_id` / `vote_id`
//!   when known; the sparse index
//!   `voter-index` (`voter_id`, `poll_id`) answers `tally vote-status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BatchStatementRequest, BillingMode, ConsumedCapacity,
    GlobalSecondaryIndex, KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType,
    ReturnConsumedCapacity, ScalarAttributeType, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use tally_aws::table::TableError;
use tally_aws::{classify_cancellation, classify_code, AwsError, ErrorClass};
use tally_lease::store::dynamo::checkpoint_update;
use tally_lease::store::Expect;
use tally_lease::{DynamoStore, LeaseStore};

use super::{
    counter_keys, AuditStore, Commit, CommitOutcome, CountStore, Counts, Origin, PollStore,
    PutVote, RejectItem, Usage, VoteItem, VotePage, VoteReads, VoteStoreError,
};
use tally_contract::vote::Reason;
use tally_core::poll::{Poll, PollOption, PollStatus};

type Item = HashMap<String, AttributeValue>;

pub use crate::MAX_BATCH_STATEMENTS;

/// The sparse index of `rejects` by voter and poll.
pub const VOTER_INDEX: &str = "voter-index";

/// Prefix of the option counters in a `tallies` item.
pub const OPTION_PREFIX: &str = "opt_";

/// Table names.
#[derive(Clone, Debug)]
pub struct TableNames {
    pub polls: String,
    pub votes: String,
    pub tallies: String,
    pub rejects: String,
    /// The lease table the commits checkpoint in.
    pub leases: String,
}

impl TableNames {
    /// `prefix` + `polls`, `votes`, `tallies`, `rejects`.
    pub fn with_prefix(prefix: &str, leases: impl Into<String>) -> Self {
        Self {
            polls: format!("{prefix}polls"),
            votes: format!("{prefix}votes"),
            tallies: format!("{prefix}tallies"),
            rejects: format!("{prefix}rejects"),
            leases: leases.into(),
        }
    }
}

/// The vote tables in DynamoDB.
#[derive(Clone)]
pub struct DynamoVoteStore {
    client: Client,
    names: TableNames,
    leases: DynamoStore,
    requests: Arc<AtomicU64>,
    /// Write units in millionths, as reported by DynamoDB.
    write_micro_units: Arc<AtomicU64>,
}

impl DynamoVoteStore {
    pub fn new(client: Client, names: TableNames) -> Self {
        Self {
            leases: DynamoStore::new(client.clone(), names.leases.clone()),
            client,
            names,
            requests: Arc::default(),
            write_micro_units: Arc::default(),
        }
    }

    pub fn names(&self) -> &TableNames {
        &self.names
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn consumed<'a>(&self, capacity: impl IntoIterator<Item = &'a ConsumedCapacity>) {
        let units: f64 = capacity
            .into_iter()
            .map(|consumed| {
                consumed
                    .write_capacity_units()
                    .or(consumed.capacity_units())
                    .unwrap_or(0.0)
            })
            .sum();
        self.write_micro_units
            .fetch_add((units * 1e6) as u64, Ordering::Relaxed);
    }

    async fn create_table(
        &self,
        name: &str,
        hash: &str,
        range: Option<&str>,
        index: Option<(&str, &str, &str)>,
    ) -> Result<(), VoteStoreError> {
        let key = |attribute: &str, key_type: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(attribute)
                .key_type(key_type)
                .build()
                .map_err(other)
        };
        let definition = |attribute: &str| {
            AttributeDefinition::builder()
                .attribute_name(attribute)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(other)
        };
        let mut request = self
            .client
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key(hash, KeyType::Hash)?)
            .attribute_definitions(definition(hash)?);
        if let Some(range) = range {
            request = request
                .key_schema(key(range, KeyType::Range)?)
                .attribute_definitions(definition(range)?);
        }
        if let Some((index_name, index_hash, index_range)) = index {
            let mut defined: Vec<&str> = vec![hash];
            defined.extend(range);
            for attribute in [index_hash, index_range] {
                if !defined.contains(&attribute) {
                    request = request.attribute_definitions(definition(attribute)?);
                    defined.push(attribute);
                }
            }
            request = request.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(index_name)
                    .key_schema(key(index_hash, KeyType::Hash)?)
                    .key_schema(key(index_range, KeyType::Range)?)
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(other)?,
            );
        }
        tally_aws::table::ensure_table(&self.client, request, || self.count())
            .await
            .map_err(|error| match error {
                TableError::Aws(error) => vote_error(error),
                TableError::NotActive { .. } => VoteStoreError::Other(error.to_string()),
            })
    }

    fn counter_update(
        &self,
        key: &tally_core::count::CounterKey,
        options: &std::collections::BTreeMap<String, u64>,
    ) -> Result<Update, VoteStoreError> {
        let mut names = HashMap::from([("#poll".to_owned(), "poll_id".to_owned())]);
        let mut values =
            HashMap::from([(":poll".to_owned(), AttributeValue::S(key.poll_id.clone()))]);
        let mut adds = Vec::new();
        for (index, (option, count)) in options.iter().enumerate() {
            names.insert(format!("#o{index}"), format!("{OPTION_PREFIX}{option}"));
            values.insert(format!(":d{index}"), AttributeValue::N(count.to_string()));
            adds.push(format!("#o{index} :d{index}"));
        }
        Update::builder()
            .table_name(&self.names.tallies)
            .key("counter_id", AttributeValue::S(key.item_key()))
            .update_expression(format!("SET #poll = :poll ADD {}", adds.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(other)
    }

    async fn scan_all(&self, table: &str) -> Result<Vec<Item>, VoteStoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            self.count();
            let page = self
                .client
                .scan()
                .table_name(table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(classify)?;
            items.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(items);
            }
        }
    }
}

fn other(error: impl std::fmt::Display) -> VoteStoreError {
    VoteStoreError::Other(error.to_string())
}

/// Maps an SDK error to the boundary's error, through the one
/// classification of AWS errors ([`tally_aws::error`]): throttling,
/// conflicts, 5xx and timeouts are retryable; a missing table names itself.
fn classify<E>(error: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>) -> VoteStoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    vote_error(AwsError::from_sdk(&error))
}

fn vote_error(error: AwsError) -> VoteStoreError {
    let AwsError { class, message } = error;
    match class {
        ErrorClass::Throttled => VoteStoreError::Throttled(message),
        ErrorClass::Conflict => VoteStoreError::Conflict(message),
        ErrorClass::Transient => VoteStoreError::Unavailable(message),
        ErrorClass::NotFound => VoteStoreError::TableMissing(message),
        ErrorClass::ConditionFailed
        | ErrorClass::InUse
        | ErrorClass::ExpiredIterator
        | ErrorClass::TokenReused
        | ErrorClass::Other => VoteStoreError::Other(message),
    }
}

fn is_condition_failure<E: ProvideErrorMetadata>(
    error: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> bool {
    tally_aws::classify(error) == ErrorClass::ConditionFailed
}

fn s(text: impl Into<String>) -> AttributeValue {
    AttributeValue::S(text.into())
}

fn n(number: impl ToString) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

struct Fields<'a> {
    item: &'a Item,
    key: String,
}

impl Fields<'_> {
    fn malformed(&self, reason: String) -> VoteStoreError {
        VoteStoreError::Malformed {
            key: self.key.clone(),
            reason,
        }
    }
    fn string(&self, name: &str) -> Result<String, VoteStoreError> {
        self.optional_string(name)?
            .ok_or_else(|| self.malformed(format!("{name} is missing")))
    }
    fn optional_string(&self, name: &str) -> Result<Option<String>, VoteStoreError> {
        match self.item.get(name) {
            None => Ok(None),
            Some(AttributeValue::S(text)) => Ok(Some(text.clone())),
            Some(_) => Err(self.malformed(format!("{name} is not a string"))),
        }
    }
    fn optional_number(&self, name: &str) -> Result<Option<i64>, VoteStoreError> {
        match self.item.get(name) {
            None => Ok(None),
            Some(AttributeValue::N(text)) => text
                .parse()
                .map(Some)
                .map_err(|_| self.malformed(format!("{name} is not an integer"))),
            Some(_) => Err(self.malformed(format!("{name} is not a number"))),
        }
    }
    fn number(&self, name: &str) -> Result<i64, VoteStoreError> {
        self.optional_number(name)?
            .ok_or_else(|| self.malformed(format!("{name} is missing")))
    }
}

fn poll_item(poll: &Poll) -> Item {
    let mut item = HashMap::from([
        ("poll_id".to_owned(), s(&poll.id)),
        ("question".to_owned(), s(&poll.question)),
        (
            "options".to_owned(),
            AttributeValue::L(
                poll.options
                    .iter()
                    .map(|option| {
                        AttributeValue::M(HashMap::from([
                            ("id".to_owned(), s(&option.id)),
                            ("label".to_owned(), s(&option.label)),
                        ]))
                    })
                    .collect(),
            ),
        ),
        ("status".to_owned(), s(poll.status.as_str())),
        ("counter_shards".to_owned(), n(poll.counter_shards)),
        ("created_at".to_owned(), n(poll.created_at)),
    ]);
    if let Some(opens) = poll.opens_at {
        item.insert("opens_at".into(), n(opens));
    }
    if let Some(closes) = poll.closes_at {
        item.insert("closes_at".into(), n(closes));
    }
    item
}

fn poll_from_item(item: &Item) -> Result<Poll, VoteStoreError> {
    let key = match item.get("poll_id") {
        Some(AttributeValue::S(id)) => id.clone(),
        _ => "(no poll_id)".into(),
    };
    let fields = Fields { item, key };
    let status_text = fields.string("status")?;
    let status = PollStatus::parse(&status_text)
        .ok_or_else(|| fields.malformed(format!("unknown status {status_text:?}")))?;
    let options = match item.get("options") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .map(|entry| match entry {
                AttributeValue::M(map) => {
                    let option = Fields {
                        item: map,
                        key: fields.key.clone(),
                    };
                    Ok(PollOption {
                        id: option.string("id")?,
                        label: option.string("label")?,
                    })
                }
                _ => Err(fields.malformed("an option is not a map".into())),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(fields.malformed("options is missing".into())),
    };
    let counter_shards = fields.number("counter_shards")?;
    Ok(Poll {
        id: fields.string("poll_id")?,
        question: fields.string("question")?,
        options,
        opens_at: fields.optional_number("opens_at")?,
        closes_at: fields.optional_number("closes_at")?,
        status,
        counter_shards: u32::try_from(counter_shards)
            .ok()
            .filter(|shards| *shards > 0)
            .ok_or_else(|| fields.malformed(format!("counter_shards {counter_shards}")))?,
        created_at: fields.optional_number("created_at")?.unwrap_or(0),
    })
}

fn vote_from_item(item: &Item) -> Result<VoteItem, VoteStoreError> {
    let fields = Fields {
        item,
        key: format!("{:?}/{:?}", item.get("voter_id"), item.get("poll_id")),
    };
    let origin_text = fields.string("origin")?;
    Ok(VoteItem {
        poll_id: fields.string("poll_id")?,
        voter_id: fields.string("voter_id")?,
        option: fields.string("option")?,
        vote_id: fields.string("vote_id")?,
        origin: Origin::parse(&origin_text)
            .ok_or_else(|| fields.malformed(format!("origin {origin_text:?}")))?,
        arrival_ms: fields.number("arrival_ms")?,
    })
}

/// How long a reject is kept: DynamoDB's TTL deletes a `rejects` item
/// after its `expires_at` (epoch seconds), this long after the record
/// arrived.
pub const REJECT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A reject's item, expiring [`REJECT_RETENTION`] after its arrival (or
/// after `now_ms` when the arrival is unknown).
fn reject_item(reject: &RejectItem, now_ms: i64) -> Item {
    let mut item = HashMap::from([
        ("position".to_owned(), s(reject.origin.key())),
        ("reason".to_owned(), s(reject.reason.as_str())),
        ("detail".to_owned(), s(&reject.detail)),
        (
            "raw".to_owned(),
            AttributeValue::B(aws_smithy_types::Blob::new(reject.raw.clone())),
        ),
        ("raw_len".to_owned(), n(reject.raw_len)),
        ("partition_key".to_owned(), s(&reject.partition_key)),
        ("arrival_ms".to_owned(), n(reject.arrival_ms)),
    ]);
    for (name, value) in [
        ("poll_id", &reject.poll_id),
        ("voter_id", &reject.voter_id),
        ("vote_id", &reject.vote_id),
    ] {
        if let Some(value) = value {
            item.insert(name.to_owned(), s(value));
        }
    }
    let since_ms = if reject.arrival_ms > 0 {
        reject.arrival_ms
    } else {
        now_ms
    };
    let expires_at = since_ms / 1000 + REJECT_RETENTION.as_secs() as i64;
    item.insert("expires_at".to_owned(), n(expires_at));
    item
}

fn reject_from_item(item: &Item) -> Result<RejectItem, VoteStoreError> {
    let fields = Fields {
        item,
        key: format!("{:?}", item.get("position")),
    };
    let position = fields.string("position")?;
    let reason_text = fields.string("reason")?;
    Ok(RejectItem {
        origin: Origin::parse(&position)
            .ok_or_else(|| fields.malformed(format!("position {position:?}")))?,
        reason: Reason::parse(&reason_text)
            .ok_or_else(|| fields.malformed(format!("reason {reason_text:?}")))?,
        detail: fields.optional_string("detail")?.unwrap_or_default(),
        raw: match item.get("raw") {
            Some(AttributeValue::B(blob)) => blob.as_ref().to_vec(),
            _ => Vec::new(),
        },
        raw_len: fields.optional_number("raw_len")?.unwrap_or(0) as u64,
        partition_key: fields.optional_string("partition_key")?.unwrap_or_default(),
        arrival_ms: fields.optional_number("arrival_ms")?.unwrap_or(0),
        poll_id: fields.optional_string("poll_id")?,
        voter_id: fields.optional_string("voter_id")?,
        vote_id: fields.optional_string("vote_id")?,
    })
}

#[async_trait]
impl PollStore for DynamoVoteStore {
    async fn ensure_tables(&self) -> Result<(), VoteStoreError> {
        self.create_table(&self.names.polls, "poll_id", None, None)
            .await?;
        self.create_table(&self.names.votes, "voter_id", Some("poll_id"), None)
            .await?;
        self.create_table(&self.names.tallies, "counter_id", None, None)
            .await?;
        self.create_table(
            &self.names.rejects,
            "position",
            None,
            Some((VOTER_INDEX, "voter_id", "poll_id")),
        )
        .await?;
        self.leases
            .ensure_table()
            .await
            .map_err(|error| VoteStoreError::Other(error.to_string()))
    }

    async fn create_poll(&self, poll: &Poll) -> Result<bool, VoteStoreError> {
        self.count();
        let put = self
            .client
            .put_item()
            .table_name(&self.names.polls)
            .set_item(Some(poll_item(poll)))
            .condition_expression("attribute_not_exists(poll_id)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(classify(error)),
        }
    }

    async fn update_poll(&self, poll: &Poll, expected: PollStatus) -> Result<bool, VoteStoreError> {
        self.count();
        let mut set = vec!["#status = :status"];
        let mut remove = vec![];
        let mut values = HashMap::from([
            (":status".to_owned(), s(poll.status.as_str())),
            (":expected".to_owned(), s(expected.as_str())),
        ]);
        match poll.opens_at {
            Some(opens) => {
                set.push("opens_at = :opens");
                values.insert(":opens".into(), n(opens));
            }
            None => remove.push("opens_at"),
        }
        match poll.closes_at {
            Some(closes) => {
                set.push("closes_at = :closes");
                values.insert(":closes".into(), n(closes));
            }
            None => remove.push("closes_at"),
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let updated = self
            .client
            .update_item()
            .table_name(&self.names.polls)
            .key("poll_id", s(&poll.id))
            .update_expression(expression)
            .condition_expression("#status = :expected")
            .expression_attribute_names("#status", "status")
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match updated {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(classify(error)),
        }
    }

    async fn get_poll(&self, id: &str) -> Result<Option<Poll>, VoteStoreError> {
        self.poll_item(id)
            .await?
            .as_ref()
            .map(poll_from_item)
            .transpose()
    }

    async fn list_polls(&self) -> Result<Vec<Poll>, VoteStoreError> {
        let mut polls = self
            .scan_all(&self.names.polls)
            .await?
            .iter()
            .map(poll_from_item)
            .collect::<Result<Vec<_>, _>>()?;
        polls.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(polls)
    }
}

#[async_trait]
impl CountStore for DynamoVoteStore {
    async fn put_vote(&self, vote: &VoteItem) -> Result<PutVote, VoteStoreError> {
        self.count();
        let put = self
            .client
            .put_item()
            .table_name(&self.names.votes)
            .item("voter_id", s(&vote.voter_id))
            .item("poll_id", s(&vote.poll_id))
            .item("option", s(&vote.option))
            .item("vote_id", s(&vote.vote_id))
            .item("origin", s(vote.origin.key()))
            .item("arrival_ms", n(vote.arrival_ms))
            // No vote yet for this (voter, poll), or this very record's.
            .condition_expression("attribute_not_exists(voter_id) OR origin = :origin")
            .expression_attribute_values(":origin", s(vote.origin.key()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match put {
            Ok(output) => {
                self.consumed(output.consumed_capacity());
                Ok(PutVote::Counted)
            }
            Err(error) if is_condition_failure(&error) => Ok(PutVote::Duplicate),
            Err(error) => Err(classify(error)),
        }
    }

    /// `BatchExecuteStatement`: one PartiQL `INSERT` per vote, 25 to a
    /// request, each succeeding or failing on its own. An `INSERT` of a key
    /// that exists fails with `DuplicateItem`; one consistent `BatchGetItem`
    /// then tells a replay of this very record (its origin is stored:
    /// `Counted`) from another vote (`Duplicate`), the same rule as the
    /// conditional put. A statement that fails otherwise (throttled, a 5xx
    /// code inside the 200) is that vote's error, for the caller to resend
    /// alone; a 200 never means that every statement succeeded. AWS refuses
    /// a request that names one key twice (ministack does not): it is
    /// refused here before it is sent, as the memory store refuses it.
    async fn put_votes(
        &self,
        votes: &[VoteItem],
    ) -> Result<Vec<Result<PutVote, VoteStoreError>>, VoteStoreError> {
        crate::distinct_vote_keys(votes)?;
        let statement = format!(
            "INSERT INTO \"{}\" VALUE {{'voter_id': ?, 'poll_id': ?, 'option': ?, 'vote_id': ?, 'origin': ?, 'arrival_ms': ?}}",
            self.names.votes
        );
        let mut outcomes = Vec::with_capacity(votes.len());
        for chunk in votes.chunks(MAX_BATCH_STATEMENTS) {
            let statements = chunk
                .iter()
                .map(|vote| {
                    BatchStatementRequest::builder()
                        .statement(&statement)
                        .set_parameters(Some(vec![
                            s(&vote.voter_id),
                            s(&vote.poll_id),
                            s(&vote.option),
                            s(&vote.vote_id),
                            s(vote.origin.key()),
                            n(vote.arrival_ms),
                        ]))
                        .build()
                        .map_err(other)
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.count();
            let output = self
                .client
                .batch_execute_statement()
                .set_statements(Some(statements))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(classify)?;
            self.consumed(output.consumed_capacity());
            let responses = output.responses();
            if responses.len() != chunk.len() {
                return Err(VoteStoreError::Unavailable(format!(
                    "BatchExecuteStatement answered {} of {} statements",
                    responses.len(),
                    chunk.len()
                )));
            }
            let mut refused = Vec::new();
            let first = outcomes.len();
            for (at, response) in responses.iter().enumerate() {
                let outcome = match response.error() {
                    None => Ok(PutVote::Counted),
                    Some(error) => {
                        let code = error.code().map(|code| code.as_str()).unwrap_or_default();
                        if matches!(code, "DuplicateItem" | "ConditionalCheckFailed") {
                            refused.push(at);
                            Ok(PutVote::Duplicate)
                        } else {
                            Err(vote_error(AwsError {
                                class: classify_code(code),
                                message: format!(
                                    "{code}: {}",
                                    error.message().unwrap_or("a statement failed")
                                ),
                            }))
                        }
                    }
                };
                outcomes.push(outcome);
            }
            if refused.is_empty() {
                continue;
            }
            // Refused: a replay of this record, or another vote?
            let keys = refused
                .iter()
                .map(|at| {
                    let vote = &chunk[*at];
                    HashMap::from([
                        ("voter_id".to_owned(), s(&vote.voter_id)),
                        ("poll_id".to_owned(), s(&vote.poll_id)),
                    ])
                })
                .collect();
            let stored: HashMap<(String, String), String> = self
                .batch_get(&self.names.votes, keys)
                .await?
                .iter()
                .filter_map(|item| {
                    let text = |name: &str| match item.get(name) {
                        Some(AttributeValue::S(text)) => Some(text.clone()),
                        _ => None,
                    };
                    Some(((text("voter_id")?, text("poll_id")?), text("origin")?))
                })
                .collect();
            for at in refused {
                let vote = &chunk[at];
                outcomes[first + at] =
                    match stored.get(&(vote.voter_id.clone(), vote.poll_id.clone())) {
                        Some(origin) if *origin == vote.origin.key() => Ok(PutVote::Counted),
                        Some(_) => Ok(PutVote::Duplicate),
                        None => Err(VoteStoreError::Unavailable(format!(
                            "the vote of {} in {} was refused as a duplicate and is not there",
                            vote.voter_id, vote.poll_id
                        ))),
                    };
            }
        }
        Ok(outcomes)
    }

    async fn put_reject(&self, reject: &RejectItem) -> Result<(), VoteStoreError> {
        let item = reject_item(reject, tally_contract::time::now_millis());
        self.count();
        let output = self
            .client
            .put_item()
            .table_name(&self.names.rejects)
            .set_item(Some(item))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(classify)?;
        self.consumed(output.consumed_capacity());
        Ok(())
    }

    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome, VoteStoreError> {
        // The token names the tables too: two applications reading the same
        // stream (other prefixes) make the same commits with other tables,
        // and DynamoDB keeps tokens per account, not per table.
        let scoped = salted_token(
            &format!(
                "{}/{}/{}",
                commit.token, self.names.leases, self.names.tallies
            ),
            0,
        );
        let mut token = scoped.clone();
        for attempt in 1..=4u32 {
            match self.commit_once(commit, &token).await {
                Err(AttemptError::TokenInUse) => {
                    // The token was used by an earlier attempt of this commit.
                    // If that attempt was applied, the lease shows it; if not,
                    // a fresh token is safe: the commit is conditioned on the
                    // checkpoint it continues from, so it never applies twice.
                    if self.lost_or_applied(commit).await? == CommitOutcome::Committed {
                        return Ok(CommitOutcome::Committed);
                    }
                    token = salted_token(&scoped, attempt);
                }
                Err(AttemptError::Failed(error)) => return Err(error),
                Ok(outcome) => return Ok(outcome),
            }
        }
        Err(VoteStoreError::Unavailable(format!(
            "commit token {} kept being refused as in use",
            commit.token
        )))
    }

    fn usage(&self) -> Usage {
        Usage {
            requests: self.requests.load(Ordering::Relaxed),
            write_units: self.write_micro_units.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[async_trait]
impl VoteReads for DynamoVoteStore {
    async fn get_vote(
        &self,
        poll_id: &str,
        voter_id: &str,
    ) -> Result<Option<VoteItem>, VoteStoreError> {
        self.count();
        let got = self
            .client
            .get_item()
            .table_name(&self.names.votes)
            .key("voter_id", s(voter_id))
            .key("poll_id", s(poll_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        got.item().map(vote_from_item).transpose()
    }

    /// One consistent `BatchGetItem` per 100 keys. AWS refuses a request
    /// that names one key twice: repeated keys are asked for once.
    async fn get_votes(
        &self,
        keys: &[(String, String)],
    ) -> Result<Vec<crate::VoteRead>, VoteStoreError> {
        let mut distinct: Vec<&(String, String)> = keys.iter().collect();
        distinct.sort();
        distinct.dedup();
        let items = distinct
            .iter()
            .map(|(poll_id, voter_id)| {
                HashMap::from([
                    ("voter_id".to_owned(), s(voter_id)),
                    ("poll_id".to_owned(), s(poll_id)),
                ])
            })
            .collect();
        // The key attributes are always strings (the table's key schema);
        // a malformed item is its own key's error, not the batch's.
        let mut found: HashMap<(String, String), crate::VoteRead> = HashMap::new();
        for item in self.batch_get(&self.names.votes, items).await? {
            let key_of = |name: &str| match item.get(name) {
                Some(AttributeValue::S(text)) => text.clone(),
                _ => String::new(),
            };
            let key = (key_of("poll_id"), key_of("voter_id"));
            found.insert(key, vote_from_item(&item).map(Some));
        }
        Ok(keys
            .iter()
            .map(|key| found.get(key).cloned().unwrap_or(Ok(None)))
            .collect())
    }

    async fn rejects_of(
        &self,
        poll_id: &str,
        voter_id: &str,
    ) -> Result<Vec<RejectItem>, VoteStoreError> {
        let mut rejects = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            self.count();
            let page = self
                .client
                .query()
                .table_name(&self.names.rejects)
                .index_name(VOTER_INDEX)
                .key_condition_expression("voter_id = :voter AND poll_id = :poll")
                .expression_attribute_values(":voter", s(voter_id))
                .expression_attribute_values(":poll", s(poll_id))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(classify)?;
            for item in page.items() {
                rejects.push(reject_from_item(item)?);
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        rejects.sort_by(|a, b| a.origin.cmp(&b.origin));
        Ok(rejects)
    }

    async fn counts(&self, poll: &Poll) -> Result<Counts, VoteStoreError> {
        let mut counts = Counts::default();
        for option in &poll.options {
            counts.by_option.insert(option.id.clone(), 0);
        }
        let keys: Vec<Item> = counter_keys(poll)
            .iter()
            .map(|key| HashMap::from([("counter_id".to_owned(), s(key.item_key()))]))
            .collect();
        for item in self.batch_get(&self.names.tallies, keys).await? {
            for (name, value) in &item {
                if let (Some(option), AttributeValue::N(number)) =
                    (name.strip_prefix(OPTION_PREFIX), value)
                {
                    let number: u64 = number.parse().map_err(|_| VoteStoreError::Malformed {
                        key: format!("{:?}", item.get("counter_id")),
                        reason: format!("{name} is not a count"),
                    })?;
                    *counts.by_option.entry(option.to_owned()).or_default() += number;
                }
            }
        }
        Ok(counts)
    }
}

#[async_trait]
impl AuditStore for DynamoVoteStore {
    async fn scan_votes_page(
        &self,
        poll_id: &str,
        segment: u32,
        segments: u32,
        start: Option<String>,
    ) -> Result<VotePage, VoteStoreError> {
        let start_key = match start {
            None => None,
            Some(text) => {
                let (voter, poll) = text
                    .split_once('\u{0}')
                    .ok_or_else(|| VoteStoreError::Other(format!("bad scan position {text:?}")))?;
                Some(HashMap::from([
                    ("voter_id".to_owned(), s(voter)),
                    ("poll_id".to_owned(), s(poll)),
                ]))
            }
        };
        self.count();
        let page = self
            .client
            .scan()
            .table_name(&self.names.votes)
            .segment(segment as i32)
            .total_segments(segments as i32)
            .filter_expression("poll_id = :poll")
            .expression_attribute_values(":poll", s(poll_id))
            .set_exclusive_start_key(start_key)
            .send()
            .await
            .map_err(classify)?;
        let votes = page
            .items()
            .iter()
            .map(vote_from_item)
            .collect::<Result<Vec<_>, _>>()?;
        let next = page.last_evaluated_key().map(|key| {
            let text = |name: &str| match key.get(name) {
                Some(AttributeValue::S(text)) => text.clone(),
                _ => String::new(),
            };
            format!("{}\u{0}{}", text("voter_id"), text("poll_id"))
        });
        Ok(VotePage {
            votes,
            scanned: page.scanned_count().max(0) as u64,
            next,
        })
    }

    async fn finalize_poll(&self, poll_id: &str, audit: &str) -> Result<bool, VoteStoreError> {
        self.count();
        let updated = self
            .client
            .update_item()
            .table_name(&self.names.polls)
            .key("poll_id", s(poll_id))
            .update_expression("SET #status = :final, final_audit = :audit REMOVE audit_mismatch")
            .condition_expression("#status = :closed")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":final", s(PollStatus::Final.as_str()))
            .expression_attribute_values(":closed", s(PollStatus::Closed.as_str()))
            .expression_attribute_values(":audit", s(audit))
            .send()
            .await;
        match updated {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(classify(error)),
        }
    }

    async fn set_mismatch(
        &self,
        poll_id: &str,
        report: Option<&str>,
    ) -> Result<(), VoteStoreError> {
        self.count();
        let request = self
            .client
            .update_item()
            .table_name(&self.names.polls)
            .key("poll_id", s(poll_id))
            .condition_expression("attribute_exists(poll_id)");
        let request = match report {
            Some(report) => request
                .update_expression("SET audit_mismatch = :report")
                .expression_attribute_values(":report", s(report)),
            None => request.update_expression("REMOVE audit_mismatch"),
        };
        request.send().await.map_err(classify)?;
        Ok(())
    }

    async fn audit_records(
        &self,
        poll_id: &str,
    ) -> Result<(Option<String>, Option<String>), VoteStoreError> {
        let item = self.poll_item(poll_id).await?;
        let text = |name: &str| match item.as_ref().and_then(|item| item.get(name)) {
            Some(AttributeValue::S(text)) => Some(text.clone()),
            _ => None,
        };
        Ok((text("final_audit"), text("audit_mismatch")))
    }

    async fn set_counts(&self, poll: &Poll, counts: &Counts) -> Result<(), VoteStoreError> {
        for key in counter_keys(poll) {
            let mut item: Item = HashMap::from([
                ("counter_id".to_owned(), s(key.item_key())),
                ("poll_id".to_owned(), s(&poll.id)),
            ]);
            for (option, count) in &counts.by_option {
                let value = if key.shard == 0 { *count } else { 0 };
                item.insert(format!("{OPTION_PREFIX}{option}"), n(value));
            }
            self.count();
            self.client
                .put_item()
                .table_name(&self.names.tallies)
                .set_item(Some(item))
                .send()
                .await
                .map_err(classify)?;
        }
        Ok(())
    }
}

/// Why one commit attempt did not give an outcome.
enum AttemptError {
    /// DynamoDB refused the `ClientRequestToken` as used by another request.
    TokenInUse,
    Failed(VoteStoreError),
}

impl From<VoteStoreError> for AttemptError {
    fn from(error: VoteStoreError) -> Self {
        AttemptError::Failed(error)
    }
}

/// A 32-hex-digit token derived from `token` and `attempt`.
fn salted_token(token: &str, attempt: u32) -> String {
    use md5::{Digest, Md5};
    Md5::digest(format!("{token}/{attempt}"))
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl DynamoVoteStore {
    /// The items of `table` with these keys, read consistently with
    /// `BatchGetItem` (100 keys a request; keys left unprocessed are asked
    /// for again, with a short backoff).
    async fn batch_get(&self, table: &str, keys: Vec<Item>) -> Result<Vec<Item>, VoteStoreError> {
        let mut items = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.to_vec()))
                    .consistent_read(true)
                    .build()
                    .map_err(other)?,
            );
            let mut attempts = 0;
            while let Some(request) = pending.take() {
                attempts += 1;
                self.count();
                let got = self
                    .client
                    .batch_get_item()
                    .request_items(table, request)
                    .send()
                    .await
                    .map_err(classify)?;
                if let Some(found) = got.responses().and_then(|responses| responses.get(table)) {
                    items.extend(found.iter().cloned());
                }
                pending = got
                    .unprocessed_keys()
                    .and_then(|unprocessed| unprocessed.get(table))
                    .filter(|rest| !rest.keys().is_empty())
                    .cloned();
                if pending.is_some() {
                    if attempts > 20 {
                        return Err(VoteStoreError::Throttled(format!(
                            "{table} keys stayed unprocessed"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(20 * attempts)).await;
                }
            }
        }
        Ok(items)
    }

    /// A poll's item, read consistently.
    async fn poll_item(&self, id: &str) -> Result<Option<Item>, VoteStoreError> {
        self.count();
        let got = self
            .client
            .get_item()
            .table_name(&self.names.polls)
            .key("poll_id", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        Ok(got.item)
    }

    /// One `TransactWriteItems` with `token`.
    async fn commit_once(
        &self,
        commit: &Commit,
        token: &str,
    ) -> Result<CommitOutcome, AttemptError> {
        let expect = Expect {
            checkpoint: Some(commit.previous.clone()),
            ..Expect::from(commit.fence.clone())
        };
        let checkpoint = checkpoint_update(&self.names.leases, &expect, &commit.next)
            .map_err(|error| VoteStoreError::Other(error.to_string()))?;
        let mut request = self
            .client
            .transact_write_items()
            .client_request_token(token)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        for (key, options) in &commit.deltas {
            request = request.transact_items(
                TransactWriteItem::builder()
                    .update(self.counter_update(key, options)?)
                    .build(),
            );
        }
        // The lease's update is the last action: its cancellation reason
        // tells a lost lease (or an applied commit) from anything else.
        let lease_action = commit.deltas.len();
        request = request.transact_items(TransactWriteItem::builder().update(checkpoint).build());
        self.count();
        match request.send().await {
            Ok(output) => {
                self.consumed(output.consumed_capacity());
                Ok(CommitOutcome::Committed)
            }
            Err(error) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
                    error.as_service_error()
                {
                    let codes: Vec<&str> = cancelled
                        .cancellation_reasons()
                        .iter()
                        .map(|reason| reason.code().unwrap_or("None"))
                        .collect();
                    if codes.get(lease_action).copied().map(classify_code)
                        == Some(ErrorClass::ConditionFailed)
                    {
                        return Ok(self.lost_or_applied(commit).await?);
                    }
                    return Err(vote_error(AwsError {
                        class: classify_cancellation(codes.iter().copied()),
                        message: format!("transaction cancelled: {codes:?}"),
                    })
                    .into());
                }
                if tally_aws::classify(&error) == ErrorClass::TokenReused {
                    return Err(AttemptError::TokenInUse);
                }
                Err(classify(error).into())
            }
        }
    }

    /// Every item of the `votes` table (a full scan: for recounts and tests).
    pub async fn scan_votes(&self) -> Result<Vec<VoteItem>, VoteStoreError> {
        self.scan_all(&self.names.votes)
            .await?
            .iter()
            .map(vote_from_item)
            .collect()
    }

    /// Every item of the `rejects` table (a full scan).
    pub async fn scan_rejects(&self) -> Result<Vec<RejectItem>, VoteStoreError> {
        self.scan_all(&self.names.rejects)
            .await?
            .iter()
            .map(reject_from_item)
            .collect()
    }

    /// The lease condition failed: either the lease moved (lost), or an
    /// earlier attempt of this very commit was applied and its response
    /// lost (then the lease shows our fence and the new checkpoint).
    async fn lost_or_applied(&self, commit: &Commit) -> Result<CommitOutcome, VoteStoreError> {
        self.count();
        let lease = self
            .leases
            .get_lease(&commit.fence.key)
            .await
            .map_err(|error| VoteStoreError::Unavailable(error.to_string()))?;
        let applied = lease
            .is_some_and(|lease| lease.fence() == commit.fence && lease.checkpoint == commit.next);
        Ok(if applied {
            CommitOutcome::Committed
        } else {
            CommitOutcome::Lost
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reject_expires_after_the_retention() {
        let now_ms = tally_contract::time::now_millis();
        let reject = RejectItem {
            origin: Origin::parse(
                "shardId-000000000000/49590338271490256608559692538361571095921575989136588898/0",
            )
            .expect("an origin"),
            reason: Reason::Malformed,
            detail: "not JSON".into(),
            raw: b"x".to_vec(),
            raw_len: 1,
            partition_key: "u-1".into(),
            arrival_ms: now_ms,
            poll_id: None,
            voter_id: None,
            vote_id: None,
        };
        let expected = now_ms / 1000 + 30 * 24 * 3600;
        let item = reject_item(&reject, now_ms + 5_000);
        assert_eq!(item.get("expires_at"), Some(&n(expected)));
        // Without an arrival time, from now.
        let unknown = RejectItem {
            arrival_ms: 0,
            ..reject
        };
        let item = reject_item(&unknown, now_ms);
        assert_eq!(item.get("expires_at"), Some(&n(expected)));
    }
}
