//! Whether an etcd store answers (see docs/store-backends.md, "When etcd
//! loses its quorum"). Every request's outcome is noted here; the first
//! failure for want of a quorum (or of any member) turns the store
//! *unavailable*: that is logged once, `/readyz` reports it, and requests
//! fail at once with [`StoreError::Unavailable`] instead of each waiting
//! out a timeout, except one try every [`UNAVAILABLE_BACKOFF`] (and the
//! daemon's probe, [`PROBE_EVERY`]). The first answer turns it available
//! again, logged once too. An outcome only counts when its request was
//! sent after the last turn: a request sent before the store came back that
//! fails afterwards, or one sent before it went away that is answered
//! afterwards, tells of a time already past (it would make the log flap).
//!
//! [`StoreError::Unavailable`]: super::StoreError::Unavailable

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long requests fail at once after the store was found unavailable,
/// before one is sent again. A controller whose pass failed so waits as
/// long before its next pass (see `controller::failed_pass`).
pub const UNAVAILABLE_BACKOFF: Duration = Duration::from_secs(2);

/// How often a daemon asks an etcd store whether it answers (a count-only
/// read): how soon `/readyz` tells a lost or a regained quorum while no
/// other request is made.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long the probe waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why and since when a store does not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// The store's location (`etcd://ENDPOINTS/PREFIX`: never a secret).
    pub location: String,
    /// What the last failed request said.
    pub message: String,
    /// How long it has not answered.
    pub for_: Duration,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    message: String,
    /// Requests fail at once until then.
    retry_at: Instant,
}

/// The availability of one store connection.
#[derive(Debug)]
pub(crate) struct Health {
    location: String,
    down: Mutex<Option<Down>>,
    /// When it last turned available (or was opened).
    up_since: Mutex<Instant>,
}

impl Health {
    pub fn new(location: String) -> Health {
        Health {
            location,
            down: Mutex::new(None),
            up_since: Mutex::new(Instant::now()),
        }
    }

    /// Whether a request may be sent: Err(the outage's message) while
    /// requests fail at once. A request let through pushes the next one
    /// [`UNAVAILABLE_BACKOFF`] further (one try at a time), and so does
    /// its failure.
    pub fn admit(&self) -> Result<(), String> {
        let mut g = self.down.lock().expect("health lock");
        match g.as_mut() {
            None => Ok(()),
            Some(d) if Instant::now() >= d.retry_at => {
                d.retry_at = Instant::now() + UNAVAILABLE_BACKOFF;
                Ok(())
            }
            Some(d) => Err(format!(
                "{} (not answering for {}s; tried again every {}s)",
                d.message,
                d.since.elapsed().as_secs(),
                UNAVAILABLE_BACKOFF.as_secs()
            )),
        }
    }

    /// A request sent at `sent` was answered.
    pub fn answered(&self, sent: Instant) {
        let mut g = self.down.lock().expect("health lock");
        // Sent before the outage began: its answer may be older than it.
        if g.as_ref().is_some_and(|d| sent < d.since) {
            return;
        }
        let was = g.take();
        if let Some(d) = was {
            *self.up_since.lock().expect("health lock") = Instant::now();
            tracing::warn!(
                store = %self.location,
                after_seconds = d.since.elapsed().as_secs(),
                "store available again: writes resume"
            );
        }
    }

    /// A request sent at `sent` got no answer (no quorum, no member
    /// reachable).
    pub fn unanswered(&self, sent: Instant, message: &str) {
        let mut g = self.down.lock().expect("health lock");
        match g.as_mut() {
            // Sent while it was away, failed after it came back: stale.
            None if sent < *self.up_since.lock().expect("health lock") => {}
            Some(d) => {
                d.message = message.to_string();
                d.retry_at = Instant::now() + UNAVAILABLE_BACKOFF;
            }
            None => {
                tracing::warn!(
                    store = %self.location,
                    error = %message,
                    "store unavailable (no quorum, or no member answers): nothing is written until it answers; agents keep running"
                );
                *g = Some(Down {
                    since: Instant::now(),
                    message: message.to_string(),
                    retry_at: Instant::now() + UNAVAILABLE_BACKOFF,
                });
            }
        }
    }

    /// The current outage, if any.
    pub fn outage(&self) -> Option<Outage> {
        self.down
            .lock()
            .expect("health lock")
            .as_ref()
            .map(|d| Outage {
                location: self.location.clone(),
                message: d.message.clone(),
                for_: d.since.elapsed(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_told_once_fails_fast_and_ends_at_the_first_answer() {
        let h = Health::new("etcd://h:1/p".into());
        assert!(h.admit().is_ok());
        assert!(h.outage().is_none());
        h.unanswered(Instant::now(), "no leader");
        let o = h.outage().unwrap();
        assert_eq!(o.location, "etcd://h:1/p");
        assert_eq!(o.message, "no leader");
        // Within the backoff: refused at once, naming the cause.
        let e = h.admit().unwrap_err();
        assert!(e.starts_with("no leader"), "{e}");
        h.unanswered(Instant::now(), "timed out");
        assert_eq!(h.outage().unwrap().message, "timed out");
        h.answered(Instant::now());
        assert!(h.outage().is_none());
        assert!(h.admit().is_ok());
    }

    #[test]
    fn an_outcome_older_than_the_last_turn_does_not_flap_it() {
        let h = Health::new("etcd://h:1/p".into());
        let early = Instant::now() - Duration::from_secs(1);
        h.unanswered(Instant::now(), "no leader");
        // Sent before the outage, answered after: no recovery.
        h.answered(early);
        assert!(h.outage().is_some());
        let during = Instant::now();
        // The clock moves on (it is monotonic, in nanoseconds here).
        while Instant::now() <= during {}
        h.answered(Instant::now());
        assert!(h.outage().is_none());
        // Sent during the outage, failed after the recovery: still up.
        h.unanswered(during, "timed out");
        assert!(h.outage().is_none());
        // A request sent since fails: down again.
        h.unanswered(Instant::now(), "no leader");
        assert!(h.outage().is_some());
    }
}
