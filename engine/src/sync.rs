//! A tiny FIFO async mutex for one core (no atomics, no `Send`), independent of the runtime so
//! the log runs unchanged inside glommio or a test's `block_on`.
//!
//! Release hands the lock directly to the oldest waiter, so critical sections run in the order
//! their callers first asked (appends keep their arrival order).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A FIFO async mutex guarding no data (it orders critical sections).
#[derive(Debug, Default, Clone)]
pub struct LocalMutex {
    inner: Rc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    locked: Cell<bool>,
    waiters: RefCell<VecDeque<Rc<Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    granted: Cell<bool>,
    taken: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Held while the lock is held; releases on drop.
#[derive(Debug)]
pub struct LocalMutexGuard {
    inner: Rc<Inner>,
}

impl LocalMutex {
    /// Waits for the lock; waiters are served in arrival order.
    pub fn lock(&self) -> impl Future<Output = LocalMutexGuard> {
        Acquire {
            inner: self.inner.clone(),
            slot: None,
        }
    }

    /// True while somebody holds the lock.
    pub fn is_locked(&self) -> bool {
        self.inner.locked.get()
    }
}

struct Acquire {
    inner: Rc<Inner>,
    slot: Option<Rc<Slot>>,
}

impl Future for Acquire {
    type Output = LocalMutexGuard;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LocalMutexGuard> {
        let inner = self.inner.clone();
        match &self.slot {
            Some(slot) if slot.granted.get() => {
                slot.taken.set(true);
                Poll::Ready(LocalMutexGuard { inner })
            }
            Some(slot) => {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
            None if !inner.locked.get() => {
                inner.locked.set(true);
                Poll::Ready(LocalMutexGuard { inner })
            }
            None => {
                let slot = Rc::new(Slot::default());
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                inner.waiters.borrow_mut().push_back(slot.clone());
                self.slot = Some(slot);
                Poll::Pending
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(slot) = &self.slot else { return };
        if slot.granted.get() && !slot.taken.get() {
            // Granted but abandoned before it was taken: pass the lock on.
            release(&self.inner);
        } else if !slot.granted.get() {
            self.inner
                .waiters
                .borrow_mut()
                .retain(|s| !Rc::ptr_eq(s, slot));
        }
    }
}

fn release(inner: &Inner) {
    let next = inner.waiters.borrow_mut().pop_front();
    match next {
        Some(slot) => {
            slot.granted.set(true);
            if let Some(waker) = slot.waker.borrow_mut().take() {
                waker.wake();
            }
        }
        None => inner.locked.set(false),
    }
}

impl Drop for LocalMutexGuard {
    fn drop(&mut self) {
        release(&self.inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_sections_run_in_arrival_order_and_abandoned_waiters_pass_on() {
        glommio::LocalExecutor::default().run(async {
            let mutex = LocalMutex::default();
            let order = Rc::new(RefCell::new(Vec::new()));
            let first = mutex.lock().await;
            let mut tasks = Vec::new();
            for i in 0..8 {
                let (mutex, order) = (mutex.clone(), order.clone());
                tasks.push(glommio::spawn_local(async move {
                    let _g = mutex.lock().await;
                    glommio::yield_if_needed().await;
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                    order.borrow_mut().push(i);
                }));
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            // One waiter that gives up while queued must not stall the queue.
            let abandoned = mutex.lock();
            let timed_out = glommio::timer::timeout(std::time::Duration::from_millis(5), async {
                Ok(abandoned.await)
            })
            .await;
            assert!(timed_out.is_err());
            drop(first);
            for t in tasks {
                t.await;
            }
            assert_eq!(*order.borrow(), (0..8).collect::<Vec<_>>());
            assert!(!mutex.is_locked());
        });
    }
}
