//! The vote-store conformance suite, against the in-memory store and
//! against DynamoDB on the emulator, through the real AWS SDK.

mod memory {
    use std::sync::Arc;

    use tally_lease::{LeaseStore, MemoryStore};
    use tally_store::memory::MemoryVoteStore;
    use tally_store::VoteStore;

    fn fresh() -> (Arc<dyn VoteStore>, Arc<dyn LeaseStore>) {
        let leases: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        (Arc::new(MemoryVoteStore::new(leases.clone())), leases)
    }

    tally_store::vote_store_conformance!(fresh());
}

mod dynamo {
    use std::sync::Arc;

    use tally_lease::testing::{sdk_config, unique_name, Emulator, EmulatorKind};
    use tally_lease::{DynamoStore, LeaseStore};
    use tally_store::dynamo::{DynamoVoteStore, TableNames};
    use tally_store::VoteStore;

    async fn fresh() -> (Arc<dyn VoteStore>, Arc<dyn LeaseStore>) {
        let emulator = Emulator::shared(EmulatorKind::Ministack);
        let client = aws_sdk_dynamodb::Client::new(&sdk_config(&emulator.endpoint).await);
        let prefix = format!("{}-", unique_name("t"));
        let names = TableNames::with_prefix(&prefix, format!("{prefix}leases"));
        let leases: Arc<dyn LeaseStore> =
            Arc::new(DynamoStore::new(client.clone(), names.leases.clone()));
        (Arc::new(DynamoVoteStore::new(client, names)), leases)
    }

    tally_store::vote_store_conformance!(fresh().await);

    /// A vote item that cannot be read (written by hand, say) fails only
    /// its own key of a batched read: the other voters in the same
    /// `BatchGetItem` get their answers.
    #[tokio::test]
    async fn a_malformed_vote_item_fails_only_its_own_key() {
        use aws_sdk_dynamodb::types::AttributeValue;
        use tally_store::prelude::*;
        use tally_store::VoteStoreError;

        let emulator = Emulator::shared(EmulatorKind::Ministack);
        let client = aws_sdk_dynamodb::Client::new(&sdk_config(&emulator.endpoint).await);
        let prefix = format!("{}-", unique_name("t"));
        let names = TableNames::with_prefix(&prefix, format!("{prefix}leases"));
        let store = DynamoVoteStore::new(client.clone(), names.clone());
        store.ensure_tables().await.unwrap();
        client
            .put_item()
            .table_name(&names.votes)
            .item("voter_id", AttributeValue::S("u-bad".into()))
            .item("poll_id", AttributeValue::S("p".into()))
            .item("option", AttributeValue::N("7".into()))
            .send()
            .await
            .unwrap();
        let keys = [
            ("p".to_owned(), "u-bad".to_owned()),
            ("p".to_owned(), "u-none".to_owned()),
        ];
        let answers = store.get_votes(&keys).await.unwrap();
        assert!(
            matches!(answers[0], Err(VoteStoreError::Malformed { .. })),
            "{answers:?}"
        );
        assert!(matches!(answers[1], Ok(None)), "{answers:?}");
    }
}
