//! Routing of journal records under path rules: which records a mirror applies, skips or
//! follows with resync ops, because the rules send it only some paths. Used by the workers;
//! nothing here confirms a record.

use super::worker::{Context, MirrorSlot};
use super::{EntryKind, Error, Manifest, Mirror, manifest};
use crate::journal::{Op, Record, RelPath};
use crate::rules::Rules;

/// Action of a worker on one record, given the paths the rules send to its mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    Apply,
    /// The rules send nothing at the record's path to the mirror.
    Skip,
    /// An attribute change of a path that the rules send to the mirror only if it is a
    /// directory. The record does not say which, so a missing path counts as success.
    ApplyIfPresent,
    /// A rename or link that changes which entries the rules send to the mirror.
    Reselect,
}

/// Decides what mirror `index` does with `op`.
pub(super) fn route(rules: &Rules, index: usize, op: &Op) -> Route {
    if rules.is_empty() {
        return Route::Apply;
    }
    let apply_if = |selected: bool| if selected { Route::Apply } else { Route::Skip };
    match op {
        Op::Write { path, .. }
        | Op::Truncate { path, .. }
        | Op::Fallocate { path, .. }
        | Op::Create { path, .. }
        | Op::Mknod { path, .. }
        | Op::Symlink { path, .. }
        | Op::Unlink { path }
        | Op::CloseWrite { path } => apply_if(rules.selects_file(index, path)),
        Op::Mkdir { path, .. } | Op::Rmdir { path } => apply_if(rules.selects_dir(index, path)),
        Op::SetMode { path, .. }
        | Op::SetOwner { path, .. }
        | Op::SetTimes { path, .. }
        | Op::SetXattr { path, .. }
        | Op::RemoveXattr { path, .. } => {
            if rules.selects_file(index, path) {
                Route::Apply
            } else if rules.selects_dir(index, path) {
                Route::ApplyIfPresent
            } else {
                Route::Skip
            }
        }
        Op::Link { existing, path } => {
            match (
                rules.selects_file(index, existing),
                rules.selects_file(index, path),
            ) {
                (_, false) => Route::Skip,
                (true, true) => Route::Apply,
                // NOTE: writes through the other name miss this copy until a repair resyncs it.
                (false, true) => Route::Reselect,
            }
        }
        Op::Rename { from, to, .. } => {
            if !rules.rename_keeps_selection(index, from, to) {
                Route::Reselect
            } else if rules.selects_file(index, from) {
                Route::Apply
            } else if rules.selects_dir(index, from) {
                Route::ApplyIfPresent
            } else {
                Route::Skip
            }
        }
    }
}

/// Applies a rename or link that changes which entries the rules send to mirror `index`.
/// The mirror gets the rename itself where it has the source. Then it gets the resync ops
/// that remove what it no longer gets below the new name, and copy from the backing tree what
/// it gets there now.
///
/// Returns false, with nothing applied, when the mirror needs a full resync instead. That is
/// the case for an exchange and for an S3 mirror, whose journal objects take only records and
/// whole resyncs. It is also the case when the new name, a directory above it or an entry
/// below it changed again after the record, because the backing tree then no longer shows
/// the entry as it was. Otherwise copying the entry as it is now is sound. Every later record
/// of it is a change of data or attributes, and applying those again gives the same result.
pub(super) fn reselect(
    ctx: &Context,
    index: usize,
    mirror: &mut dyn Mirror,
    record: &Record,
) -> Result<bool, Error> {
    let (from, to) = match &record.op {
        Op::Rename { from, to, flags } if *flags & libc::RENAME_EXCHANGE == 0 => (Some(from), to),
        Op::Link { path, .. } => (None, path),
        _ => return Ok(false),
    };
    if mirror.copies().is_some() {
        // NOTE: an S3 mirror resyncs, replaying its history, after a rename across its rules.
        return Ok(false);
    }

    let _names = ctx.namespace.read().expect("namespace lock");
    let Some(subtree) = scan_unchanged(ctx, record, to)? else {
        return Ok(false);
    };
    let Some(kind) = subtree.entries.get(to).map(|e| e.kind) else {
        return Ok(false);
    };

    let rules = &ctx.rules;
    let mut current = Manifest::default();
    match from {
        Some(from) if rules.selects(index, from, kind) => {
            let held = subtree
                .entries
                .iter()
                .filter(|(path, entry)| rules.selects(index, &rebase(path, to, from), entry.kind));
            let parent_held = to
                .split_last()
                .is_none_or(|(parent, _)| rules.selects(index, &parent, EntryKind::Dir));
            if parent_held {
                mirror.apply_record(record)?;
                current.entries = held
                    .map(|(path, entry)| (path.clone(), entry.clone()))
                    .collect();
            } else {
                // The rules never send the new name's directory to this mirror, so the mirror
                // lacks it and cannot rename into it: remove what it held at the old name.
                let old = Manifest {
                    entries: held
                        .map(|(path, entry)| (rebase(path, to, from), entry.clone()))
                        .collect(),
                };
                for op in manifest::repair_ops(&ctx.backing, &Manifest::default(), &old)? {
                    mirror.apply(&op?)?;
                }
            }
        }
        Some(_) if rules.selects(index, to, kind) => {
            // The rename replaced the entry the mirror has at the new name.
            let remove = match kind {
                EntryKind::Dir => Op::Rmdir { path: to.clone() },
                _ => Op::Unlink { path: to.clone() },
            };
            mirror.apply(&remove)?;
        }
        _ => {}
    }

    let wanted = rules.select(index, &subtree);
    for op in manifest::repair_ops(&ctx.backing, &wanted, &current)? {
        mirror.apply(&op?)?;
    }
    Ok(true)
}

/// Lists the backing entry at `to` and everything below it, or returns `None` when a record
/// after `record` changed a name at, above or below `to`, or `to` is gone. Call it with the
/// namespace lock held, so that no name changes meanwhile.
fn scan_unchanged(ctx: &Context, record: &Record, to: &RelPath) -> Result<Option<Manifest>, Error> {
    let Some(changed) = ctx.journal.names_changed_after(record.seq) else {
        return Ok(None);
    };
    if changed
        .iter()
        .any(|p| p.starts_with(to) || to.starts_with(p))
    {
        return Ok(None);
    }
    manifest::scan_path(&ctx.backing, to).map_err(|e| Error::Backing {
        path: e.path,
        source: e.source,
    })
}

/// Marks the mirror for a resync, because a record changes which paths it gets in a way
/// that [`reselect`] cannot follow record by record.
pub(super) fn resync_for_reselect(slot: &MirrorSlot, record: &Record) {
    log::info!(
        "mirror {}: {} at seq {} changes which paths the mirror gets, and cannot be followed \
         record by record (an exchange, an S3 mirror, or names changed again since); resyncing \
         the mirror from the backing tree",
        slot.name,
        record.op.kind(),
        record.seq
    );
    slot.progress.lock().expect("progress lock").needs_resync = true;
}

/// Returns `path`, which lies at or below `to`, moved to the same place below `from`.
fn rebase(path: &RelPath, to: &RelPath, from: &RelPath) -> RelPath {
    let rest = &path.as_bytes()[to.as_bytes().len()..];
    let mut bytes = from.as_bytes().to_vec();
    bytes.extend_from_slice(rest);
    RelPath::from_bytes(&bytes).expect("a path below a valid path is valid")
}
