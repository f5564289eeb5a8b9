//! logmirror: a FUSE filesystem that commits every write to a local backing directory and a
//! journal, and mirrors the journal to remote copies.
//!
//! ```text
//! program write(2) -> kernel FUSE -> fs (backing directory) -> journal (segment files)
//!                                                                 |
//!                                               mirror workers <--+--> dir mirror, ...
//! ```

pub mod journal;
pub mod mirror;
