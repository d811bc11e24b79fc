//! A named thread with a stop flag, stopped and joined on [`Worker::stop`] or when dropped:
//! the shape of every background loop here (feed, replay, alert evaluation).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running background thread.
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `name` running `body`, which should return soon after its flag turns true.
    pub fn spawn(name: &str, body: impl FnOnce(&AtomicBool) + Send + 'static) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&flag))
            .expect("spawning a worker thread");
        Worker { stop, thread: Some(thread) }
    }

    /// The thread, to unpark it (`None` once stopped).
    pub fn thread(&self) -> Option<&std::thread::Thread> {
        self.thread.as_ref().map(JoinHandle::thread)
    }

    /// Asks the thread to stop and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // A thread parked waiting for work sees the flag at once.
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_on_drop_and_on_stop() {
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        let w = Worker::spawn("test", move |stop| {
            while !stop.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            r.store(true, Ordering::Release);
        });
        w.stop();
        assert!(ran.load(Ordering::Acquire));
        drop(Worker::spawn("test", |stop| while !stop.load(Ordering::Acquire) {}));
    }
}
