//! The conformance suite every [`LeaseStore`] must pass: the in-memory
//! store and the DynamoDB adapter run the same checks
//! ([`lease_store_conformance!`](crate::lease_store_conformance)).

use crate::store::{Created, Expect, LeaseStore, LeaseUpdate, OwnerChange, WorkerBeat};
use crate::types::{Checkpoint, ExtendedSequence, Lease, SequenceNumber, ShardId};

fn sample(key: &str) -> Lease {
    let mut lease = Lease::new(ShardId::new(key), Checkpoint::TrimHorizon);
    lease.parents = vec![ShardId::new("shardId-p1"), ShardId::new("shardId-p2")];
    lease.hash_range = Some(("0".into(), "340282366920938463463374607431768211455".into()));
    lease
}

fn at(sequence: &str, sub: u64) -> Checkpoint {
    Checkpoint::At(ExtendedSequence {
        sequence: SequenceNumber::parse(sequence).unwrap(),
        sub_sequence: sub,
    })
}

pub async fn create_get_list(store: &dyn LeaseStore) {
    store.ensure_table().await.unwrap();
    store
        .ensure_table()
        .await
        .expect("ensure_table is idempotent");
    let lease = sample("shardId-000000000001");
    let epoch = store.fleet().await.unwrap().epoch;
    assert_eq!(
        store.create_lease(&lease, epoch + 1).await.unwrap(),
        Created::EpochMoved,
        "a stale epoch creates nothing"
    );
    assert_eq!(store.get_lease(&lease.key).await.unwrap(), None);
    assert_eq!(
        store.create_lease(&lease, epoch).await.unwrap(),
        Created::Yes
    );
    assert_eq!(
        store.fleet().await.unwrap().epoch,
        epoch + 1,
        "creation bumps the epoch"
    );
    assert_eq!(
        store.create_lease(&lease, epoch + 1).await.unwrap(),
        Created::Exists,
        "second create is refused"
    );
    assert_eq!(
        store.get_lease(&lease.key).await.unwrap(),
        Some(lease.clone())
    );
    assert_eq!(store.get_lease(&ShardId::new("nope")).await.unwrap(), None);
    let listed = store.list_leases().await.unwrap();
    assert_eq!(listed, vec![lease], "the fleet item is not a lease");
}

pub async fn fenced_updates(store: &dyn LeaseStore) {
    store.ensure_table().await.unwrap();
    let lease = sample("shardId-000000000002");
    store
        .create_lease(&lease, store.fleet().await.unwrap().epoch)
        .await
        .unwrap();
    let taken = store
        .update_lease(&lease.fence().into(), &LeaseUpdate::take("a"))
        .await
        .unwrap()
        .expect("free lease taken");
    assert_eq!(
        (taken.owner.as_deref(), taken.counter, taken.owner_switches),
        (Some("a"), 1, 1)
    );
    assert_eq!(
        store
            .update_lease(&lease.fence().into(), &LeaseUpdate::take("b"))
            .await
            .unwrap(),
        None,
        "a stale fence is refused"
    );
    let checkpointed = store
        .update_lease(
            &taken.fence().into(),
            &LeaseUpdate::checkpoint(at(
                "49680447902327068011534747638408591534547320311243603970",
                3,
            )),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        checkpointed.checkpoint,
        at(
            "49680447902327068011534747638408591534547320311243603970",
            3
        )
    );
    // A commit that names the checkpoint it continues from applies once.
    let from_checkpoint = |checkpoint: Checkpoint| Expect {
        checkpoint: Some(checkpoint),
        ..Expect::from(taken.fence())
    };
    let big = "49680447902327068011534747638408591534547320311243603970";
    assert_eq!(
        store
            .update_lease(
                &from_checkpoint(at(big, 2)),
                &LeaseUpdate::checkpoint(at(big, 4))
            )
            .await
            .unwrap(),
        None,
        "a checkpoint expectation that does not match is refused"
    );
    let continued = store
        .update_lease(
            &from_checkpoint(at(big, 3)),
            &LeaseUpdate::checkpoint(at(big, 4)),
        )
        .await
        .unwrap()
        .expect("the matching checkpoint expectation is met");
    assert_eq!(continued.checkpoint, at(big, 4));
    assert_eq!(
        store
            .update_lease(
                &from_checkpoint(at(big, 3)),
                &LeaseUpdate::checkpoint(at(big, 4))
            )
            .await
            .unwrap(),
        None,
        "the same commit does not apply twice"
    );
    let checkpointed = continued;
    assert_eq!(checkpointed.owner_switches, 0);
    assert_eq!(
        checkpointed.counter, 1,
        "a checkpoint is not an owner change"
    );
    let asked = store
        .update_lease(
            &Expect {
                fence: taken.fence(),
                pending_owner: Some(None),
                checkpoint: None,
            },
            &LeaseUpdate::request_handoff("b"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(asked.pending_owner.as_deref(), Some("b"));
    assert_eq!(
        store
            .update_lease(
                &Expect {
                    fence: taken.fence(),
                    pending_owner: Some(None),
                    checkpoint: None,
                },
                &LeaseUpdate::request_handoff("c")
            )
            .await
            .unwrap(),
        None,
        "a second request must wait"
    );
    let handed = store
        .update_lease(
            &Expect {
                fence: asked.fence(),
                pending_owner: Some(Some("b".into())),
                checkpoint: None,
            },
            &LeaseUpdate::take("b"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            handed.owner.as_deref(),
            handed.counter,
            handed.pending_owner.as_deref()
        ),
        (Some("b"), 2, None)
    );
    assert_eq!(
        store
            .update_lease(&taken.fence().into(), &LeaseUpdate::checkpoint(at("9", 0)))
            .await
            .unwrap(),
        None,
        "the ex-owner can no longer checkpoint"
    );
    let ended = store
        .update_lease(
            &handed.fence().into(),
            &LeaseUpdate {
                owner: OwnerChange::Clear,
                checkpoint: Some(Checkpoint::ShardEnd),
                pending_owner: Some(None),
                children: Some(vec![ShardId::new("shardId-c1"), ShardId::new("shardId-c2")]),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ended.owner.clone(), ended.counter), (None, 3));
    assert!(ended.is_finished());
    assert_eq!(
        ended.children,
        vec![ShardId::new("shardId-c1"), ShardId::new("shardId-c2")]
    );
    assert_eq!(store.get_lease(&ended.key).await.unwrap(), Some(ended));
}

pub async fn heartbeats_and_fleet(store: &dyn LeaseStore) {
    store.ensure_table().await.unwrap();
    let start = store.fleet().await.unwrap().epoch;
    store
        .heartbeat("a", WorkerBeat { beat: 7, leases: 2 })
        .await
        .unwrap();
    let view = store
        .heartbeat("b", WorkerBeat { beat: 9, leases: 0 })
        .await
        .unwrap();
    assert_eq!(view.workers.len(), 2);
    assert_eq!(view.workers["a"], WorkerBeat { beat: 7, leases: 2 });
    store.leave("b", Some(8)).await.unwrap();
    assert!(
        store.fleet().await.unwrap().workers.contains_key("b"),
        "wrong beat: kept"
    );
    store.leave("b", Some(9)).await.unwrap();
    let view = store.fleet().await.unwrap();
    assert!(!view.workers.contains_key("b"));
    assert_eq!(view.epoch, start + 1);
    store.bump_epoch().await.unwrap();
    store.leave("a", None).await.unwrap();
    let view = store.fleet().await.unwrap();
    assert!(view.workers.is_empty());
    assert_eq!(view.epoch, start + 3);
}

pub async fn owner_index_and_delete(store: &dyn LeaseStore) {
    store.ensure_table().await.unwrap();
    for index in 0..3 {
        let lease = sample(&format!("shardId-00000000001{index}"));
        store
            .create_lease(&lease, store.fleet().await.unwrap().epoch)
            .await
            .unwrap();
        if index < 2 {
            store
                .update_lease(&lease.fence().into(), &LeaseUpdate::take("owner-x"))
                .await
                .unwrap()
                .unwrap();
        }
    }
    let owned = store.leases_owned_by("owner-x").await.unwrap();
    assert_eq!(owned.len(), 2);
    assert!(owned.iter().all(|l| l.owner.as_deref() == Some("owner-x")));
    let key = ShardId::new("shardId-000000000012");
    assert!(
        !store.delete_lease(&key).await.unwrap(),
        "an unfinished lease stays"
    );
    let lease = store.get_lease(&key).await.unwrap().unwrap();
    store
        .update_lease(
            &lease.fence().into(),
            &LeaseUpdate::checkpoint(Checkpoint::ShardEnd),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(store.delete_lease(&key).await.unwrap());
    assert_eq!(store.get_lease(&key).await.unwrap(), None);
}

/// Generates one `#[tokio::test]` per conformance check; `$make` is an
/// async expression giving a fresh, empty store.
#[macro_export]
macro_rules! lease_store_conformance {
    ($make:expr) => {
        #[tokio::test]
        async fn conformance_create_get_list() {
            let store = $make;
            $crate::conformance::create_get_list(&store).await;
        }
        #[tokio::test]
        async fn conformance_fenced_updates() {
            let store = $make;
            $crate::conformance::fenced_updates(&store).await;
        }
        #[tokio::test]
        async fn conformance_heartbeats_and_fleet() {
            let store = $make;
            $crate::conformance::heartbeats_and_fleet(&store).await;
        }
        #[tokio::test]
        async fn conformance_owner_index_and_delete() {
            let store = $make;
            $crate::conformance::owner_index_and_delete(&store).await;
        }
    };
}
