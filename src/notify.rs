//! Notifications: Telegram, a JSON webhook and the log.

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    FailoverStarted,
    FailoverDone,
    FailoverFailed,
    SessionDegraded,
    TaskFailed,
    AccountExhausted,
    AccountRecovered,
}

pub struct Notice {
    pub kind: NoticeKind,
    pub object: String,
    pub message: String,
}

#[derive(Clone, Default)]
pub struct Notifier {}

impl Notifier {
    pub fn disabled() -> Notifier {
        Notifier {}
    }

    pub fn send(&self, n: Notice) {
        tracing::info!(kind = ?n.kind, object = %n.object, "{}", n.message);
    }
}
