//! A tiny FIFO async mutex for one core (no atomics, no `Send`), independent of the runtime so
//! the log runs unchanged inside glommio or a test's `block_on`.
//!
//! Release hands the lock directly to the oldest waiter, so critical sections run in the order
//! their callers first asked (appends keep their arrival order). [`WakeList`] parks tasks until
//! an event and can wake the ones that still have work to start before the rest.

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

/// Tasks parked until some event (the end of a flush), each with a key saying what it waits
/// for. [`wake_all`](Self::wake_all) can wake the tasks whose key is still unserved first, so one
/// of them acts (starts the next flush) before the served ones run.
#[derive(Debug)]
pub struct WakeList<K> {
    parked: RefCell<Vec<Rc<Parked<K>>>>,
}

impl<K> Default for WakeList<K> {
    fn default() -> Self {
        WakeList {
            parked: RefCell::new(Vec::new()),
        }
    }
}

#[derive(Debug)]
struct Parked<K> {
    key: K,
    woken: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl<K: Copy> WakeList<K> {
    /// Parks until the next [`wake_all`](Self::wake_all).
    pub fn wait(&self, key: K) -> Park<'_, K> {
        Park {
            list: self,
            key,
            slot: None,
        }
    }

    /// Wakes every parked task. With `first`, those whose key it accepts are woken before the
    /// rest; each group keeps arrival order. Returns how many tasks `first` accepted.
    pub fn wake_all(&self, first: Option<&dyn Fn(K) -> bool>) -> usize {
        let parked = std::mem::take(&mut *self.parked.borrow_mut());
        let (early, late): (Vec<_>, Vec<_>) = match first {
            Some(first) => parked.into_iter().partition(|p| first(p.key)),
            None => (Vec::new(), parked),
        };
        let accepted = early.len();
        for p in early.into_iter().chain(late) {
            p.woken.set(true);
            if let Some(waker) = p.waker.borrow_mut().take() {
                waker.wake();
            }
        }
        accepted
    }

    /// How many tasks are parked.
    pub fn len(&self) -> usize {
        self.parked.borrow().len()
    }

    /// True when no task is parked.
    pub fn is_empty(&self) -> bool {
        self.parked.borrow().is_empty()
    }
}

/// The future of [`WakeList::wait`]. Dropped before it was woken, it leaves the list.
pub struct Park<'a, K> {
    list: &'a WakeList<K>,
    key: K,
    slot: Option<Rc<Parked<K>>>,
}

impl<K: Copy + Unpin> Future for Park<'_, K> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &self.slot {
            Some(slot) if slot.woken.get() => Poll::Ready(()),
            Some(slot) => {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
            None => {
                let slot = Rc::new(Parked {
                    key: self.key,
                    woken: Cell::new(false),
                    waker: RefCell::new(Some(cx.waker().clone())),
                });
                self.list.parked.borrow_mut().push(slot.clone());
                self.slot = Some(slot);
                Poll::Pending
            }
        }
    }
}

impl<K> Drop for Park<'_, K> {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            if !slot.woken.get() {
                self.list
                    .parked
                    .borrow_mut()
                    .retain(|p| !Rc::ptr_eq(p, slot));
            }
        }
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

    #[test]
    fn wake_list_wakes_the_accepted_keys_first_and_forgets_dropped_waiters() {
        glommio::LocalExecutor::default().run(async {
            let list = Rc::new(WakeList::<u32>::default());
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for key in 0..6u32 {
                let (list, order) = (list.clone(), order.clone());
                tasks.push(glommio::spawn_local(async move {
                    list.wait(key).await;
                    order.borrow_mut().push(key);
                }));
            }
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            assert_eq!(list.len(), 6);
            // A waiter that gives up leaves the list.
            let gave_up = glommio::timer::timeout(std::time::Duration::from_millis(1), async {
                list.wait(99).await;
                Ok(())
            })
            .await;
            assert!(gave_up.is_err());
            assert_eq!(list.len(), 6);
            let accepted = list.wake_all(Some(&|key: u32| key % 2 == 1));
            assert_eq!(accepted, 3);
            assert!(list.is_empty());
            for t in tasks {
                t.await;
            }
            assert_eq!(*order.borrow(), vec![1, 3, 5, 0, 2, 4]);
            // Without a preference: arrival order.
            order.borrow_mut().clear();
            let mut tasks = Vec::new();
            for key in [7u32, 3, 5] {
                let (list, order) = (list.clone(), order.clone());
                tasks.push(glommio::spawn_local(async move {
                    list.wait(key).await;
                    order.borrow_mut().push(key);
                }));
            }
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            assert_eq!(list.wake_all(None), 0);
            for t in tasks {
                t.await;
            }
            assert_eq!(*order.borrow(), vec![7, 3, 5]);
        });
    }
}
