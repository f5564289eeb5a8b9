//! logmirror: a FUSE filesystem that commits every write to a local backing directory and a
//! journal, and mirrors the journal to remote copies.
//!
//! ```text
//! program write(2) -> kernel FUSE -> fs (backing directory, then journal record)
//!                                        |
//!                     reply <- mirror::acks (at once in async mode,
//!                                            after `ack` mirrors confirmed in sync mode)
//! journal segments -> mirror::worker (one per mirror) -> Mirror::apply, flush -> confirm
//! ```
//!
//! `daemon` ties the stages together; `control` serves `status`, `sync` and `verify`;
//! `monitor` watches the mirrors and `metrics` serves their values to Prometheus;
//! `restore` rebuilds a backing directory from an S3 mirror.

pub mod config;
pub mod control;
pub mod daemon;
pub mod fs;
pub mod journal;
pub mod metrics;
pub mod mirror;
pub mod monitor;
pub mod notify;
pub mod periodic;
pub mod progress;
pub mod reload;
pub mod restore;
pub mod rules;
pub mod status;
pub mod verify;
