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
}
