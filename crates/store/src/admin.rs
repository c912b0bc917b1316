//! Operator commands on polls and results: `tally poll ...`,
//! `tally results` and `tally vote-status`. They read and write the vote
//! tables through [`VoteStore`], so they are tested against the in-memory
//! store as well as DynamoDB.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use tally_contract::time::{format_rfc3339, now_millis};
use tally_core::poll::{InvalidPoll, Poll, PollStatus};

use crate::{VoteStore, VoteStoreError};

/// Why a poll operation failed, typed so that the gateway maps each case
/// to its status without reading the message.
#[derive(Debug, thiserror::Error)]
pub enum PollOpError {
    #[error("no poll {0} (`tally poll list` shows the polls)")]
    NotFound(String),
    #[error("poll {0} exists with another definition (`tally poll show {0}`)")]
    Exists(String),
    /// The poll is invalid, or its status does not allow the change.
    #[error(transparent)]
    Invalid(#[from] InvalidPoll),
    #[error("poll {id} kept changing while it was being {doing}; try again")]
    Contended { id: String, doing: &'static str },
    #[error(transparent)]
    Store(#[from] VoteStoreError),
}

/// `tally poll close` takes effect this long after the command unless told
/// otherwise, so that every worker's poll cache (500 ms) knows the closing
/// time before it passes.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A poll as the commands print it.
pub fn poll_json(poll: &Poll) -> serde_json::Value {
    serde_json::json!({
        "poll_id": poll.id,
        "question": poll.question,
        "status": poll.status.as_str(),
        "options": poll.options.iter().map(|option| serde_json::json!({"id": option.id, "label": option.label})).collect::<Vec<_>>(),
        "opens_at": poll.opens_at.map(format_rfc3339),
        "closes_at": poll.closes_at.map(format_rfc3339),
        "counter_shards": poll.counter_shards,
        "created_at": format_rfc3339(poll.created_at),
    })
}

fn time_or_dash(millis: Option<i64>) -> String {
    millis.map(format_rfc3339).unwrap_or_else(|| "-".into())
}

fn poll_text(poll: &Poll) -> String {
    let mut text = format!(
        "poll {} ({})\n  question: {}\n  opens at: {}\n  closes at: {}\n  options:\n",
        poll.id,
        poll.status,
        poll.question,
        time_or_dash(poll.opens_at),
        time_or_dash(poll.closes_at),
    );
    for option in &poll.options {
        text.push_str(&format!("    {} = {}\n", option.id, option.label));
    }
    text
}

/// Prints a poll as JSON or as text.
pub fn print_poll(poll: &Poll, json: bool) {
    if json {
        println!("{}", poll_json(poll));
    } else {
        print!("{}", poll_text(poll));
    }
}

/// Stores a new poll (and opens it when asked).
pub async fn create_poll(
    store: &dyn VoteStore,
    mut poll: Poll,
    open: bool,
) -> Result<Poll, PollOpError> {
    if open {
        poll.open(now_millis())?;
    }
    poll.validate()?;
    if !store.create_poll(&poll).await? {
        let existing = store.get_poll(&poll.id).await?;
        if let Some(existing) = existing.filter(|existing| existing.same_definition(&poll)) {
            return Ok(existing);
        }
        return Err(PollOpError::Exists(poll.id));
    }
    Ok(poll)
}

async fn existing(store: &dyn VoteStore, id: &str) -> Result<Poll, PollOpError> {
    store
        .get_poll(id)
        .await?
        .ok_or_else(|| PollOpError::NotFound(id.to_owned()))
}

/// Opens a poll now.
pub async fn open_poll(store: &dyn VoteStore, id: &str) -> Result<Poll, PollOpError> {
    for _ in 0..5 {
        let mut poll = existing(store, id).await?;
        let before = poll.status;
        poll.open(now_millis())?;
        if store.update_poll(&poll, before).await? {
            return Ok(poll);
        }
    }
    Err(PollOpError::Contended {
        id: id.to_owned(),
        doing: "opened",
    })
}

/// Closes a poll at `at_ms` (votes that arrived before still count).
pub async fn close_poll(store: &dyn VoteStore, id: &str, at_ms: i64) -> Result<Poll, PollOpError> {
    for _ in 0..5 {
        let mut poll = existing(store, id).await?;
        let before = poll.status;
        poll.close(at_ms)?;
        if store.update_poll(&poll, before).await? {
            return Ok(poll);
        }
    }
    Err(PollOpError::Contended {
        id: id.to_owned(),
        doing: "closed",
    })
}

/// The results of a poll, as `tally results --json` prints them.
pub async fn results(store: &dyn VoteStore, id: &str) -> anyhow::Result<serde_json::Value> {
    let poll = existing(store, id).await?;
    let counts = store.counts(&poll).await?;
    let options: Vec<serde_json::Value> = poll
        .options
        .iter()
        .map(|option| {
            serde_json::json!({
                "id": option.id,
                "label": option.label,
                "votes": counts.by_option.get(&option.id).copied().unwrap_or(0),
            })
        })
        .collect();
    Ok(serde_json::json!({
        "poll_id": poll.id,
        "status": poll.status.as_str(),
        "options": options,
        "total": counts.total(),
        "as_of": format_rfc3339(now_millis()),
    }))
}

fn results_text(results: &serde_json::Value) -> String {
    let total = results["total"].as_u64().unwrap_or(0);
    let mut text = format!(
        "{} ({}) as of {}: {} votes\n",
        results["poll_id"].as_str().unwrap_or(""),
        results["status"].as_str().unwrap_or(""),
        results["as_of"].as_str().unwrap_or(""),
        total
    );
    for option in results["options"].as_array().into_iter().flatten() {
        let votes = option["votes"].as_u64().unwrap_or(0);
        let share = if total == 0 {
            0.0
        } else {
            votes as f64 * 100.0 / total as f64
        };
        let bar = "#".repeat((share / 2.5).round() as usize);
        text.push_str(&format!(
            "  {:<24} {:>12} {:>6.1}% {}\n",
            option["label"].as_str().unwrap_or(""),
            votes,
            share,
            bar
        ));
    }
    text
}

/// `tally results`: once, or every `interval` until `stop` fires.
pub async fn show_results(
    store: &dyn VoteStore,
    id: &str,
    json: bool,
    watch: Option<Duration>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let results = results(store, id).await?;
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{results}")?;
        } else {
            write!(out, "{}", results_text(&results))?;
        }
        out.flush()?;
        drop(out);
        let Some(interval) = watch else {
            return Ok(());
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// `tally vote-status`: what became of a voter's vote in a poll, or of one
/// vote (`vote_id`).
pub async fn vote_status(
    store: &dyn VoteStore,
    poll_id: &str,
    voter_id: &str,
    vote_id: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let counted = store.get_vote(poll_id, voter_id).await?;
    let rejects = store.rejects_of(poll_id, voter_id).await?;
    let reject_json: Vec<serde_json::Value> = rejects
        .iter()
        .filter(|reject| vote_id.is_none_or(|id| reject.vote_id.as_deref() == Some(id)))
        .map(|reject| {
            serde_json::json!({
                "vote_id": reject.vote_id,
                "reason": reject.reason.as_str(),
                "detail": reject.detail,
                "position": reject.origin.key(),
                "arrived_at": format_rfc3339(reject.arrival_ms),
            })
        })
        .collect();
    let counted_json = counted.as_ref().map(|vote| {
        serde_json::json!({
            "vote_id": vote.vote_id,
            "option": vote.option,
            "position": vote.origin.key(),
            "arrived_at": format_rfc3339(vote.arrival_ms),
        })
    });
    let status = match (vote_id, &counted) {
        (Some(id), Some(vote)) if vote.vote_id == id => "counted",
        (Some(_), _) if !reject_json.is_empty() => "rejected",
        (Some(_), Some(_)) => "duplicate",
        (None, Some(_)) => "counted",
        (None, None) if !reject_json.is_empty() => "rejected",
        _ => "unknown",
    };
    Ok(serde_json::json!({
        "poll_id": poll_id,
        "voter_id": voter_id,
        "vote_id": vote_id,
        "status": status,
        "counted": counted_json,
        "rejected": reject_json,
    }))
}

/// The polls as a table.
pub fn polls_table(polls: &[Poll]) -> String {
    let mut text = format!(
        "{:<24} {:<7} {:>7} {:<24} {:<24} {}\n",
        "POLL", "STATUS", "OPTIONS", "OPENS AT", "CLOSES AT", "QUESTION"
    );
    for poll in polls {
        text.push_str(&format!(
            "{:<24} {:<7} {:>7} {:<24} {:<24} {}\n",
            poll.id,
            poll.status,
            poll.options.len(),
            time_or_dash(poll.opens_at),
            time_or_dash(poll.closes_at),
            poll.question
        ));
    }
    text
}

/// A new poll from the command line's parts.
#[allow(clippy::too_many_arguments)]
pub fn new_poll(
    id: &str,
    question: &str,
    options: &[String],
    opens_at: Option<&str>,
    closes_at: Option<&str>,
    counter_shards: u32,
) -> anyhow::Result<Poll> {
    let time = |text: Option<&str>, flag: &str| -> anyhow::Result<Option<i64>> {
        text.map(|text| {
            tally_contract::time::parse_rfc3339(text)
                .with_context(|| format!("invalid {flag} {text:?}: not an RFC 3339 time"))
        })
        .transpose()
    };
    let options = options
        .iter()
        .map(|text| tally_core::poll::parse_option(text))
        .collect::<Result<Vec<_>, _>>()?;
    let poll = Poll {
        id: id.to_owned(),
        question: question.to_owned(),
        options,
        opens_at: time(opens_at, "--opens-at")?,
        closes_at: time(closes_at, "--closes-at")?,
        status: PollStatus::Draft,
        counter_shards,
        created_at: now_millis(),
    };
    poll.validate()?;
    Ok(poll)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::memory::MemoryVoteStore;
    use crate::CountStore;
    use crate::{Origin, RejectItem, VoteItem};
    use tally_contract::vote::Reason;

    fn store() -> MemoryVoteStore {
        MemoryVoteStore::new(Arc::new(tally_lease::MemoryStore::new()))
    }

    #[tokio::test]
    async fn poll_life_cycle_through_the_store() {
        let store = store();
        let poll = new_poll("p", "Q?", &["a=Alpha".into(), "b".into()], None, None, 4).unwrap();
        let created = create_poll(&store, poll.clone(), false).await.unwrap();
        assert_eq!(created.status, PollStatus::Draft);
        let mut again = created.clone();
        again.created_at += 5_000;
        assert_eq!(
            create_poll(&store, again, false).await.unwrap(),
            created,
            "creating the same poll again (later) is a no-op"
        );
        let mut other = created.clone();
        other.question = "Another?".into();
        assert!(create_poll(&store, other, false)
            .await
            .unwrap_err()
            .to_string()
            .contains("another definition"));
        let opened = open_poll(&store, "p").await.unwrap();
        assert_eq!(opened.status, PollStatus::Open);
        let closed = close_poll(&store, "p", now_millis() + 2_000).await.unwrap();
        assert_eq!(closed.status, PollStatus::Closed);
        assert!(open_poll(&store, "p").await.is_err());
        assert!(open_poll(&store, "nope")
            .await
            .unwrap_err()
            .to_string()
            .contains("no poll nope"));
        let results = results(&store, "p").await.unwrap();
        assert_eq!(results["total"], 0);
        assert_eq!(results["options"][0]["label"], "Alpha");
        assert_eq!(results["status"], "closed");
        assert!(new_poll("p", "Q?", &["a".into()], None, None, 4).is_err());
        assert!(
            new_poll("p", "Q?", &["a".into(), "b".into()], Some("soon"), None, 4)
                .unwrap_err()
                .to_string()
                .contains("--opens-at")
        );
    }

    #[tokio::test]
    async fn vote_status_tells_counted_duplicate_rejected_and_unknown() {
        let store = store();
        let origin = |sequence: &str| Origin {
            shard: "s".into(),
            sequence: sequence.into(),
            sub_sequence: 0,
        };
        store
            .put_vote(&VoteItem {
                poll_id: "p".into(),
                voter_id: "u1".into(),
                option: "a".into(),
                vote_id: "v1".into(),
                origin: origin("1"),
                arrival_ms: 0,
            })
            .await
            .unwrap();
        store
            .put_reject(&RejectItem {
                origin: origin("2"),
                reason: Reason::InvalidOption,
                detail: "no option z".into(),
                raw: vec![],
                raw_len: 0,
                partition_key: "u2".into(),
                arrival_ms: 0,
                poll_id: Some("p".into()),
                voter_id: Some("u2".into()),
                vote_id: Some("v2".into()),
            })
            .await
            .unwrap();
        let status = |voter: &'static str, vote: Option<&'static str>| {
            let store = store.clone();
            async move {
                vote_status(&store, "p", voter, vote).await.unwrap()["status"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        assert_eq!(status("u1", None).await, "counted");
        assert_eq!(status("u1", Some("v1")).await, "counted");
        assert_eq!(status("u1", Some("v9")).await, "duplicate");
        assert_eq!(status("u2", None).await, "rejected");
        assert_eq!(status("u2", Some("v2")).await, "rejected");
        assert_eq!(status("u3", None).await, "unknown");
    }
}
