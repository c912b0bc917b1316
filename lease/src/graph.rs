//! The shard parent/child graph: which leases to create from a shard
//! listing, when a child may start, and when a finished parent may go.
//! Pure code; the sync loop and the simulation both call it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::types::{Checkpoint, InitialPosition, Lease, LeaseMap, Shard, ShardId};

/// The leases a shard listing calls for that `existing` lacks, parents
/// before children.
///
/// - An open shard always gets a lease.
/// - A closed shard gets none once any descendant has a lease (its work is
///   done or under way; re-creating it would replay it).
/// - A shard whose parent has (or gets) a lease starts at `TRIM_HORIZON`,
///   so nothing between a parent's end and its child's start is skipped.
/// - With `LATEST` or `AT_TIMESTAMP`, closed shards outside a lineage that
///   already has leases are skipped, and open shards start at that position.
pub fn leases_to_create(
    shards: &[Shard],
    existing: &HashSet<ShardId>,
    initial: InitialPosition,
) -> Vec<Lease> {
    let by_id: HashMap<&ShardId, &Shard> = shards.iter().map(|shard| (&shard.id, shard)).collect();
    let children = children_of(shards);
    let mut superseded_memo: HashMap<&ShardId, bool> = HashMap::new();
    let mut creating: HashSet<ShardId> = HashSet::new();
    let mut by_depth: BTreeMap<usize, Vec<&Shard>> = BTreeMap::new();
    for shard in shards {
        by_depth
            .entry(depth(&shard.id, &by_id, 0))
            .or_default()
            .push(shard);
    }
    let mut out = Vec::new();
    for shard in by_depth.into_values().flatten() {
        if existing.contains(&shard.id) {
            continue;
        }
        if !shard.is_open() && superseded(&shard.id, &children, existing, &mut superseded_memo) {
            continue;
        }
        let parents = shard.parents();
        let in_lineage = parents
            .iter()
            .any(|parent| existing.contains(parent) || creating.contains(parent));
        let checkpoint = if in_lineage {
            Checkpoint::TrimHorizon
        } else if !shard.is_open() && initial != InitialPosition::TrimHorizon {
            continue;
        } else {
            initial.checkpoint()
        };
        let mut lease = Lease::new(shard.id.clone(), checkpoint);
        lease.parents = parents;
        lease.children = children
            .get(&shard.id)
            .map(|ids| ids.iter().map(|id| (*id).clone()).collect())
            .unwrap_or_default();
        lease.hash_range = Some(shard.hash_range.clone());
        creating.insert(shard.id.clone());
        out.push(lease);
    }
    out
}

fn depth(id: &ShardId, by_id: &HashMap<&ShardId, &Shard>, guard: usize) -> usize {
    if guard > 10_000 {
        return guard;
    }
    by_id
        .get(id)
        .map(|shard| {
            shard
                .parents()
                .iter()
                .map(|parent| 1 + depth(parent, by_id, guard + 1))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Each shard's children, from the parents the shards name.
fn children_of(shards: &[Shard]) -> HashMap<&ShardId, Vec<&ShardId>> {
    let mut children: HashMap<&ShardId, Vec<&ShardId>> = HashMap::new();
    for shard in shards {
        for parent in [&shard.parent, &shard.adjacent_parent]
            .into_iter()
            .flatten()
        {
            children.entry(parent).or_default().push(&shard.id);
        }
    }
    children
}

/// Closed shards without a lease that a descendant's lease supersedes:
/// children are read only after their parents ended, and a parent's lease
/// is deleted only after that, so such a shard was read to its end (the
/// same rule that keeps the sync from creating its lease again).
pub fn superseded_shards(shards: &[Shard], existing: &HashSet<ShardId>) -> HashSet<ShardId> {
    let children = children_of(shards);
    let mut memo = HashMap::new();
    shards
        .iter()
        .filter(|shard| !shard.is_open() && !existing.contains(&shard.id))
        .filter(|shard| superseded(&shard.id, &children, existing, &mut memo))
        .map(|shard| shard.id.clone())
        .collect()
}

fn superseded<'a>(
    id: &'a ShardId,
    children: &HashMap<&'a ShardId, Vec<&'a ShardId>>,
    existing: &HashSet<ShardId>,
    memo: &mut HashMap<&'a ShardId, bool>,
) -> bool {
    if let Some(known) = memo.get(id) {
        return *known;
    }
    memo.insert(id, false);
    let answer = children.get(id).is_some_and(|kids| {
        kids.iter()
            .any(|kid| existing.contains(*kid) || superseded(kid, children, existing, memo))
    });
    memo.insert(id, answer);
    answer
}

/// Where a lease stands with respect to its parents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Its shard is read to the end and checkpointed `SHARD_END`.
    Ended,
    /// A parent has not reached `SHARD_END` yet; nobody may process it.
    WaitingOnParents,
    /// It may be processed.
    Ready,
}

/// The state of `lease` given every lease in the table, and the keys of
/// the table's items that do not read as leases. A parent without a lease
/// counts as ended: leases of parents are only deleted after they ended
/// (see [`parents_to_clean_up`]) and shards past retention are gone. A
/// parent whose item is there but unreadable may not have ended: its
/// children wait.
pub fn lease_state(lease: &Lease, all: &LeaseMap, unreadable: &BTreeSet<ShardId>) -> LeaseState {
    if lease.is_finished() {
        return LeaseState::Ended;
    }
    let parents_done = lease.parents.iter().all(|parent| {
        !unreadable.contains(parent)
            && all
                .get(parent)
                .map(|parent_lease| parent_lease.is_finished())
                .unwrap_or(true)
    });
    if parents_done {
        LeaseState::Ready
    } else {
        LeaseState::WaitingOnParents
    }
}

/// Ended leases whose children all have leases that were taken at least
/// once: they can be deleted without the child ever seeing a live parent.
pub fn parents_to_clean_up(all: &LeaseMap) -> Vec<ShardId> {
    let mut kids: HashMap<&ShardId, HashSet<&ShardId>> = HashMap::new();
    for lease in all.values() {
        for parent in &lease.parents {
            kids.entry(parent).or_default().insert(&lease.key);
        }
        for child in &lease.children {
            kids.entry(&lease.key).or_default().insert(child);
        }
    }
    let mut out: Vec<ShardId> = all
        .values()
        .filter(|lease| lease.is_finished())
        .filter(|lease| {
            kids.get(&lease.key).is_some_and(|children| {
                !children.is_empty()
                    && children
                        .iter()
                        .all(|child| all.get(*child).is_some_and(|kid| kid.counter > 0))
            })
        })
        .map(|lease| lease.key.clone())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SequenceNumber;
    use proptest::prelude::*;

    fn shard(id: &str, parents: &[&str], open: bool) -> Shard {
        Shard {
            id: ShardId::new(id),
            parent: parents.first().map(|p| ShardId::new(*p)),
            adjacent_parent: parents.get(1).map(|p| ShardId::new(*p)),
            hash_range: ("0".into(), "1".into()),
            ending_sequence: if open {
                None
            } else {
                SequenceNumber::parse("99")
            },
        }
    }

    fn keys(leases: &[Lease]) -> Vec<&str> {
        leases.iter().map(|lease| lease.key.as_str()).collect()
    }

    #[test]
    fn split_creates_parent_first_and_children_from_trim_horizon() {
        let shards = vec![
            shard("c1", &["p"], true),
            shard("p", &[], false),
            shard("c2", &["p"], true),
        ];
        let made = leases_to_create(&shards, &HashSet::new(), InitialPosition::Latest);
        assert_eq!(
            keys(&made),
            vec!["c1", "c2"],
            "closed root skipped at LATEST"
        );
        assert!(made.iter().all(|l| l.checkpoint == Checkpoint::Latest));
        let made = leases_to_create(&shards, &HashSet::new(), InitialPosition::TrimHorizon);
        assert_eq!(keys(&made), vec!["p", "c1", "c2"]);
        assert_eq!(made[0].children.len(), 2);
        assert_eq!(made[1].parents, vec![ShardId::new("p")]);
    }

    #[test]
    fn cleaned_up_parent_is_not_recreated() {
        let shards = vec![shard("p", &[], false), shard("c", &["p"], true)];
        let existing: HashSet<ShardId> = [ShardId::new("c")].into();
        assert!(leases_to_create(&shards, &existing, InitialPosition::TrimHorizon).is_empty());
    }

    #[test]
    fn merge_child_waits_for_both_parents() {
        let mut a = Lease::new(ShardId::new("a"), Checkpoint::ShardEnd);
        let b = Lease::new(ShardId::new("b"), Checkpoint::TrimHorizon);
        let mut child = Lease::new(ShardId::new("m"), Checkpoint::TrimHorizon);
        child.parents = vec![a.key.clone(), b.key.clone()];
        a.children = vec![child.key.clone()];
        let mut all: LeaseMap = [a, b, child.clone()]
            .into_iter()
            .map(|l| (l.key.clone(), l))
            .collect();
        assert_eq!(
            lease_state(&child, &all, &BTreeSet::new()),
            LeaseState::WaitingOnParents
        );
        assert!(parents_to_clean_up(&all).is_empty(), "child never taken");
        all.get_mut(&ShardId::new("b")).unwrap().checkpoint = Checkpoint::ShardEnd;
        assert_eq!(
            lease_state(&child, &all, &BTreeSet::new()),
            LeaseState::Ready
        );
        all.get_mut(&ShardId::new("m")).unwrap().counter = 1;
        assert_eq!(
            parents_to_clean_up(&all),
            vec![ShardId::new("a"), ShardId::new("b")]
        );
    }

    /// A random resharding history: a list of open shards, each step splits
    /// one or merges two adjacent ones.
    fn history(steps: Vec<(bool, usize)>, initial: usize) -> Vec<Shard> {
        let mut all = Vec::new();
        let mut open: Vec<String> = Vec::new();
        let mut next = 0;
        let fresh = |next: &mut usize| {
            *next += 1;
            format!("s{next}")
        };
        for _ in 0..initial {
            let id = fresh(&mut next);
            all.push(shard(&id, &[], true));
            open.push(id);
        }
        for (split, at) in steps {
            if split || open.len() < 2 {
                let at = at % open.len();
                let parent = open.remove(at);
                close(&mut all, &parent);
                for offset in 0..2 {
                    let id = fresh(&mut next);
                    all.push(shard(&id, &[&parent], true));
                    open.insert(at + offset, id);
                }
            } else {
                let at = at % (open.len() - 1);
                let left = open.remove(at);
                let right = open.remove(at);
                close(&mut all, &left);
                close(&mut all, &right);
                let id = fresh(&mut next);
                all.push(shard(&id, &[&left, &right], true));
                open.insert(at, id);
            }
        }
        all
    }

    fn close(all: &mut [Shard], id: &str) {
        let found = all.iter_mut().find(|s| s.id.as_str() == id).unwrap();
        found.ending_sequence = SequenceNumber::parse("1");
    }

    proptest! {
        #[test]
        fn every_open_shard_gets_a_lease_and_parents_come_first(
            steps in proptest::collection::vec((any::<bool>(), 0usize..8), 0..12),
            initial in 1usize..5,
            seed_existing in proptest::collection::vec(any::<bool>(), 0..40),
            deleted in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            let shards = history(steps, initial);
            let existing: HashSet<ShardId> = shards.iter().zip(seed_existing.iter().chain(std::iter::repeat(&false)))
                .filter(|(_, keep)| **keep).map(|(s, _)| s.id.clone()).collect();
            let made = leases_to_create(&shards, &existing, InitialPosition::TrimHorizon);
            let mut seen: HashSet<ShardId> = existing.clone();
            for lease in &made {
                prop_assert!(!existing.contains(&lease.key));
                for parent in &lease.parents {
                    let parent_made_later = made.iter().skip_while(|l| l.key != lease.key).any(|l| &l.key == parent);
                    prop_assert!(!parent_made_later, "parent {} after child {}", parent, lease.key);
                }
                seen.insert(lease.key.clone());
            }
            for shard in shards.iter().filter(|s| s.is_open()) {
                prop_assert!(seen.contains(&shard.id));
            }
            // Running it again creates nothing: sync is idempotent.
            prop_assert!(leases_to_create(&shards, &seen, InitialPosition::TrimHorizon).is_empty());
            // Clean-up deletes finished parents whose children all have
            // leases, the oldest first: a deleted parent is never created
            // again (it would replay its records).
            let mut cleaned = seen.clone();
            for (shard, delete) in shards.iter().zip(deleted.iter().chain(std::iter::repeat(&true))) {
                let children: Vec<&Shard> = shards.iter().filter(|c| c.parents().contains(&shard.id)).collect();
                if *delete && !children.is_empty() && children.iter().all(|c| cleaned.contains(&c.id)) {
                    cleaned.remove(&shard.id);
                }
            }
            let again = leases_to_create(&shards, &cleaned, InitialPosition::TrimHorizon);
            prop_assert!(again.is_empty(), "deleted parents created again: {:?}", again.iter().map(|l| l.key.as_str()).collect::<Vec<_>>());
        }

        #[test]
        fn no_ready_child_while_a_parent_is_unfinished(
            steps in proptest::collection::vec((any::<bool>(), 0usize..8), 0..12),
            finished in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            let shards = history(steps, 2);
            let mut leases = leases_to_create(&shards, &HashSet::new(), InitialPosition::TrimHorizon);
            for (lease, done) in leases.iter_mut().zip(finished.iter().chain(std::iter::repeat(&false))) {
                if *done { lease.checkpoint = Checkpoint::ShardEnd; }
            }
            let all: LeaseMap = leases.into_iter().map(|l| (l.key.clone(), l)).collect();
            for lease in all.values() {
                if lease_state(lease, &all, &BTreeSet::new()) == LeaseState::Ready {
                    for parent in &lease.parents {
                        prop_assert!(all[parent].is_finished());
                    }
                }
            }
        }
    }
}
