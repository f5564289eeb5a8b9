//! Writes that wait for room in the async backlog (`when_full=block`) without holding a
//! FUSE thread. Such a write is queued with its reply, and one thread of its own performs
//! the queued writes in arrival order, each once the backlog has room, and sends the reply.
//!
//! A later write to a file with a queued write joins the queue too, so each file gets its
//! writes in the order the kernel sent them. The reply goes only after the write reached the
//! backing file and the journal, as on the FUSE thread.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use fuser::ReplyWrite;

use super::LogFs;
use super::error::Error;
use crate::journal::Seq;

/// A queued request: performs the write, waiting for room, and sends its reply.
type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<(u64, Job)>,
    /// Queued or running jobs per FUSE inode number.
    waiting: HashMap<u64, usize>,
}

/// The queue of writes that wait for room, and the thread that performs them.
pub struct DeferredWrites {
    queue: Mutex<Queue>,
    added: Condvar,
}

impl DeferredWrites {
    /// Creates the queue and starts its thread, which runs as long as the process.
    pub fn start() -> std::io::Result<Arc<DeferredWrites>> {
        let deferred = Arc::new(DeferredWrites {
            queue: Mutex::new(Queue::default()),
            added: Condvar::new(),
        });
        let runner = deferred.clone();
        std::thread::Builder::new()
            .name("deferred-writes".into())
            .spawn(move || runner.run())?;
        Ok(deferred)
    }

    /// Returns true when a write to inode `ino` is queued or running.
    pub fn has_waiting(&self, ino: u64) -> bool {
        let queue = self.queue.lock().expect("deferred queue lock");
        queue.waiting.contains_key(&ino)
    }

    fn push(&self, ino: u64, job: Job) {
        let mut queue = self.queue.lock().expect("deferred queue lock");
        *queue.waiting.entry(ino).or_default() += 1;
        queue.jobs.push_back((ino, job));
        self.added.notify_one();
    }

    fn run(&self) {
        loop {
            let (ino, job) = {
                let mut queue = self.queue.lock().expect("deferred queue lock");
                loop {
                    if let Some(next) = queue.jobs.pop_front() {
                        break next;
                    }
                    queue = self.added.wait(queue).expect("deferred queue lock");
                }
            };
            job();
            let mut queue = self.queue.lock().expect("deferred queue lock");
            if let Some(count) = queue.waiting.get_mut(&ino) {
                *count -= 1;
                if *count == 0 {
                    queue.waiting.remove(&ino);
                }
            }
        }
    }
}

impl LogFs {
    /// Writes `data` and replies, on this thread when the backlog has room and no earlier
    /// write to the file waits. Otherwise the write is queued for the deferred-write thread,
    /// so that the calling FUSE thread is free at once. Only for `when_full=block`.
    pub(super) fn write_or_defer(
        &self,
        (ino, fh, offset): (u64, u64, u64),
        data: &[u8],
        kill_suidgid: bool,
        reply: ReplyWrite,
    ) {
        if !self.deferred.has_waiting(ino) {
            match self.write(ino, fh, offset, data, kill_suidgid, false) {
                Err(Error::BacklogFull) => {}
                result => return self.reply_written("write", result, reply),
            }
        }
        let data = data.to_vec();
        self.defer(ino, "write", reply, move |fs| {
            fs.write(ino, fh, offset, &data, kill_suidgid, true)
        });
    }

    /// Queues `attempt`, which writes to inode `ino` while it may wait for room, and the
    /// reply with its result.
    pub(super) fn defer(
        &self,
        ino: u64,
        op: &'static str,
        reply: ReplyWrite,
        attempt: impl FnOnce(&LogFs) -> Result<(u32, Option<Seq>), Error> + Send + 'static,
    ) {
        log::trace!("{op}: backlog full, queued for the deferred-write thread, ino={ino}");
        let fs = self.clone();
        let waiter = self.acks.backlog_waiter();
        self.deferred.push(
            ino,
            Box::new(move || {
                let result = attempt(&fs);
                drop(waiter);
                fs.reply_written(op, result, reply);
            }),
        );
    }
}
