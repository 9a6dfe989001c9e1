//! Quorum requests: ask N distinct workers the same thing and believe an answer only when
//! a strict majority of the N gave it, byte for byte.
//!
//! Workers are volunteers and untrusted: one of them may answer a balance of its own
//! making. A caller that asks three and needs two identical answers is fooled only when
//! two liars agree. The vote is on the whole answer, the service status and every byte of
//! the body, so that answers that differ in anything (a block count one higher on a
//! faster node included) do not agree; read-only Nano answers of nodes in sync are
//! identical.
//!
//! [`tally`] is the vote (pure); [`request_quorum`] asks the workers and tallies.

use std::collections::HashSet;
use std::fmt;

use rand::seq::SliceRandom;

use super::client::{Answer, RpcClient};
use super::error::CallError;
use crate::protocol::identity::NodeId;

/// One worker's outcome in a vote: who (its node id, or its address when it was never
/// reached) and its answer (status and body) or why it gave none.
pub type Vote = (String, Result<(u16, Vec<u8>), String>);

/// Answers needed out of `asked` for a strict majority: `asked / 2 + 1`.
pub fn majority(asked: usize) -> usize {
    asked / 2 + 1
}

/// Why a vote found no majority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// Workers asked.
    pub asked: usize,
    /// Identical answers needed.
    pub need: usize,
    /// The distinct answers, most voted first: who gave it, and the answer shortened
    /// (status and the first bytes of the body).
    pub answers: Vec<(Vec<String>, String)>,
    /// Workers that gave no answer, with the reason.
    pub failed: Vec<(String, String)>,
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no {} of {} workers agree on the answer:",
            self.need, self.asked
        )?;
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { " " } else { "; " };
            first = false;
            f.write_str(s)
        };
        for (workers, answer) in &self.answers {
            sep(f)?;
            write!(f, "{} answered {answer}", workers.join(", "))?;
        }
        for (worker, reason) in &self.failed {
            sep(f)?;
            write!(f, "{worker} failed: {reason}")?;
        }
        Ok(())
    }
}

/// Bytes of a body shown in a [`Disagreement`].
const SHOWN_BODY_BYTES: usize = 60;

/// An answer shortened for a message: `HTTP 200 {"count":"12...`.
fn shorten(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN_BODY_BYTES)]);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let more = if body.len() > SHOWN_BODY_BYTES {
        "..."
    } else {
        ""
    };
    format!("HTTP {status} {text}{more}")
}

/// The vote: the index in `votes` of an answer given identically by at least
/// [`majority`]`(asked)` workers, or the [`Disagreement`].
///
/// `asked` is the number of workers asked; a worker that failed counts as asked but
/// votes for nothing, so with 3 asked, one liar and one dead worker, no answer wins.
pub fn tally(asked: usize, votes: &[Vote]) -> Result<usize, Disagreement> {
    let need = majority(asked);
    // Distinct answers, each with the index of its first vote and its voters.
    let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
    let mut failed = Vec::new();
    for (index, (worker, outcome)) in votes.iter().enumerate() {
        match outcome {
            Ok(answer) => {
                let same = groups
                    .iter_mut()
                    .find(|(first, _)| votes[*first].1.as_ref().ok() == Some(answer));
                match same {
                    Some((_, voters)) => voters.push(worker.clone()),
                    None => groups.push((index, vec![worker.clone()])),
                }
            }
            Err(reason) => failed.push((worker.clone(), reason.clone())),
        }
    }
    if let Some((index, _)) = groups.iter().find(|(_, voters)| voters.len() >= need) {
        return Ok(*index);
    }
    groups.sort_by_key(|(_, voters)| std::cmp::Reverse(voters.len()));
    let answers = groups
        .into_iter()
        .map(|(index, voters)| {
            let shown = match &votes[index].1 {
                Ok((status, body)) => shorten(*status, body),
                Err(_) => String::new(),
            };
            (voters, shown)
        })
        .collect();
    Err(Disagreement {
        asked,
        need,
        answers,
        failed,
    })
}

/// Why a quorum request has no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuorumError {
    /// The lookup failed, or (for a quorum of 1) the request did.
    #[error(transparent)]
    Call(#[from] CallError),
    /// Fewer workers announce the key than the quorum asks for: lower `--quorum` or wait
    /// for more workers.
    #[error("quorum of {need} asked, but only {found} worker(s) announce {key:?}")]
    TooFewWorkers {
        /// The key.
        key: String,
        /// Workers found.
        found: usize,
        /// Workers needed.
        need: usize,
    },
    /// The workers did not agree.
    #[error("{0}")]
    Disagreement(Disagreement),
}

impl QuorumError {
    /// The short code: the call's own, `no_quorum` or `disagreement`
    /// ([`super::error`]).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Call(e) => e.code(),
            Self::TooFewWorkers { .. } => "no_quorum",
            Self::Disagreement(_) => "disagreement",
        }
    }

    /// The exit code: the call's own, or [`super::error::exit::NO_QUORUM`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Call(e) => e.exit_code(),
            _ => super::error::exit::NO_QUORUM,
        }
    }
}

/// Sends `body` to `n` distinct workers of `key` at once (chosen at random among those
/// found: public and behind NATs alike, counted by node id) and returns the answer that a
/// strict majority of `n` gave identically.
///
/// A worker that fails (unreachable, or no answer within the client's
/// `attempt_timeout`), or that turns out to be a node already asked (one node found at
/// two addresses), is replaced by another found worker not asked yet, while there are
/// any, so that a dead worker costs one attempt rather than the quorum. Failures are
/// listed in the [`Disagreement`] when no answer wins. `n` of 0 or 1 is a plain
/// [`RpcClient::request`].
pub async fn request_quorum(
    client: &RpcClient,
    key: &str,
    body: &[u8],
    n: usize,
) -> Result<Answer, QuorumError> {
    if n <= 1 {
        return Ok(client.request(key, body).await?);
    }
    let mut spares = client.candidates(key).await?;
    if spares.len() < n {
        return Err(QuorumError::TooFewWorkers {
            key: key.to_string(),
            found: spares.len(),
            need: n,
        });
    }
    spares.shuffle(&mut rand::rng());
    let mut round = spares.split_off(spares.len() - n);
    let mut voted: HashSet<NodeId> = HashSet::new();
    let mut votes: Vec<Vote> = Vec::new();
    let mut answers: Vec<Answer> = Vec::new();
    let attempt = client.config().attempt_timeout;
    while !round.is_empty() {
        let results = futures::future::join_all(round.iter().map(|c| async move {
            (
                c.to_string(),
                client.request_candidate(c, key, body, attempt).await,
            )
        }))
        .await;
        round = Vec::new();
        for (name, result) in results {
            match result {
                Ok(answer) if !voted.insert(answer.node) => {
                    // The same node a second time: its vote counts once.
                    if let Some(spare) = spares.pop() {
                        round.push(spare);
                    }
                }
                Ok(answer) => {
                    votes.push((
                        answer.node.to_string(),
                        Ok((answer.status, answer.body.clone())),
                    ));
                    answers.push(answer);
                }
                Err(e) => {
                    votes.push((name, Err(e.to_string())));
                    if let Some(spare) = spares.pop() {
                        round.push(spare);
                    }
                }
            }
        }
    }
    // Answers first, in the order they were pushed, so that a vote's index among the
    // answers is its index in `answers`.
    votes.sort_by_key(|(_, outcome)| outcome.is_err());
    let winner = tally(n, &votes).map_err(QuorumError::Disagreement)?;
    // `tally` only elects answers, which come first in `votes`.
    answers
        .into_iter()
        .nth(winner)
        .ok_or_else(|| QuorumError::TooFewWorkers {
            key: key.to_string(),
            found: 0,
            need: n,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(port: u16) -> String {
        format!("127.0.0.1:{port}")
    }

    fn ok(port: u16, body: &str) -> Vote {
        (w(port), Ok((200, body.as_bytes().to_vec())))
    }

    fn dead(port: u16) -> Vote {
        (w(port), Err("no answer within 3000 ms".to_string()))
    }

    #[test]
    fn majority_is_strict() {
        assert_eq!(
            [1, 2, 3, 4, 5].map(majority),
            [1, 2, 2, 3, 3],
            "1 of 1, 2 of 2, 2 of 3, 3 of 4, 3 of 5"
        );
    }

    #[test]
    fn two_honest_outvote_a_liar() {
        let votes = [
            ok(1, "{\"count\":\"9\"}"),
            ok(2, "{\"count\":\"1\"}"),
            ok(3, "{\"count\":\"1\"}"),
        ];
        assert_eq!(tally(3, &votes), Ok(1));
    }

    #[test]
    fn two_honest_outvote_a_dead_worker() {
        let votes = [ok(1, "a"), dead(2), ok(3, "a")];
        assert_eq!(tally(3, &votes), Ok(0));
    }

    #[test]
    fn a_liar_and_a_dead_worker_leave_no_majority() {
        let votes = [ok(1, "honest"), ok(2, "lie"), dead(3)];
        let disagreement = tally(3, &votes).unwrap_err();
        assert_eq!(disagreement.need, 2);
        assert_eq!(disagreement.answers.len(), 2);
        assert_eq!(
            disagreement.failed,
            vec![(w(3), "no answer within 3000 ms".into())]
        );
        let text = disagreement.to_string();
        assert!(text.starts_with("no 2 of 3 workers agree"), "{text}");
        assert!(
            text.contains("127.0.0.1:1 answered HTTP 200 honest"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1:2 answered HTTP 200 lie"), "{text}");
        assert!(text.contains("127.0.0.1:3 failed: no answer"), "{text}");
    }

    #[test]
    fn status_counts_in_the_vote() {
        let votes = [
            (w(1), Ok((200, b"x".to_vec()))),
            (w(2), Ok((422, b"x".to_vec()))),
        ];
        assert!(tally(2, &votes).is_err());
    }

    #[test]
    fn one_byte_of_difference_is_a_disagreement() {
        let votes = [ok(1, "{\"balance\":\"1\"}"), ok(2, "{\"balance\":\"1\"} ")];
        assert!(tally(2, &votes).is_err());
    }

    #[test]
    fn all_failed_is_a_disagreement_with_no_answers() {
        let d = tally(2, &[dead(1), dead(2)]).unwrap_err();
        assert!(d.answers.is_empty());
        assert_eq!(d.failed.len(), 2);
    }

    #[test]
    fn long_answers_are_shortened() {
        let long = "x".repeat(500);
        let d = tally(2, &[ok(1, &long), ok(2, "y")]).unwrap_err();
        let text = d.to_string();
        assert!(text.len() < 300, "{text}");
        assert!(text.contains("..."), "{text}");
    }
}
