//! The lease-store conformance suite, against the in-memory store and
//! against DynamoDB on the emulator, through the real AWS SDK.

mod memory {
    tally_lease::lease_store_conformance!(tally_lease::MemoryStore::new());
}

mod dynamo {
    use tally_lease::testing::{sdk_config, unique_name, Emulator, EmulatorKind};
    use tally_lease::DynamoStore;

    async fn fresh() -> DynamoStore {
        let emulator = Emulator::shared(EmulatorKind::Ministack);
        let config = sdk_config(&emulator.endpoint).await;
        DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&config),
            unique_name("leases"),
        )
    }

    tally_lease::lease_store_conformance!(fresh().await);

    #[tokio::test]
    async fn malformed_items_are_reported_with_their_key() {
        use aws_sdk_dynamodb::types::AttributeValue;
        use tally_lease::store::StoreError;
        use tally_lease::LeaseStore;
        let store = fresh().await;
        store.ensure_table().await.unwrap();
        let emulator = Emulator::shared(EmulatorKind::Ministack);
        let client = aws_sdk_dynamodb::Client::new(&sdk_config(&emulator.endpoint).await);
        client
            .put_item()
            .table_name(store.table_name())
            .item("leaseKey", AttributeValue::S("shardId-bad".into()))
            .item("leaseCounter", AttributeValue::N("1".into()))
            .item("checkpoint", AttributeValue::S("not-a-number".into()))
            .send()
            .await
            .unwrap();
        match store.list_leases().await {
            Err(StoreError::Malformed { key, reason }) => {
                assert_eq!(key, "shardId-bad");
                assert!(reason.contains("checkpoint"), "{reason}");
            }
            other => panic!("expected a malformed-item error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn checkpoint_update_commits_inside_an_application_transaction() {
        use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
        use tally_lease::store::dynamo::checkpoint_update;
        use tally_lease::store::{Expect, LeaseUpdate};
        use tally_lease::{
            Checkpoint, ExtendedSequence, Lease, LeaseStore, SequenceNumber, ShardId,
        };
        let store = fresh().await;
        store.ensure_table().await.unwrap();
        let lease = Lease::new(
            ShardId::new("shardId-000000000001"),
            Checkpoint::TrimHorizon,
        );
        store
            .create_lease(&lease, store.fleet().await.unwrap().epoch)
            .await
            .unwrap();
        let mine = store
            .update_lease(&lease.fence().into(), &LeaseUpdate::take("w"))
            .await
            .unwrap()
            .unwrap();
        let emulator = Emulator::shared(EmulatorKind::Ministack);
        let client = aws_sdk_dynamodb::Client::new(&sdk_config(&emulator.endpoint).await);
        let position = Checkpoint::At(ExtendedSequence {
            sequence: SequenceNumber::parse("42").unwrap(),
            sub_sequence: 0,
        });
        let app_write = |id: &str| {
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(store.table_name())
                        .item("leaseKey", AttributeValue::S(format!("app-{id}")))
                        .build()
                        .unwrap(),
                )
                .build()
        };
        let commit = |fence, id: &'static str| {
            let client = client.clone();
            let expect = Expect {
                checkpoint: Some(Checkpoint::TrimHorizon),
                ..Expect::from(fence)
            };
            let update = checkpoint_update(store.table_name(), &expect, &position).unwrap();
            let item = app_write(id);
            async move {
                client
                    .transact_write_items()
                    .transact_items(item)
                    .transact_items(TransactWriteItem::builder().update(update).build())
                    .send()
                    .await
            }
        };
        commit(mine.fence(), "one").await.expect("owner commits");
        assert_eq!(
            store
                .get_lease(&lease.key)
                .await
                .unwrap()
                .unwrap()
                .checkpoint,
            position
        );
        // The same commit again (a retry whose first attempt was applied)
        // no longer meets the checkpoint it continues from.
        assert!(
            commit(mine.fence(), "again").await.is_err(),
            "an applied commit cannot apply twice"
        );
        // Another worker takes the lease: the stale transaction fails whole.
        store
            .update_lease(&mine.fence().into(), &LeaseUpdate::take("other"))
            .await
            .unwrap()
            .unwrap();
        assert!(commit(mine.fence(), "two").await.is_err(), "fenced out");
        let leftover = client
            .get_item()
            .table_name(store.table_name())
            .key("leaseKey", AttributeValue::S("app-two".into()))
            .send()
            .await
            .unwrap();
        assert!(
            leftover.item().is_none(),
            "nothing of the refused transaction was written"
        );
    }
}
