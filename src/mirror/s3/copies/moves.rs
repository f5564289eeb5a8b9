//! Store actions for changes of names: delete the copy of a removed file, move the copies of
//! a renamed file or directory, swap them for `RENAME_EXCHANGE`. A move is a server-side
//! copy to the new key and a delete of the old one, so no file content is sent.
//!
//! An action can fail part way and is then run again from the step it reached. Every step
//! can be repeated: objects already moved are gone from the old keys.

use std::collections::HashMap;
use std::time::Instant;

use crate::journal::RelPath;
use crate::mirror::s3::key::{self, MAX_KEY_BYTES};
use crate::mirror::s3::store::{Condition, ObjectInfo};

use super::plan::{self, MAX_PART_BYTES};
use super::tracker::{Action, Stored, Tracker};
use super::{Context, CopyError};

/// An action with the steps it completed.
#[derive(Debug)]
pub struct PendingAction {
    action: Action,
    /// Steps done. A move has one step, the copy of the exact path moved or found missing.
    /// An exchange has three, one per set of keys moved.
    steps_done: u8,
    /// Whether the exact path had a copy to move, once known.
    had_copy: bool,
    /// New ETag of each moved copy, by its new key.
    moved: HashMap<String, String>,
}

impl PendingAction {
    pub fn new(action: Action) -> PendingAction {
        PendingAction {
            action,
            steps_done: 0,
            had_copy: false,
            moved: HashMap::new(),
        }
    }
}

/// Outcome of an action, for the tracker.
pub struct Moved {
    /// Paths below which files were moved; none for a delete.
    targets: Vec<RelPath>,
    prefix: String,
    moved: HashMap<String, String>,
}

impl Moved {
    /// Updates the files moved by the action: a copy that moved gets its new ETag, and a
    /// file without a moved copy is written whole at the next pass.
    pub fn apply_to(&self, tracker: &mut Tracker, now: Instant) {
        for target in &self.targets {
            for path in tracker.paths_below(target) {
                let etag = key::path_to_key(&self.prefix, &path)
                    .ok()
                    .and_then(|k| self.moved.get(&k));
                let Some(file) = tracker.get_mut(&path) else {
                    continue;
                };
                match (etag, &mut file.stored) {
                    (Some(etag), Stored::Present(object)) => object.etag = etag.clone(),
                    (Some(_), _) => {}
                    (None, stored) => {
                        *stored = Stored::Absent;
                        file.mark(0, now);
                        file.urgent = true;
                    }
                }
            }
        }
    }
}

/// Runs the rest of `pending`.
pub fn run(ctx: &Context, pending: &mut PendingAction) -> Result<Moved, CopyError> {
    let targets = match pending.action.clone() {
        Action::Delete(path) => {
            delete_path(ctx, &path)?;
            Vec::new()
        }
        Action::Move { from, to } => {
            move_path(ctx, pending, &from, &to)?;
            vec![to]
        }
        Action::Exchange { a, b } => {
            exchange(ctx, pending, &a, &b)?;
            vec![a, b]
        }
    };
    Ok(Moved {
        targets,
        prefix: ctx.prefix.clone(),
        moved: std::mem::take(&mut pending.moved),
    })
}

fn delete_path(ctx: &Context, path: &RelPath) -> Result<(), CopyError> {
    let Ok(key) = ctx.key(path) else {
        return Ok(());
    };
    ctx.store
        .delete(&key, Condition::Always)
        .map_err(Context::store_error("delete of", &key))
}

/// Moves the copies of `from` and below to `to`; deletes the copy at `to` when `from` had
/// none, because the file there was replaced.
fn move_path(
    ctx: &Context,
    pending: &mut PendingAction,
    from: &RelPath,
    to: &RelPath,
) -> Result<(), CopyError> {
    let Ok(source) = ctx.key(from) else {
        return Ok(());
    };
    let target = match ctx.key(to) {
        Ok(target) => target,
        Err(e) => {
            // The new name has no key, so the copies under the old one are only deleted.
            log::warn!("mirror {}: {}", ctx.name, super::error_text(&e));
            delete_below(ctx, &source)?;
            return Ok(());
        }
    };
    if pending.steps_done == 0 {
        pending.had_copy = move_exact(ctx, &source, &target, &mut pending.moved)?;
        pending.steps_done = 1;
    }
    move_children(ctx, &source, &target, &mut pending.moved)?;
    if !pending.had_copy {
        ctx.store
            .delete(&target, Condition::Always)
            .map_err(Context::store_error("delete of", &target))?;
    }
    Ok(())
}

/// Swaps the copies of `a` and `b` through a staging key in the mirror's own folder.
fn exchange(
    ctx: &Context,
    pending: &mut PendingAction,
    a: &RelPath,
    b: &RelPath,
) -> Result<(), CopyError> {
    let (Ok(key_a), Ok(key_b)) = (ctx.key(a), ctx.key(b)) else {
        return Ok(());
    };
    let staging = format!("{}staging/exchange", key::reserved_prefix(&ctx.prefix));
    let steps = [(&key_a, &staging), (&key_b, &key_a), (&staging, &key_b)];
    for (index, (source, target)) in steps.into_iter().enumerate() {
        if usize::from(pending.steps_done) > index {
            continue;
        }
        move_exact(ctx, source, target, &mut pending.moved)?;
        move_children(ctx, source, target, &mut pending.moved)?;
        pending.steps_done += 1;
    }
    pending.moved.retain(|key, _| !key.starts_with(&staging));
    Ok(())
}

/// Moves the object at exactly `source` to `target`; returns false when there is none.
fn move_exact(
    ctx: &Context,
    source: &str,
    target: &str,
    moved: &mut HashMap<String, String>,
) -> Result<bool, CopyError> {
    let found = ctx
        .store
        .head(source)
        .map_err(Context::store_error("HEAD of", source))?;
    let Some(object) = found else {
        return Ok(false);
    };
    move_object(ctx, &object, target, moved)?;
    Ok(true)
}

/// Moves every object below `source/` to the same place below `target/`.
fn move_children(
    ctx: &Context,
    source: &str,
    target: &str,
    moved: &mut HashMap<String, String>,
) -> Result<(), CopyError> {
    let folder = format!("{source}/");
    let objects = ctx
        .store
        .list_objects(&folder)
        .map_err(Context::store_error("listing of", &folder))?;
    for object in objects {
        let new_key = format!("{target}{}", &object.key[source.len()..]);
        if new_key.len() > MAX_KEY_BYTES {
            // NOTE: a file whose new key would exceed 1024 bytes loses its copy.
            log::warn!(
                "mirror {}: {} cannot move to a key of {} bytes; deleting it",
                ctx.name,
                object.key,
                new_key.len()
            );
            ctx.store
                .delete(&object.key, Condition::Always)
                .map_err(Context::store_error("delete of", &object.key))?;
            continue;
        }
        move_object(ctx, &object, &new_key, moved)?;
    }
    Ok(())
}

/// Deletes the object at `source` and every object below `source/`.
fn delete_below(ctx: &Context, source: &str) -> Result<(), CopyError> {
    let folder = format!("{source}/");
    let objects = ctx
        .store
        .list_objects(&folder)
        .map_err(Context::store_error("listing of", &folder))?;
    for key in std::iter::once(source.to_string()).chain(objects.into_iter().map(|o| o.key)) {
        ctx.store
            .delete(&key, Condition::Always)
            .map_err(Context::store_error("delete of", &key))?;
    }
    Ok(())
}

/// Copies one object to `target` inside the store, then deletes it.
fn move_object(
    ctx: &Context,
    object: &ObjectInfo,
    target: &str,
    moved: &mut HashMap<String, String>,
) -> Result<(), CopyError> {
    let etag = if object.size > MAX_PART_BYTES {
        copy_large(ctx, object, target)?
    } else {
        ctx.store
            .copy_object(&object.key, target)
            .map_err(Context::store_error("copy to", target))?
    };
    ctx.store
        .delete(&object.key, Condition::Always)
        .map_err(Context::store_error("delete of", &object.key))?;
    moved.insert(target.to_string(), etag);
    Ok(())
}

/// Copies an object of more than 5 GiB, which one CopyObject request cannot, as a multipart
/// upload of copied parts.
fn copy_large(ctx: &Context, object: &ObjectInfo, target: &str) -> Result<String, CopyError> {
    let head = ctx
        .store
        .head(&object.key)
        .map_err(Context::store_error("HEAD of", &object.key))?;
    let Some(head) = head else {
        return Err(CopyError::Store {
            action: "copy of",
            key: object.key.clone(),
            source: crate::mirror::s3::store::StoreError::local(
                "the object disappeared before it was copied".into(),
            ),
        });
    };
    let upload_id = ctx
        .store
        .create_multipart(target, head.crc32c)
        .map_err(Context::store_error("multipart start of", target))?;
    let copied = (|| {
        let mut parts = Vec::new();
        for (index, part) in plan::multipart_parts(head.size, head.size)
            .into_iter()
            .enumerate()
        {
            let plan::Part::Copy(range) = part else {
                continue;
            };
            let number = index as i32 + 1;
            let etag = ctx
                .store
                .upload_part_copy(target, &upload_id, number, &head.key, &head.etag, range)
                .map_err(Context::store_error("part copy to", target))?;
            parts.push((number, etag));
        }
        ctx.store
            .complete_multipart(target, &upload_id, &parts)
            .map_err(Context::store_error("multipart completion of", target))
    })();
    if copied.is_err() {
        let _ = ctx.store.abort_multipart(target, &upload_id);
    }
    copied
}
