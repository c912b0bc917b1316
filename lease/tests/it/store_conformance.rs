//! The lease-store conformance suite, against the in-memory store and
//! against DynamoDB on the emulator, through the real AWS SDK.

mod memory {
    tally_lease::lease_store_conformance!(tally_lease::MemoryStore::new());

    /// An item that does not read as a lease, as the DynamoDB adapter
    /// meets one (`dynamo::items_that_are_not_leases_are_skipped_and_reported_with_their_key`).
    #[tokio::test]
    async fn an_unreadable_item_is_skipped_reported_refused_and_there() {
        use tally_lease::store::Created;
        use tally_lease::{Checkpoint, Lease, LeaseStore, MemoryStore, ShardId};
        let store = MemoryStore::new();
        store.ensure_table().await.unwrap();
        let bad = ShardId::new("shardId-bad");
        store.put_unreadable(&bad, "checkpoint is not a sequence number");
        let table = store.scan_leases().await.unwrap();
        assert!(table.leases.is_empty());
        assert_eq!(table.skipped.len(), 1);
        assert_eq!(table.skipped[0].key, "shardId-bad");
        assert!(store.get_lease(&bad).await.is_err());
        let epoch = store.fleet().await.unwrap().epoch;
        let lease = Lease::new(bad.clone(), Checkpoint::TrimHorizon);
        assert_eq!(
            store.create_lease(&lease, epoch).await.unwrap(),
            Created::Exists
        );
        // Written whole again, it reads.
        store.put_raw(lease.clone());
        assert_eq!(store.get_lease(&bad).await.unwrap(), Some(lease));
        assert!(store.scan_leases().await.unwrap().skipped.is_empty());
    }
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
    async fn items_that_are_not_leases_are_skipped_and_reported_with_their_key() {
        use aws_sdk_dynamodb::types::AttributeValue;
        use tally_lease::{Checkpoint, Lease, LeaseStore, ShardId};
        let store = fresh().await;
        store.ensure_table().await.unwrap();
        let emulator = Emulator::shared(EmulatorKind::Ministack);
        let client = aws_sdk_dynamodb::Client::new(&sdk_config(&emulator.endpoint).await);
        for (key, counter, checkpoint) in [
            ("shardId-bad", AttributeValue::N("1".into()), "not-a-number"),
            (
                "shardId-typo",
                AttributeValue::S("seven".into()),
                "TRIM_HORIZON",
            ),
        ] {
            client
                .put_item()
                .table_name(store.table_name())
                .item("leaseKey", AttributeValue::S(key.into()))
                .item("leaseCounter", counter)
                .item("checkpoint", AttributeValue::S(checkpoint.into()))
                .item("leaseOwner", AttributeValue::S("w1".into()))
                .send()
                .await
                .unwrap();
        }
        let good = Lease::new(ShardId::new("shardId-good"), Checkpoint::TrimHorizon);
        let epoch = store.fleet().await.unwrap().epoch;
        store.create_lease(&good, epoch).await.unwrap();

        let table = store.scan_leases().await.unwrap();
        assert_eq!(table.leases.len(), 1);
        assert_eq!(table.leases[0].key, good.key);
        let mut skipped: Vec<(String, String)> = table
            .skipped
            .into_iter()
            .map(|item| (item.key, item.reason))
            .collect();
        skipped.sort();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert_eq!(skipped[0].0, "shardId-bad");
        assert!(skipped[0].1.contains("checkpoint"), "{skipped:?}");
        assert_eq!(skipped[1].0, "shardId-typo");
        assert!(skipped[1].1.contains("leaseCounter"), "{skipped:?}");
        assert_eq!(store.list_leases().await.unwrap().len(), 1);
        assert!(store.leases_owned_by("w1").await.unwrap().is_empty());
        // What the in-memory store's unreadable items mimic: a read of one
        // fails, and a creation finds it there.
        let bad = ShardId::new("shardId-bad");
        assert!(store.get_lease(&bad).await.is_err());
        let epoch = store.fleet().await.unwrap().epoch;
        assert_eq!(
            store
                .create_lease(&Lease::new(bad, Checkpoint::TrimHorizon), epoch)
                .await
                .unwrap(),
            tally_lease::store::Created::Exists
        );
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
        // A commit continuing from `from`, fenced by `fence`.
        let commit_from = |fence, id: &'static str, from: Checkpoint| {
            let client = client.clone();
            let expect = Expect {
                checkpoint: Some(from),
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
        let commit = |fence, id| commit_from(fence, id, Checkpoint::TrimHorizon);
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
        // It continues from the stored checkpoint, so only the fence can
        // refuse it.
        assert!(
            commit_from(mine.fence(), "two", position.clone())
                .await
                .is_err(),
            "fenced out"
        );
        let theirs = store.get_lease(&lease.key).await.unwrap().unwrap();
        commit_from(theirs.fence(), "three", position.clone())
            .await
            .expect("the same commit under the new owner's fence applies: the fence refused it");
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
