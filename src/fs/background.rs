//! Background threads for requests that wait on the disk (fsync, fsyncdir).
//!
//! A FUSE thread passes such a request to these threads and goes back to reading requests.
//! So a slow flush of one file does not hold up writes, reads and lookups of others. The
//! thread that finishes the job sends the reply.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

/// Work for a background thread. The job sends its own reply.
pub type Job = Box<dyn FnOnce() + Send>;

/// Pool of threads that run [`Job`]s in the order they were queued.
pub struct Background {
    sender: Sender<Job>,
}

impl Background {
    /// Starts `threads` threads, named `fsync-N`.
    pub fn start(threads: usize) -> std::io::Result<Background> {
        let (sender, receiver) = channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("fsync-{index}"))
                .spawn(move || serve(&receiver))?;
        }
        Ok(Background { sender })
    }

    /// Runs `job` on a background thread, or on this one when none is left.
    pub fn run(&self, job: Job) {
        if let Err(returned) = self.sender.send(job) {
            log::warn!("fsync threads stopped; running the fsync on the FUSE thread instead");
            (returned.0)();
        }
    }
}

fn serve(receiver: &Mutex<Receiver<Job>>) {
    loop {
        let next = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match next {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}
