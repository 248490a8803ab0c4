//! The loop's one queue, with wake-ups batched.
//!
//! A fan-out of one event to a thousand sessions on the loop is a thousand commands. Sent
//! one by one on a channel, each can wake the loop (it runs on the other core and drains
//! faster than the fan-out fills), and the wake-ups — context switches — were the largest
//! cost measured (bench/RESULTS.md "Engine sessions"). So a sender running inside a
//! [`Batch`] only queues; the loop is woken once, when the outermost batch on that thread
//! ends. Outside a batch, a send wakes the loop at once (only when the queue was empty).
//!
//! A [`Batch`] is a guard and not `Send`: it cannot be held across an `.await` in a task
//! (the compiler refuses), so a batch always ends on the thread that began it, before that
//! thread does anything else.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What every sender and the loop share.
#[derive(Debug)]
struct Shared<C> {
    queue: Mutex<Vec<C>>,
    wake: tokio::sync::Notify,
    /// The loop is gone: sends fail.
    closed: AtomicBool,
}

/// A way to wake one loop, kept type-erased in a thread's pending batch.
trait Waker {
    fn wake(&self);
}

impl<C> Waker for Shared<C> {
    fn wake(&self) {
        self.wake.notify_one();
    }
}

thread_local! {
    /// Open batches on this thread, and the loops to wake when the outermost ends.
    static BATCH: RefCell<(usize, Vec<Arc<dyn Waker + Send + Sync>>)> = const { RefCell::new((0, Vec::new())) };
}

/// Sends commands to a loop. Cloned freely; one queue per loop.
#[derive(Debug)]
pub struct Sender<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for Sender<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C: Send + 'static> Sender<C> {
    /// Queues `cmd`; `Err(cmd)` when the loop is gone.
    pub fn send(&self, cmd: C) -> Result<(), C> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(cmd);
        }
        let was_empty = {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.push(cmd);
            q.len() == 1
        };
        if was_empty {
            let deferred = BATCH.with(|b| {
                let mut b = b.borrow_mut();
                if b.0 == 0 {
                    return false;
                }
                let me: Arc<dyn Waker + Send + Sync> = self.shared.clone();
                if !b.1.iter().any(|w| std::ptr::addr_eq(Arc::as_ptr(w), Arc::as_ptr(&me))) {
                    b.1.push(me);
                }
                true
            });
            if !deferred {
                self.shared.wake.notify_one();
            }
        }
        Ok(())
    }
}

/// The loop's end of the queue.
#[derive(Debug)]
pub struct Receiver<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Receiver<C> {
    /// Waits until something was queued (a wake-up may be spurious: the batch is then empty).
    pub async fn ready(&self) {
        self.shared.wake.notified().await;
    }

    /// Everything queued now, oldest first.
    pub fn take(&self, into: &mut Vec<C>) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *q, into);
    }
}

impl<C> Drop for Receiver<C> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        // What was queued is dropped with the loop.
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A new queue.
pub fn channel<C>() -> (Sender<C>, Receiver<C>)
where
    C: Send + 'static,
{
    let shared = Arc::new(Shared {
        queue: Mutex::new(Vec::new()),
        wake: tokio::sync::Notify::new(),
        closed: AtomicBool::new(false),
    });
    (Sender { shared: shared.clone() }, Receiver { shared })
}

/// While alive, sends on this thread queue without waking their loops; the loops are
/// woken when the outermost batch ends. Use around a synchronous burst of sends (one
/// event fanned out to many sessions).
#[derive(Debug)]
pub struct Batch {
    /// Not `Send`: a batch ends on the thread that began it.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Batch {
    /// Begins a batch.
    pub fn begin() -> Self {
        BATCH.with(|b| b.borrow_mut().0 += 1);
        Self {
            _thread: std::marker::PhantomData,
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let wake = BATCH.with(|b| {
            let mut b = b.borrow_mut();
            b.0 -= 1;
            if b.0 == 0 { std::mem::take(&mut b.1) } else { Vec::new() }
        });
        for w in wake {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_send_wakes_the_loop_and_a_batch_wakes_it_once_at_its_end() {
        let (tx, rx) = channel::<u32>();
        tx.send(1).unwrap();
        tokio::time::timeout(Duration::from_secs(1), rx.ready())
            .await
            .expect("woken by a send outside a batch");
        let mut got = Vec::new();
        rx.take(&mut got);
        assert_eq!(got, vec![1]);
        {
            let _b = Batch::begin();
            let _inner = Batch::begin();
            for n in 2..=4 {
                tx.send(n).unwrap();
            }
            drop(_inner);
            // Still inside the outer batch: no wake-up yet.
            assert!(
                tokio::time::timeout(Duration::from_millis(50), rx.ready())
                    .await
                    .is_err(),
                "woken inside a batch"
            );
        }
        tokio::time::timeout(Duration::from_secs(1), rx.ready())
            .await
            .expect("woken when the batch ended");
        got.clear();
        rx.take(&mut got);
        assert_eq!(got, vec![2, 3, 4]);
        drop(rx);
        assert_eq!(tx.send(5), Err(5), "the loop is gone");
    }
}
