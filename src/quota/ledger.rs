//! The token ledger: tokens per 5-hour block read from the transcripts.
