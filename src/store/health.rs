//! Whether an etcd store answers (see docs/store-backends.md, "When etcd
//! loses its quorum"). Every request's outcome is noted here; the first
//! failure for want of a quorum (or of any member) turns the store
//! *unavailable*: that is logged once, `/readyz` reports it, and requests
//! fail at once with [`StoreError::Unavailable`] instead of each waiting
//! out a timeout, except one try every [`UNAVAILABLE_BACKOFF`] (and the
//! daemon's probe, [`PROBE_EVERY`]). The first answer turns it available
//! again, logged once too.
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
}

impl Health {
    pub fn new(location: String) -> Health {
        Health {
            location,
            down: Mutex::new(None),
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

    /// A request was answered.
    pub fn answered(&self) {
        let was = self.down.lock().expect("health lock").take();
        if let Some(d) = was {
            tracing::warn!(
                store = %self.location,
                after_seconds = d.since.elapsed().as_secs(),
                "store available again: writes resume"
            );
        }
    }

    /// A request got no answer (no quorum, no member reachable).
    pub fn unanswered(&self, message: &str) {
        let mut g = self.down.lock().expect("health lock");
        match g.as_mut() {
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
        h.unanswered("no leader");
        let o = h.outage().unwrap();
        assert_eq!(o.location, "etcd://h:1/p");
        assert_eq!(o.message, "no leader");
        // Within the backoff: refused at once, naming the cause.
        let e = h.admit().unwrap_err();
        assert!(e.starts_with("no leader"), "{e}");
        h.unanswered("timed out");
        assert_eq!(h.outage().unwrap().message, "timed out");
        h.answered();
        assert!(h.outage().is_none());
        assert!(h.admit().is_ok());
    }
}
