//! Position check of an S3 mirror at open. It compares the newest journal object in the
//! store with the local journal and the mirror's cursor file, so that a lost or restored
//! state directory cannot make the mirror skip, repeat or hide records. This file only
//! decides: the caller reads the header and acts on the verdict.

use crate::journal::Seq;
use crate::mirror::cursor::Cursor;

use super::object::ObjectHeader;

/// Outcome of comparing the store's newest journal object with the local state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing contradicts the cursor.
    InStep,
    /// The store lacks what the cursor records as confirmed, so resync for this reason.
    Resync(String),
    /// The store contains records of this journal that the local journal no longer has, so the
    /// local journal would give new records seqs that replay leaves out as repeats.
    StoreAhead { store_seq: Seq, head: Seq },
    /// Another journal stored objects after this mirror's cursor: another daemon took the
    /// prefix over since, and its tree is newer than the local backing tree.
    TakenOver {
        number: u64,
        other_journal: u64,
        confirmed: Seq,
    },
}

/// Compares `newest`, the header of the highest-numbered journal object (`None` for an
/// empty prefix), with the local journal `journal_id` at `head` and the mirror's `cursor`.
/// With `takeover`, objects of another daemon after the cursor only call for a resync.
// NOTE: only the newest object is read, so records of this journal below another journal's
// objects (a prefix taken over, then taken back with takeover=true) go unnoticed.
pub fn compare(
    newest: Option<&ObjectHeader>,
    journal_id: u64,
    head: Seq,
    cursor: Option<&Cursor>,
    takeover: bool,
) -> Verdict {
    // Only a cursor of this journal claims anything about the store.
    let ours = cursor.filter(|c| c.journal_id == journal_id);
    let confirmed = ours.filter(|c| !c.needs_resync).map(|c| Seq(c.seq));
    let Some(newest) = newest else {
        return match confirmed {
            Some(seq) if seq > Seq(0) => Verdict::Resync(format!(
                "the store holds no journal objects, although the cursor says seq {seq} was \
                 confirmed"
            )),
            _ => Verdict::InStep,
        };
    };
    if newest.journal_id != journal_id {
        // A cursor with a resync pending also counts as this journal's claim on the prefix.
        // NOTE: so a new host whose first resync was interrupted needs takeover=true next time.
        return match ours.map(|c| Seq(c.seq)) {
            Some(seq) if !takeover => Verdict::TakenOver {
                number: newest.number,
                other_journal: newest.journal_id,
                confirmed: seq,
            },
            Some(seq) => Verdict::Resync(format!(
                "journal object {} comes from another journal (id {:016x}) and was stored \
                 after this mirror's cursor (seq {seq}); another daemon wrote to the prefix",
                newest.number, newest.journal_id
            )),
            None => Verdict::InStep,
        };
    }
    // An object of resync ops only (seq 0) gives no journal seq to compare.
    if newest.last_seq == Seq(0) {
        return Verdict::InStep;
    }
    if newest.last_seq > head {
        return Verdict::StoreAhead {
            store_seq: newest.last_seq,
            head,
        };
    }
    match confirmed {
        Some(seq) if newest.last_seq < seq => Verdict::Resync(format!(
            "the newest journal object ({}) ends at seq {}, before the cursor's seq {seq}; \
             objects were removed from the store",
            newest.number, newest.last_seq
        )),
        _ => Verdict::InStep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: u64 = 0xaaaa;
    const OTHER: u64 = 0xbbbb;

    fn header(journal_id: u64, number: u64, last_seq: u64) -> ObjectHeader {
        ObjectHeader {
            journal_id,
            number,
            first_seq: Seq(last_seq.min(1)),
            last_seq: Seq(last_seq),
            frame_count: 1,
            previous: Some([0; 32]),
            key_id: None,
            frames_len: None,
        }
    }

    fn cursor(journal_id: u64, seq: u64) -> Cursor {
        Cursor {
            mirror: "s3://logs/web1".into(),
            journal_id,
            seq,
            position: seq * 100,
            needs_resync: false,
        }
    }

    #[test]
    fn empty_store() {
        assert_eq!(compare(None, OURS, Seq(5), None, false), Verdict::InStep);
        assert_eq!(
            compare(None, OURS, Seq(5), Some(&cursor(OURS, 0)), false),
            Verdict::InStep
        );
        let verdict = compare(None, OURS, Seq(5), Some(&cursor(OURS, 4)), false);
        assert!(
            matches!(&verdict, Verdict::Resync(r) if r.contains("no journal objects")),
            "{verdict:?}"
        );
    }

    #[test]
    fn newest_from_other_journal() {
        let newest = header(OTHER, 9, 40);
        assert_eq!(
            compare(Some(&newest), OURS, Seq(5), Some(&cursor(OURS, 5)), false),
            Verdict::TakenOver {
                number: 9,
                other_journal: OTHER,
                confirmed: Seq(5),
            }
        );
        let verdict = compare(Some(&newest), OURS, Seq(5), Some(&cursor(OURS, 5)), true);
        assert!(
            matches!(&verdict, Verdict::Resync(r) if r.contains("another journal")),
            "{verdict:?}"
        );
        // Without a cursor of this journal the daemon resyncs anyway.
        assert_eq!(
            compare(Some(&newest), OURS, Seq(5), None, false),
            Verdict::InStep
        );
        assert_eq!(
            compare(Some(&newest), OURS, Seq(5), Some(&cursor(OTHER, 40)), false),
            Verdict::InStep
        );
    }

    #[test]
    fn newest_from_other_journal_with_resync_pending() {
        // A clean unmount while the store is unreachable leaves a resync pending in the
        // cursor. The prefix was this journal's before, so the newer owner's objects stop it.
        let newest = header(OTHER, 9, 40);
        let pending = Cursor {
            needs_resync: true,
            ..cursor(OURS, 0)
        };
        assert_eq!(
            compare(Some(&newest), OURS, Seq(3), Some(&pending), false),
            Verdict::TakenOver {
                number: 9,
                other_journal: OTHER,
                confirmed: Seq(0),
            }
        );
        let verdict = compare(Some(&newest), OURS, Seq(3), Some(&pending), true);
        assert!(
            matches!(&verdict, Verdict::Resync(r) if r.contains("another journal")),
            "{verdict:?}"
        );
    }

    #[test]
    fn store_ahead_of_local_journal() {
        let newest = header(OURS, 3, 12);
        assert_eq!(
            compare(Some(&newest), OURS, Seq(10), Some(&cursor(OURS, 10)), false),
            Verdict::StoreAhead {
                store_seq: Seq(12),
                head: Seq(10)
            }
        );
        assert_eq!(
            compare(Some(&newest), OURS, Seq(12), Some(&cursor(OURS, 12)), false),
            Verdict::InStep
        );
    }

    #[test]
    fn store_behind_cursor() {
        let newest = header(OURS, 3, 7);
        let verdict = compare(Some(&newest), OURS, Seq(12), Some(&cursor(OURS, 10)), false);
        assert!(
            matches!(&verdict, Verdict::Resync(r) if r.contains("before the cursor's seq 10")),
            "{verdict:?}"
        );
        // The cursor trails the store after a lost response or a cursor written late.
        assert_eq!(
            compare(Some(&newest), OURS, Seq(12), Some(&cursor(OURS, 5)), false),
            Verdict::InStep
        );
    }

    #[test]
    fn resync_only_object_tells_nothing() {
        let newest = header(OURS, 4, 0);
        assert_eq!(
            compare(Some(&newest), OURS, Seq(3), Some(&cursor(OURS, 3)), false),
            Verdict::InStep
        );
    }
}
