//! Notifications: Telegram, a JSON webhook and the log.
