//! Well-known keys: finalizers and annotations, and who writes each.

/// Held by every Session the session controller manages: deleting one
/// stops its agent and cleans up before the object goes.
pub const SESSION_FINALIZER: &str = "claude-failover.io/session";
/// Held by every Task in flight: deleting it interrupts the session first.
pub const TASK_FINALIZER: &str = "claude-failover.io/task";

/// On a Session, set by `restart` (CLI, API) to a fresh timestamp: each
/// new value restarts the agent once, gracefully, resuming its
/// conversation (like `kubectl rollout restart`'s `restartedAt`). Answered
/// in `status.restartHandled`.
pub const RESTART: &str = "claude-failover.io/restart-requested-at";
/// On a Task, set by `cancel` (CLI, API): the task stops.
pub const CANCEL: &str = "claude-failover.io/cancel";
/// On a Task imported from an inbox file: the file's path.
pub const INBOX_FILE: &str = "claude-failover.io/inbox-file";
/// On an Account, set by `failover` (CLI, API) to a fresh timestamp: move
/// its sessions now. Answered in `status.failover.request`.
pub const FAILOVER_REQUEST: &str = "claude-failover.io/failover-requested-at";
/// With [`FAILOVER_REQUEST`]: the account to move them to (else the best).
pub const FAILOVER_TO: &str = "claude-failover.io/failover-to";
/// On an Account, set by `reinstate` (CLI) to a fresh timestamp: take it
/// back as a failover target now, though a failed swap set it aside.
/// Answered in `status.failover.reinstated`.
pub const REINSTATE: &str = "claude-failover.io/reinstate-requested-at";
