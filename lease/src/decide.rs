//! Lease decisions, free of I/O: who is alive, which leases to take, which
//! to ask for. The coordinator feeds it what it read; the simulation and the
//! properties below drive it directly.
//!
//! Liveness follows KCL's rule without trusting anybody's clock: a worker is
//! dead once its heartbeat counter has not changed, as seen by the observer,
//! for the lease duration on the observer's own monotonic clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::time::Instant;

use crate::graph::{lease_state, LeaseState};
use crate::store::FleetView;
use crate::types::{Fence, Lease, LeaseMap, ShardId};

#[derive(Clone, Debug)]
struct Seen {
    beat: u64,
    leases: u32,
    changed_at: Instant,
}

/// What one observer has seen of every worker's heartbeat.
#[derive(Clone, Debug)]
pub struct Liveness {
    lease_duration: Duration,
    seen: BTreeMap<String, Seen>,
}

impl Liveness {
    pub fn new(lease_duration: Duration) -> Self {
        Self {
            lease_duration,
            seen: BTreeMap::new(),
        }
    }

    /// Records a fleet view read at `now`. Workers missing from it are
    /// forgotten (they left, or somebody removed them as dead).
    pub fn observe(&mut self, view: &FleetView, now: Instant) {
        self.seen
            .retain(|worker, _| view.workers.contains_key(worker));
        for (worker, beat) in &view.workers {
            match self.seen.get_mut(worker) {
                Some(seen) if seen.beat == beat.beat => seen.leases = beat.leases,
                Some(seen) => {
                    seen.beat = beat.beat;
                    seen.leases = beat.leases;
                    seen.changed_at = now;
                }
                None => {
                    self.seen.insert(
                        worker.clone(),
                        Seen {
                            beat: beat.beat,
                            leases: beat.leases,
                            changed_at: now,
                        },
                    );
                }
            }
        }
    }

    pub fn is_live(&self, worker: &str, now: Instant) -> bool {
        self.seen
            .get(worker)
            .is_some_and(|seen| now.duration_since(seen.changed_at) < self.lease_duration)
    }

    /// Live workers and the lease counts they reported.
    pub fn live(&self, now: Instant) -> BTreeMap<String, u32> {
        self.seen
            .iter()
            .filter(|(_, seen)| now.duration_since(seen.changed_at) < self.lease_duration)
            .map(|(worker, seen)| (worker.clone(), seen.leases))
            .collect()
    }

    /// Workers seen, but dead, with the beat they died at.
    pub fn dead(&self, now: Instant) -> Vec<(String, u64)> {
        self.seen
            .iter()
            .filter(|(_, seen)| now.duration_since(seen.changed_at) >= self.lease_duration)
            .map(|(worker, seen)| (worker.clone(), seen.beat))
            .collect()
    }
}

/// One thing the coordinator should try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Take a free or expired lease (fenced on what was read).
    Take(Fence),
    /// Ask the owner to hand this lease over after its in-flight batch.
    RequestHandoff(Fence),
}

/// Limits of one planning round.
#[derive(Clone, Copy, Debug)]
pub struct PlanLimits {
    pub max_leases: usize,
    pub max_steals: usize,
}

/// The inputs of one planning round.
pub struct PlanInput<'a> {
    pub me: &'a str,
    pub leases: &'a LeaseMap,
    /// Keys of the table's items that do not read as leases.
    pub unreadable: &'a BTreeSet<ShardId>,
    /// Live workers (me included) and their lease counts; mine is replaced
    /// by what I actually hold.
    pub live: &'a BTreeMap<String, u32>,
    /// Leases I hold now.
    pub mine: usize,
    /// Handoffs I asked for that are still outstanding.
    pub pending_handoffs: usize,
    pub limits: PlanLimits,
}

/// Fair share: every worker ends with `floor(T/W)` or `ceil(T/W)` leases.
pub fn fair_share(total: usize, workers: usize) -> (usize, usize) {
    let workers = workers.max(1);
    (total / workers, total.div_ceil(workers))
}

/// Decides one round: free and expired leases first (up to the fair share),
/// then, only when none is left and no handoff of mine is outstanding, ask
/// the most loaded worker for up to half the gap.
pub fn plan(input: &PlanInput<'_>, rng: &mut impl Rng) -> Vec<Action> {
    let me = input.me;
    let ready: Vec<&Lease> = input
        .leases
        .values()
        .filter(|lease| lease_state(lease, input.leases, input.unreadable) == LeaseState::Ready)
        .collect();
    let mut counts = input.live.clone();
    counts.insert(me.to_owned(), input.mine as u32);
    let have = input.mine + input.pending_handoffs;
    let (fair_min, fair_max) = fair_share(ready.len(), counts.len());
    let room = input.limits.max_leases.saturating_sub(have);

    let is_live = |worker: &str| worker == me || input.live.contains_key(worker);
    let mut available: Vec<&Lease> = ready
        .iter()
        .copied()
        .filter(|lease| match &lease.owner {
            None => true,
            Some(owner) => !is_live(owner),
        })
        .collect();
    available.sort_by(|a, b| a.key.cmp(&b.key));
    available.shuffle(rng);
    let want = fair_max.saturating_sub(have).min(room);
    if !available.is_empty() {
        return available
            .into_iter()
            .take(want)
            .map(|lease| Action::Take(lease.fence()))
            .collect();
    }
    if input.pending_handoffs > 0 || room == 0 {
        return Vec::new();
    }
    // The most loaded worker; among equals, one at random, so that workers
    // joining together ask different owners instead of all asking one.
    let most = counts
        .iter()
        .filter(|(worker, _)| worker.as_str() != me)
        .map(|(_, count)| *count)
        .max();
    let tied: Vec<(&String, &u32)> = counts
        .iter()
        .filter(|(worker, count)| worker.as_str() != me && Some(**count) == most)
        .collect();
    let Some(&(victim, victim_count)) = tied.choose(rng) else {
        return Vec::new();
    };
    let victim_count = *victim_count as usize;
    if victim_count < have + 2 {
        return Vec::new();
    }
    // Never past the fair share's ceiling: a worker that stole up to it
    // and kept stealing (its view of the others' counts lags) would
    // overshoot, and the others would have to steal back.
    let wanted = ((victim_count - have) / 2)
        .min(input.limits.max_steals)
        .min(fair_min.saturating_sub(have).max(1))
        .min(fair_max.saturating_sub(have))
        .min(room);
    let mut candidates: Vec<&Lease> = ready
        .into_iter()
        .filter(|lease| {
            lease.owner.as_deref() == Some(victim.as_str()) && lease.pending_owner.is_none()
        })
        .collect();
    candidates.sort_by(|a, b| a.key.cmp(&b.key));
    candidates.shuffle(rng);
    candidates
        .into_iter()
        .take(wanted)
        .map(|lease| Action::RequestHandoff(lease.fence()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Checkpoint, ShardId};
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn leases_owned(owners: &[Option<&str>]) -> LeaseMap {
        owners
            .iter()
            .enumerate()
            .map(|(index, owner)| {
                let mut lease = Lease::new(
                    ShardId::new(format!("s{index:03}")),
                    Checkpoint::TrimHorizon,
                );
                lease.owner = owner.map(str::to_owned);
                (lease.key.clone(), lease)
            })
            .collect()
    }

    fn count_of(leases: &LeaseMap, worker: &str) -> usize {
        leases
            .values()
            .filter(|l| l.owner.as_deref() == Some(worker))
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_expires_on_observer_clock_only() {
        let mut liveness = Liveness::new(Duration::from_secs(3));
        let mut view = FleetView::default();
        view.workers
            .insert("a".into(), crate::store::WorkerBeat { beat: 1, leases: 2 });
        let start = Instant::now();
        liveness.observe(&view, start);
        assert!(liveness.is_live("a", start + Duration::from_millis(2900)));
        assert!(!liveness.is_live("a", start + Duration::from_secs(3)));
        view.workers.get_mut("a").unwrap().beat = 2;
        liveness.observe(&view, start + Duration::from_secs(4));
        assert!(liveness.is_live("a", start + Duration::from_secs(5)));
        assert_eq!(
            liveness.live(start + Duration::from_secs(5)).get("a"),
            Some(&2)
        );
        liveness.observe(&FleetView::default(), start + Duration::from_secs(5));
        assert!(!liveness.is_live("a", start + Duration::from_secs(5)));
    }

    #[test]
    fn takes_free_and_dead_leases_up_to_fair_share() {
        let leases = leases_owned(&[None, None, Some("dead"), Some("b"), Some("b"), None]);
        let live = BTreeMap::from([("me".to_owned(), 0), ("b".to_owned(), 2)]);
        let input = PlanInput {
            me: "me",
            leases: &leases,
            unreadable: &BTreeSet::new(),
            live: &live,
            mine: 0,
            pending_handoffs: 0,
            limits: PlanLimits {
                max_leases: 100,
                max_steals: 8,
            },
        };
        let actions = plan(&input, &mut rand::rngs::StdRng::seed_from_u64(1));
        assert_eq!(actions.len(), 3, "fair share of 6 over 2 is 3");
        assert!(actions.iter().all(|a| matches!(a, Action::Take(f) if f.owner.is_none() || f.owner.as_deref() == Some("dead"))));
    }

    static NONE: BTreeSet<ShardId> = BTreeSet::new();

    /// "me" planning with `mine` leases, no request outstanding, default limits.
    fn input_for_me<'a>(
        leases: &'a LeaseMap,
        live: &'a BTreeMap<String, u32>,
        mine: usize,
    ) -> PlanInput<'a> {
        PlanInput {
            me: "me",
            leases,
            unreadable: &NONE,
            live,
            mine,
            pending_handoffs: 0,
            limits: PlanLimits {
                max_leases: 100,
                max_steals: 8,
            },
        }
    }

    /// Found by the scale model: with lagging counts of the others, a
    /// worker at its fair share kept asking for one more lease a cycle.
    #[test]
    fn never_asks_past_the_fair_share_ceiling() {
        // 9 leases: me 3 (the ceiling of 9 over 3 workers), b reports 5
        // (stale), c 1.
        let mut owners: Vec<Option<&str>> = vec![Some("me"); 3];
        owners.extend(std::iter::repeat_n(Some("b"), 5));
        owners.push(Some("c"));
        let leases = leases_owned(&owners);
        let live = BTreeMap::from([
            ("me".to_owned(), 3),
            ("b".to_owned(), 5),
            ("c".to_owned(), 1),
        ]);
        let input = input_for_me(&leases, &live, 3);
        for seed in 0..20 {
            let actions = plan(&input, &mut rand::rngs::StdRng::seed_from_u64(seed));
            assert_eq!(actions, Vec::new(), "seed {seed}");
        }
    }

    /// Workers joining together spread their requests over the owners that
    /// hold the most, instead of all asking the same one.
    #[test]
    fn ties_for_most_loaded_are_broken_at_random() {
        let mut owners: Vec<Option<&str>> = Vec::new();
        for owner in ["a", "b", "c", "d"] {
            owners.extend(std::iter::repeat_n(Some(owner), 6));
        }
        let leases = leases_owned(&owners);
        let live = BTreeMap::from([
            ("me".to_owned(), 0),
            ("a".to_owned(), 6),
            ("b".to_owned(), 6),
            ("c".to_owned(), 6),
            ("d".to_owned(), 6),
        ]);
        let input = input_for_me(&leases, &live, 0);
        let victims: std::collections::BTreeSet<String> = (0..40)
            .flat_map(|seed| plan(&input, &mut rand::rngs::StdRng::seed_from_u64(seed)))
            .filter_map(|action| match action {
                Action::RequestHandoff(fence) => fence.owner,
                Action::Take(_) => None,
            })
            .collect();
        assert_eq!(
            victims.len(),
            4,
            "every tied owner is asked by some seed: {victims:?}"
        );
    }

    #[test]
    fn steals_several_when_far_from_balance_and_none_when_balanced() {
        let owners: Vec<Option<&str>> = std::iter::repeat_n(Some("b"), 64).collect();
        let leases = leases_owned(&owners);
        let live = BTreeMap::from([("me".to_owned(), 0), ("b".to_owned(), 64)]);
        let input = PlanInput {
            me: "me",
            leases: &leases,
            unreadable: &BTreeSet::new(),
            live: &live,
            mine: 0,
            pending_handoffs: 0,
            limits: PlanLimits {
                max_leases: 100,
                max_steals: 8,
            },
        };
        let actions = plan(&input, &mut rand::rngs::StdRng::seed_from_u64(1));
        assert_eq!(actions.len(), 8);
        let mut balanced = leases_owned(&[Some("b"), Some("b"), Some("me")]);
        balanced.values_mut().for_each(|_| {});
        let live = BTreeMap::from([("me".to_owned(), 1), ("b".to_owned(), 2)]);
        let input = PlanInput {
            leases: &balanced,
            unreadable: &BTreeSet::new(),
            live: &live,
            mine: 1,
            ..input
        };
        assert!(plan(&input, &mut rand::rngs::StdRng::seed_from_u64(1)).is_empty());
    }

    /// Runs planning rounds over a fleet with instant effects, every worker
    /// in turn, and returns the number of lease moves.
    fn converge(
        leases: &mut LeaseMap,
        workers: &[String],
        seed: u64,
        max_steals: usize,
    ) -> Option<usize> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut moves = 0;
        for _round in 0..200 {
            let mut changed = false;
            for worker in workers {
                let live: BTreeMap<String, u32> = workers
                    .iter()
                    .map(|w| (w.clone(), count_of(leases, w) as u32))
                    .collect();
                let input = PlanInput {
                    me: worker,
                    leases,
                    unreadable: &BTreeSet::new(),
                    live: &live,
                    mine: count_of(leases, worker),
                    pending_handoffs: 0,
                    limits: PlanLimits {
                        max_leases: 1000,
                        max_steals,
                    },
                };
                let actions = plan(&input, &mut rng);
                for action in actions {
                    let (Action::Take(fence) | Action::RequestHandoff(fence)) = action;
                    let lease = leases.get_mut(&fence.key).unwrap();
                    if lease.owner == fence.owner {
                        lease.owner = Some(worker.clone());
                        moves += 1;
                        changed = true;
                    }
                }
            }
            if !changed {
                return Some(moves);
            }
        }
        None
    }

    proptest! {
        #[test]
        fn converges_to_balance_within_one_without_thrashing(
            shard_count in 1usize..80,
            worker_count in 1usize..8,
            assignment in proptest::collection::vec(0usize..10, 80),
            seed in any::<u64>(),
            max_steals in 1usize..10,
        ) {
            let workers: Vec<String> = (0..worker_count).map(|w| format!("w{w}")).collect();
            // Leases start owned by live workers, dead ones ("gone") or nobody.
            let owners: Vec<Option<String>> = (0..shard_count).map(|i| match assignment[i] {
                0 => None,
                1 => Some("gone".to_owned()),
                n => Some(workers[n % worker_count].clone()),
            }).collect();
            let mut leases = leases_owned(&owners.iter().map(|o| o.as_deref()).collect::<Vec<_>>());
            // The fewest moves that reach balance: every free or dead
            // worker's lease once, and what live workers hold beyond their
            // share (the fullest keep the larger shares).
            let orphaned = owners.iter().filter(|o| o.as_deref().is_none_or(|o| o == "gone")).count();
            let mut held: Vec<usize> = workers.iter().map(|w| owners.iter().filter(|o| o.as_deref() == Some(w.as_str())).count()).collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            let (share, larger) = (shard_count / worker_count, shard_count % worker_count);
            let excess: usize = held.iter().enumerate().map(|(rank, count)| count.saturating_sub(share + usize::from(rank < larger))).sum();
            let needed = orphaned + excess;
            let moves = converge(&mut leases, &workers, seed, max_steals);
            prop_assert!(moves.is_some(), "did not settle in 200 rounds");
            let counts: Vec<usize> = workers.iter().map(|w| count_of(&leases, w)).collect();
            prop_assert_eq!(counts.iter().sum::<usize>(), shard_count, "every lease owned by a live worker");
            let max = *counts.iter().max().unwrap();
            let min = *counts.iter().min().unwrap();
            prop_assert!(max - min <= 1, "unbalanced at rest: {:?}", counts);
            // No thrashing: beyond the moves balance needs, only what the
            // fair-share ceiling allows: a worker takes up to the larger
            // share, so each may hold one lease that has to move on again.
            prop_assert!(moves.unwrap() <= needed + worker_count, "moves {}, needed {needed}", moves.unwrap());
        }
    }
}
