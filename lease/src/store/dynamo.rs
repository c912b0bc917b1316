//! The DynamoDB lease table: KCL-compatible attribute names, on-demand
//! billing, a `leaseOwner` global secondary index, and the fleet item.
//!
//! Wraps <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_UpdateItem.html>,
//! `PutItem`, `DeleteItem`, `GetItem`, `Scan`, `Query` and `CreateTable`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, Put, ReturnValue, ScalarAttributeType, TransactWriteItem,
    Update,
};
use aws_sdk_dynamodb::Client;
use tally_aws::table::TableError;
use tally_aws::{classify_cancellation, classify_code, AwsError, ErrorClass};

use super::{
    Created, Expect, FleetView, LeaseStore, LeaseTable, LeaseUpdate, OwnerChange, SkippedItem,
    StoreError, WorkerBeat, FLEET_KEY,
};
use crate::types::{Checkpoint, Lease, ShardId};

type Item = HashMap<String, AttributeValue>;

/// The `leaseOwner` index name.
pub const OWNER_INDEX: &str = "leaseOwner-index";

/// KCL's attribute names, plus `pendingOwner` (ours).
pub mod attr {
    pub const KEY: &str = "leaseKey";
    pub const OWNER: &str = "leaseOwner";
    pub const COUNTER: &str = "leaseCounter";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const SUB_SEQUENCE: &str = "checkpointSubSequenceNumber";
    pub const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
    pub const PARENTS: &str = "parentShardId";
    pub const CHILDREN: &str = "childShardIds";
    pub const STARTING_HASH: &str = "startingHashKey";
    pub const ENDING_HASH: &str = "endingHashKey";
    pub const PENDING_OWNER: &str = "pendingOwner";
    pub const WORKERS: &str = "workers";
    pub const EPOCH: &str = "leaseEpoch";
}

/// A lease table in DynamoDB.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    requests: Arc<AtomicU64>,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            requests: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn table_name(&self) -> &str {
        &self.table
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn key(key: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([(attr::KEY.to_owned(), AttributeValue::S(key.to_owned()))])
    }

    /// Runs a Scan or Query page by page and returns every lease, in key
    /// order (the fleet item skipped), and the items that are not leases.
    async fn paged<F, Fut>(&self, mut page: F) -> Result<LeaseTable, StoreError>
    where
        F: FnMut(Option<Item>) -> Fut,
        Fut: std::future::Future<Output = Result<(Vec<Item>, Option<Item>), StoreError>>,
    {
        let mut table = LeaseTable::default();
        let mut start = None;
        loop {
            self.count();
            let (items, next) = page(start).await?;
            for item in &items {
                match lease_from_item(item) {
                    Ok(Some(lease)) => table.leases.push(lease),
                    Ok(None) => {}
                    Err(StoreError::Malformed { key, reason }) => {
                        table.skipped.push(SkippedItem { key, reason })
                    }
                    Err(other) => return Err(other),
                }
            }
            start = next;
            if start.is_none() {
                break;
            }
        }
        table.leases.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(table)
    }
}

/// A `TransactWriteItems` update that checkpoints `checkpoint` on the lease
/// if it meets `expect`: an application puts it in its own transaction so
/// that its writes and the checkpoint commit together. The transaction fails
/// with a `ConditionalCheckFailed` cancellation reason when the lease was
/// lost, or, when `expect.checkpoint` names the checkpoint the commit
/// continues from, when that commit was already applied.
pub fn checkpoint_update(
    table: &str,
    expect: &Expect,
    checkpoint: &Checkpoint,
) -> Result<Update, StoreError> {
    let parts = UpdateParts::build(expect, &LeaseUpdate::checkpoint(checkpoint.clone()));
    Update::builder()
        .table_name(table)
        .set_key(Some(DynamoStore::key(expect.fence.key.as_str())))
        .update_expression(parts.update)
        .condition_expression(parts.condition)
        .set_expression_attribute_names(Some(parts.names))
        .set_expression_attribute_values(Some(parts.values))
        .build()
        .map_err(|error| StoreError::Other(error.to_string()))
}

struct UpdateParts {
    update: String,
    condition: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl UpdateParts {
    fn build(expect: &Expect, change: &LeaseUpdate) -> Self {
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for (placeholder, name) in [
            ("#key", attr::KEY),
            ("#owner", attr::OWNER),
            ("#counter", attr::COUNTER),
            ("#switches", attr::OWNER_SWITCHES),
            ("#pending", attr::PENDING_OWNER),
        ] {
            names.insert(placeholder.to_owned(), name.to_owned());
        }
        let mut condition = vec![
            "attribute_exists(#key)".to_owned(),
            "#counter = :expected_counter".to_owned(),
        ];
        values.insert(":expected_counter".into(), number(expect.fence.counter));
        match &expect.fence.owner {
            Some(owner) => {
                condition.push("#owner = :expected_owner".into());
                values.insert(":expected_owner".into(), AttributeValue::S(owner.clone()));
            }
            None => condition.push("attribute_not_exists(#owner)".into()),
        }
        match &expect.pending_owner {
            None => {}
            Some(None) => condition.push("attribute_not_exists(#pending)".into()),
            Some(Some(pending)) => {
                condition.push("#pending = :expected_pending".into());
                values.insert(
                    ":expected_pending".into(),
                    AttributeValue::S(pending.clone()),
                );
            }
        }
        if let Some(checkpoint) = &expect.checkpoint {
            names.insert("#checkpoint".into(), attr::CHECKPOINT.into());
            names.insert("#sub".into(), attr::SUB_SEQUENCE.into());
            condition.push("#checkpoint = :expected_checkpoint".into());
            condition.push("#sub = :expected_sub".into());
            values.insert(
                ":expected_checkpoint".into(),
                AttributeValue::S(checkpoint.attribute()),
            );
            values.insert(
                ":expected_sub".into(),
                AttributeValue::N(checkpoint.sub_attribute().to_string()),
            );
        }
        let mut set = Vec::new();
        let mut remove = Vec::new();
        match &change.owner {
            OwnerChange::Keep => {}
            OwnerChange::To(owner) => {
                set.push("#owner = :new_owner".to_owned());
                set.push("#counter = #counter + :one".to_owned());
                values.insert(":new_owner".into(), AttributeValue::S(owner.clone()));
                values.insert(":one".into(), number(1));
                if change.checkpoint.is_none() {
                    set.push("#switches = if_not_exists(#switches, :zero) + :one".to_owned());
                    values.insert(":zero".into(), number(0));
                }
            }
            OwnerChange::Clear => {
                remove.push("#owner".to_owned());
                set.push("#counter = #counter + :one".to_owned());
                values.insert(":one".into(), number(1));
            }
        }
        if let Some(checkpoint) = &change.checkpoint {
            names.insert("#checkpoint".into(), attr::CHECKPOINT.into());
            names.insert("#sub".into(), attr::SUB_SEQUENCE.into());
            set.push("#checkpoint = :checkpoint".into());
            set.push("#sub = :sub".into());
            set.push("#switches = :zero".into());
            values.insert(
                ":checkpoint".into(),
                AttributeValue::S(checkpoint.attribute()),
            );
            values.insert(
                ":sub".into(),
                AttributeValue::N(checkpoint.sub_attribute().to_string()),
            );
            values.insert(":zero".into(), number(0));
        }
        match &change.pending_owner {
            None => {}
            Some(None) => remove.push("#pending".into()),
            Some(Some(pending)) => {
                set.push("#pending = :new_pending".into());
                values.insert(":new_pending".into(), AttributeValue::S(pending.clone()));
            }
        }
        if let Some(children) = &change.children {
            if children.is_empty() {
                names.insert("#children".into(), attr::CHILDREN.into());
                remove.push("#children".into());
            } else {
                names.insert("#children".into(), attr::CHILDREN.into());
                set.push("#children = :children".into());
                values.insert(
                    ":children".into(),
                    AttributeValue::Ss(children.iter().map(|c| c.0.clone()).collect()),
                );
            }
        }
        let mut update = String::new();
        if !set.is_empty() {
            update.push_str("SET ");
            update.push_str(&set.join(", "));
        }
        if !remove.is_empty() {
            if !update.is_empty() {
                update.push(' ');
            }
            update.push_str("REMOVE ");
            update.push_str(&remove.join(", "));
        }
        // Expression attribute names must all be used: drop the unused ones.
        let text = format!("{update} {}", condition.join(" AND "));
        names.retain(|placeholder, _| text.contains(placeholder.as_str()));
        Self {
            update,
            condition: condition.join(" AND "),
            names,
            values,
        }
    }
}

fn number(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Maps a failed call to the lease table's error, through the one
/// classification of AWS errors ([`tally_aws::error`]).
fn classify<E>(error: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    store_error(AwsError::from_sdk(&error))
}

fn store_error(error: AwsError) -> StoreError {
    let AwsError { class, message } = error;
    match class {
        // The lease table has no error of its own for a transaction
        // conflict: like throttling, it is worth another try after a backoff.
        ErrorClass::Throttled | ErrorClass::Conflict => StoreError::Throttled(message),
        ErrorClass::Transient => StoreError::Unavailable(message),
        ErrorClass::NotFound => StoreError::TableMissing(message),
        ErrorClass::ConditionFailed
        | ErrorClass::InUse
        | ErrorClass::ExpiredIterator
        | ErrorClass::TokenReused
        | ErrorClass::Other => StoreError::Other(message),
    }
}

fn table_error(error: TableError) -> StoreError {
    match error {
        TableError::Aws(error) => store_error(error),
        TableError::NotActive { .. } => StoreError::Other(error.to_string()),
    }
}

fn is_condition_failure<E: ProvideErrorMetadata>(
    error: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> bool {
    tally_aws::classify(error) == ErrorClass::ConditionFailed
}

/// Turns an item into a lease; the fleet item and foreign items give `None`.
pub fn lease_from_item(
    item: &HashMap<String, AttributeValue>,
) -> Result<Option<Lease>, StoreError> {
    let Some(AttributeValue::S(key)) = item.get(attr::KEY) else {
        return Err(StoreError::Malformed {
            key: "?".into(),
            reason: "no leaseKey".into(),
        });
    };
    if key == FLEET_KEY {
        return Ok(None);
    }
    let malformed = |reason: &str| StoreError::Malformed {
        key: key.clone(),
        reason: reason.to_owned(),
    };
    let string = |name: &str| match item.get(name) {
        Some(AttributeValue::S(text)) => Some(text.clone()),
        _ => None,
    };
    let numeric = |name: &str| -> Result<Option<i64>, StoreError> {
        match item.get(name) {
            None => Ok(None),
            Some(AttributeValue::N(text)) => text
                .parse::<i64>()
                .map(Some)
                .map_err(|_| malformed(&format!("{name} is not an integer"))),
            Some(_) => Err(malformed(&format!("{name} is not a number"))),
        }
    };
    let ids = |name: &str| -> Vec<ShardId> {
        match item.get(name) {
            Some(AttributeValue::Ss(list)) => {
                let mut ids: Vec<ShardId> = list.iter().map(ShardId::new).collect();
                ids.sort();
                ids
            }
            Some(AttributeValue::S(single)) => vec![ShardId::new(single)],
            _ => Vec::new(),
        }
    };
    let counter = numeric(attr::COUNTER)?.ok_or_else(|| malformed("no leaseCounter"))?;
    let checkpoint_text = string(attr::CHECKPOINT).ok_or_else(|| malformed("no checkpoint"))?;
    let sub = numeric(attr::SUB_SEQUENCE)?.unwrap_or(0);
    let checkpoint = Checkpoint::from_attributes(&checkpoint_text, sub)
        .ok_or_else(|| malformed(&format!("checkpoint {checkpoint_text:?} is not valid")))?;
    let hash_range = match (string(attr::STARTING_HASH), string(attr::ENDING_HASH)) {
        (Some(start), Some(end)) => Some((start, end)),
        _ => None,
    };
    Ok(Some(Lease {
        key: ShardId::new(key.clone()),
        owner: string(attr::OWNER),
        counter: u64::try_from(counter).map_err(|_| malformed("negative leaseCounter"))?,
        checkpoint,
        owner_switches: u64::try_from(numeric(attr::OWNER_SWITCHES)?.unwrap_or(0)).unwrap_or(0),
        parents: ids(attr::PARENTS),
        children: ids(attr::CHILDREN),
        hash_range,
        pending_owner: string(attr::PENDING_OWNER),
    }))
}

fn lease_to_item(lease: &Lease) -> HashMap<String, AttributeValue> {
    let mut item = DynamoStore::key(lease.key.as_str());
    if let Some(owner) = &lease.owner {
        item.insert(attr::OWNER.into(), AttributeValue::S(owner.clone()));
    }
    item.insert(attr::COUNTER.into(), number(lease.counter));
    item.insert(
        attr::CHECKPOINT.into(),
        AttributeValue::S(lease.checkpoint.attribute()),
    );
    item.insert(
        attr::SUB_SEQUENCE.into(),
        AttributeValue::N(lease.checkpoint.sub_attribute().to_string()),
    );
    item.insert(attr::OWNER_SWITCHES.into(), number(lease.owner_switches));
    if !lease.parents.is_empty() {
        item.insert(
            attr::PARENTS.into(),
            AttributeValue::Ss(lease.parents.iter().map(|p| p.0.clone()).collect()),
        );
    }
    if !lease.children.is_empty() {
        item.insert(
            attr::CHILDREN.into(),
            AttributeValue::Ss(lease.children.iter().map(|c| c.0.clone()).collect()),
        );
    }
    if let Some((start, end)) = &lease.hash_range {
        item.insert(attr::STARTING_HASH.into(), AttributeValue::S(start.clone()));
        item.insert(attr::ENDING_HASH.into(), AttributeValue::S(end.clone()));
    }
    if let Some(pending) = &lease.pending_owner {
        item.insert(
            attr::PENDING_OWNER.into(),
            AttributeValue::S(pending.clone()),
        );
    }
    item
}

fn fleet_from_item(item: &HashMap<String, AttributeValue>) -> FleetView {
    let mut workers = BTreeMap::new();
    if let Some(AttributeValue::M(map)) = item.get(attr::WORKERS) {
        for (worker, entry) in map {
            let AttributeValue::M(fields) = entry else {
                continue;
            };
            let field = |name: &str| match fields.get(name) {
                Some(AttributeValue::N(text)) => text.parse::<u64>().ok(),
                _ => None,
            };
            if let (Some(beat), Some(leases)) = (field("beat"), field("leases")) {
                workers.insert(
                    worker.clone(),
                    WorkerBeat {
                        beat,
                        leases: u32::try_from(leases).unwrap_or(u32::MAX),
                    },
                );
            }
        }
    }
    let epoch = match item.get(attr::EPOCH) {
        Some(AttributeValue::N(text)) => text.parse().unwrap_or(0),
        _ => 0,
    };
    FleetView { workers, epoch }
}

#[async_trait]
impl LeaseStore for DynamoStore {
    async fn ensure_table(&self) -> Result<(), StoreError> {
        let request = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr::KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| StoreError::Other(e.to_string()))?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr::OWNER)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| StoreError::Other(e.to_string()))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(attr::KEY)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| StoreError::Other(e.to_string()))?,
            )
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(OWNER_INDEX)
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name(attr::OWNER)
                            .key_type(KeyType::Hash)
                            .build()
                            .map_err(|e| StoreError::Other(e.to_string()))?,
                    )
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(|e| StoreError::Other(e.to_string()))?,
            );
        tally_aws::table::ensure_table(&self.client, request, || self.count())
            .await
            .map_err(table_error)?;
        self.count();
        let fleet = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(HashMap::from([
                (attr::KEY.to_owned(), AttributeValue::S(FLEET_KEY.into())),
                (attr::WORKERS.to_owned(), AttributeValue::M(HashMap::new())),
                (attr::EPOCH.to_owned(), number(0)),
            ])))
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", attr::KEY)
            .send()
            .await;
        match fleet {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Ok(()),
            Err(error) => Err(classify(error)),
        }
    }

    async fn heartbeat(&self, worker: &str, beat: WorkerBeat) -> Result<FleetView, StoreError> {
        self.count();
        let entry = AttributeValue::M(HashMap::from([
            ("beat".to_owned(), number(beat.beat)),
            ("leases".to_owned(), number(u64::from(beat.leases))),
        ]));
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(FLEET_KEY)))
            .update_expression("SET #workers.#me = :entry")
            .expression_attribute_names("#workers", attr::WORKERS)
            .expression_attribute_names("#me", worker)
            .expression_attribute_values(":entry", entry)
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(classify)?;
        Ok(fleet_from_item(
            output.attributes().unwrap_or(&HashMap::new()),
        ))
    }

    async fn fleet(&self) -> Result<FleetView, StoreError> {
        self.count();
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(FLEET_KEY)))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        Ok(fleet_from_item(output.item().unwrap_or(&HashMap::new())))
    }

    async fn leave(&self, worker: &str, beat: Option<u64>) -> Result<(), StoreError> {
        self.count();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(FLEET_KEY)))
            .update_expression("REMOVE #workers.#who ADD #epoch :one")
            .expression_attribute_names("#workers", attr::WORKERS)
            .expression_attribute_names("#who", worker)
            .expression_attribute_names("#epoch", attr::EPOCH)
            .expression_attribute_values(":one", number(1));
        if let Some(beat) = beat {
            request = request
                .condition_expression("#workers.#who.beat = :beat")
                .expression_attribute_values(":beat", number(beat));
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Ok(()),
            Err(error) => Err(classify(error)),
        }
    }

    async fn bump_epoch(&self) -> Result<(), StoreError> {
        self.count();
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(FLEET_KEY)))
            .update_expression("ADD #epoch :one")
            .expression_attribute_names("#epoch", attr::EPOCH)
            .expression_attribute_values(":one", number(1))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn scan_leases(&self) -> Result<LeaseTable, StoreError> {
        self.paged(|start| async move {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(classify)?;
            Ok((page.items().to_vec(), page.last_evaluated_key().cloned()))
        })
        .await
    }

    async fn leases_owned_by(&self, owner: &str) -> Result<Vec<Lease>, StoreError> {
        self.paged(|start| async move {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(OWNER_INDEX)
                .key_condition_expression("#owner = :owner")
                .expression_attribute_names("#owner", attr::OWNER)
                .expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(classify)?;
            Ok((page.items().to_vec(), page.last_evaluated_key().cloned()))
        })
        .await
        .map(|table| table.leases)
    }

    async fn get_lease(&self, key: &ShardId) -> Result<Option<Lease>, StoreError> {
        self.count();
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(key.as_str())))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        match output.item() {
            Some(item) => lease_from_item(item),
            None => Ok(None),
        }
    }

    async fn create_lease(&self, lease: &Lease, epoch: u64) -> Result<Created, StoreError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Other(e.to_string());
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(lease_to_item(lease)))
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", attr::KEY)
            .build()
            .map_err(build)?;
        let bump = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(FLEET_KEY)))
            .update_expression("SET #epoch = #epoch + :one")
            .condition_expression("#epoch = :seen")
            .expression_attribute_names("#epoch", attr::EPOCH)
            .expression_attribute_values(":one", number(1))
            .expression_attribute_values(":seen", number(epoch))
            .build()
            .map_err(build)?;
        self.count();
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(TransactWriteItem::builder().update(bump).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(Created::Yes),
            Err(SdkError::ServiceError(service))
                if matches!(
                    service.err(),
                    TransactWriteItemsError::TransactionCanceledException(_)
                ) =>
            {
                let TransactWriteItemsError::TransactionCanceledException(cancelled) =
                    service.err()
                else {
                    unreachable!("matched above");
                };
                let codes: Vec<&str> = cancelled
                    .cancellation_reasons()
                    .iter()
                    .map(|reason| reason.code().unwrap_or("None"))
                    .collect();
                let failed = |index: usize| {
                    codes.get(index).copied().map(classify_code)
                        == Some(ErrorClass::ConditionFailed)
                };
                if failed(0) {
                    Ok(Created::Exists)
                } else if failed(1) {
                    Ok(Created::EpochMoved)
                } else {
                    Err(store_error(AwsError {
                        class: classify_cancellation(codes.iter().copied()),
                        message: format!(
                            "lease creation cancelled: {:?}",
                            cancelled.cancellation_reasons()
                        ),
                    }))
                }
            }
            Err(error) => Err(classify(error)),
        }
    }

    async fn update_lease(
        &self,
        expect: &Expect,
        update: &LeaseUpdate,
    ) -> Result<Option<Lease>, StoreError> {
        let parts = UpdateParts::build(expect, update);
        self.count();
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(expect.fence.key.as_str())))
            .update_expression(parts.update)
            .condition_expression(parts.condition)
            .set_expression_attribute_names(Some(parts.names))
            .set_expression_attribute_values(Some(parts.values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => match output.attributes() {
                Some(item) => lease_from_item(item),
                None => Ok(None),
            },
            Err(error) if is_condition_failure(&error) => Ok(None),
            Err(error) => Err(classify(error)),
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    async fn delete_lease(&self, key: &ShardId) -> Result<bool, StoreError> {
        self.count();
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(key.as_str())))
            .condition_expression("#checkpoint = :end")
            .expression_attribute_names("#checkpoint", attr::CHECKPOINT)
            .expression_attribute_values(":end", AttributeValue::S(Checkpoint::SHARD_END.into()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(classify(error)),
        }
    }
}
