//! Usage of each account: the signals (statusLine feed, usage poll,
//! `StopFailure` hook, transcript ledger, screen banners), fused into one
//! reading per window, and the account phase they imply.

pub mod ledger;
pub mod poll;
