//! A single-core change signal: "something was appended, re-check".
//!
//! Long-poll fetches wait on it instead of sleeping. It is `!Send` on purpose: it lives on the core
//! that owns the partition (thread-per-core), so it needs no atomics or locks.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct SignalState {
    generation: u64,
    waiters: Vec<Waker>,
}

/// A generation counter with wakers. Cloning shares the same signal.
#[derive(Clone, Default)]
pub struct ChangeSignal {
    state: Rc<RefCell<SignalState>>,
}

impl ChangeSignal {
    /// A new signal at generation 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current generation; pass it to [`ChangeSignal::changed_since`].
    pub fn generation(&self) -> u64 {
        self.state.borrow().generation
    }

    /// Advance the generation and wake every waiter.
    pub fn notify(&self) {
        let waiters = {
            let mut state = self.state.borrow_mut();
            state.generation += 1;
            std::mem::take(&mut state.waiters)
        };
        // Wake after releasing the borrow: a woken task may run inline and touch the signal.
        for waker in waiters {
            waker.wake();
        }
    }

    /// A `'static` wait for the next change, or none when the caller's condition already holds
    /// (`satisfied`): the generation is read now, so a change between this call and the first
    /// poll is not missed.
    pub fn wait_unless(&self, satisfied: bool) -> impl Future<Output = ()> + 'static {
        let changed = self.changed_since(self.generation());
        async move {
            if !satisfied {
                changed.await;
            }
        }
    }

    /// Resolves once the generation differs from `generation`.
    pub fn changed_since(&self, generation: u64) -> SignalChanged {
        SignalChanged { signal: self.clone(), generation }
    }
}

/// Future returned by [`ChangeSignal::changed_since`].
pub struct SignalChanged {
    signal: ChangeSignal,
    generation: u64,
}

impl Future for SignalChanged {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        let mut state = self.signal.state.borrow_mut();
        if state.generation != self.generation {
            return Poll::Ready(());
        }
        // Bounded: a waker is only stored again after the previous wake drained the list, except
        // for repeated polls of the same future, which replace nothing but are cheap to dedupe.
        if !state.waiters.iter().any(|waker| waker.will_wake(context.waker())) {
            state.waiters.push(context.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_only_after_notify() {
        let signal = ChangeSignal::new();
        let generation = signal.generation();
        let mut waiting = Box::pin(signal.changed_since(generation));
        let waker = futures::task::noop_waker();
        let mut context = Context::from_waker(&waker);
        assert!(waiting.as_mut().poll(&mut context).is_pending());
        signal.notify();
        assert!(waiting.as_mut().poll(&mut context).is_ready());
        assert_eq!(signal.generation(), generation + 1);
    }
}
