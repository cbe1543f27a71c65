//! The transport seam: what consensus on one core sees of the network.
//!
//! A [`Transport`] belongs to one core and is used only from that core's executor, so its
//! futures carry no `Send` bound. It delivers [`Frame`]s to `(node, core)` peers over *lanes*:
//! per lane, frames arrive in order, without duplicates, while the link stays up. When a link
//! goes down ([`LinkEvent`]), frames still queued or in flight on it are dropped and counted;
//! the protocol above (Raft) retransmits what matters. This is the contract of both
//! implementations: [`crate::quic::QuicTransport`] and [`crate::memory::SimTransport`].
//!
//! Backpressure: each link has a bounded send queue; `send` waits for room and `try_send`
//! fails with [`TransportError::QueueFull`]. The receive queue is bounded too; when it is full
//! the transport stops reading from the network and flow control slows the sender.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use crate::frame::Frame;
use crate::types::{CoreAddr, LaneId, NodeId};

/// Errors at the transport boundary.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The link's send queue is at its limit; retry after the queue drains (or use `send`).
    #[error("send queue to {peer} full ({queued_frames} frames, {queued_bytes} bytes queued)")]
    QueueFull {
        /// The peer whose queue is full.
        peer: CoreAddr,
        /// Frames queued at the time.
        queued_frames: usize,
        /// Bytes queued at the time.
        queued_bytes: usize,
    },
    /// No address is known for the node.
    #[error("no address known for node {node:?}")]
    UnknownPeer {
        /// The node.
        node: NodeId,
    },
    /// A frame is over [`crate::frame::FRAME_HEADER_BYTES_MAX`] or the body limit.
    #[error("frame too large: header {header_bytes} bytes, body {body_bytes} bytes")]
    FrameTooLarge {
        /// Header length.
        header_bytes: usize,
        /// Body length.
        body_bytes: usize,
    },
    /// A message could not be archived.
    #[error("encoding a frame header failed: {reason}")]
    Encode {
        /// The serializer's error.
        reason: String,
    },
    /// A received header failed validation.
    #[error("decoding a frame header failed: {reason}")]
    Decode {
        /// The validator's error.
        reason: String,
    },
    /// The link went down while this frame waited for queue room.
    #[error("link to {peer} went down")]
    LinkDown {
        /// The peer.
        peer: CoreAddr,
    },
    /// The transport was shut down.
    #[error("transport shut down")]
    Shutdown,
    /// A socket operation failed.
    #[error("{operation} on {address}: {source}")]
    Io {
        /// What we were doing.
        operation: &'static str,
        /// The local or remote address involved.
        address: String,
        /// The error.
        source: std::io::Error,
    },
    /// TLS or QUIC configuration is unusable (bad certificates, bad limits).
    #[error("transport configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

/// A frame received from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The sending core.
    pub from: CoreAddr,
    /// The lane it travelled on.
    pub lane: LaneId,
    /// The frame.
    pub frame: Frame,
}

/// State change of an outbound link (the one this core dials to a peer core).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link is established; frames flow.
    Up {
        /// The peer.
        peer: CoreAddr,
    },
    /// The link was lost or could not be established; queued frames were dropped. The
    /// transport redials with backoff while the link is wanted.
    Down {
        /// The peer.
        peer: CoreAddr,
        /// Why, for logs.
        reason: String,
    },
}

/// Limits of one core's transport. Every queue is bounded by these.
#[derive(Clone, Debug)]
pub struct TransportLimits {
    /// Frames queued per link before `try_send` fails.
    pub send_queue_frames_max: usize,
    /// Bytes queued per link before `try_send` fails.
    pub send_queue_bytes_max: usize,
    /// Received frames held before the transport stops reading the network.
    pub recv_queue_frames_max: usize,
    /// Received bytes held before the transport stops reading the network.
    pub recv_queue_bytes_max: usize,
    /// Link events held; older events are dropped and counted past this.
    pub link_events_max: usize,
    /// Distinct lanes per link (QUIC streams per connection).
    pub lanes_per_link_max: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            send_queue_frames_max: 4096,
            send_queue_bytes_max: 32 * 1024 * 1024,
            recv_queue_frames_max: 8192,
            recv_queue_bytes_max: 32 * 1024 * 1024,
            link_events_max: 1024,
            lanes_per_link_max: 1024,
        }
    }
}

/// Counters of one core's transport (monotonic unless named as a current value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportMetrics {
    /// Frames handed to the network.
    pub frames_sent: u64,
    /// Frame bytes (prefix, header, body) handed to the network.
    pub bytes_sent: u64,
    /// Frames delivered to the receive queue.
    pub frames_received: u64,
    /// Frame bytes delivered to the receive queue.
    pub bytes_received: u64,
    /// Frames dropped because their link went down.
    pub frames_dropped_link_down: u64,
    /// `try_send` calls refused with `QueueFull`.
    pub send_queue_full: u64,
    /// Times reading stopped because the receive queue was full.
    pub recv_queue_full: u64,
    /// Link events dropped because the event queue was full.
    pub link_events_dropped: u64,
    /// Outbound connection attempts.
    pub connects: u64,
    /// Outbound links that went down (failed or lost).
    pub links_down: u64,
    /// Current: frames in all send queues.
    pub send_queue_frames: usize,
    /// Current: frames in the receive queue.
    pub recv_queue_frames: usize,
    /// Current: bytes in the receive queue.
    pub recv_queue_bytes: usize,
}

/// One core's view of the replication network. See the module doc for the contract.
// Futures are deliberately not `Send`: a transport lives and dies on one core's executor.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// This core's address.
    fn local(&self) -> CoreAddr;
    /// Wants a link to `peer`: dials now if not connected and keeps redialing with backoff.
    fn open(&self, peer: CoreAddr) -> Result<(), TransportError>;
    /// Stops wanting the link: closes it and drops its queue.
    fn close_link(&self, peer: CoreAddr);
    /// Whether the outbound link to `peer` is up.
    fn is_up(&self, peer: CoreAddr) -> bool;
    /// Queues `frame` for `peer` on `lane` (opening the link if needed), or fails when the
    /// link's queue is full.
    fn try_send(&self, peer: CoreAddr, lane: LaneId, frame: Frame) -> Result<(), TransportError>;
    /// Queues `frame`, waiting for room in the link's queue.
    async fn send(&self, peer: CoreAddr, lane: LaneId, frame: Frame) -> Result<(), TransportError>;
    /// The next received frame, if one is waiting.
    fn try_recv(&self) -> Option<Incoming>;
    /// The next received frame; waits for one.
    async fn recv(&self) -> Result<Incoming, TransportError>;
    /// The next link event, if one is waiting.
    fn try_next_event(&self) -> Option<LinkEvent>;
    /// The next link event; waits for one.
    async fn next_event(&self) -> Result<LinkEvent, TransportError>;
    /// A snapshot of the counters.
    fn metrics(&self) -> TransportMetrics;
}

/// The receive side shared by both implementations: bounded queues of frames and events with
/// the wakers of whoever waits on them. Single-threaded by construction (one core).
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pub(crate) frames: VecDeque<Incoming>,
    pub(crate) frame_bytes: usize,
    pub(crate) events: VecDeque<LinkEvent>,
    frame_waker: Option<Waker>,
    event_waker: Option<Waker>,
}

impl Inbox {
    pub(crate) fn has_room(&self, limits: &TransportLimits) -> bool {
        self.frames.len() < limits.recv_queue_frames_max
            && self.frame_bytes < limits.recv_queue_bytes_max
    }

    /// Delivers a frame. Callers check `has_room` first; a frame may overshoot the byte limit by
    /// at most one frame, which bounds the queue at `recv_queue_bytes_max + FRAME_BYTES_MAX`.
    pub(crate) fn push_frame(&mut self, incoming: Incoming, metrics: &mut TransportMetrics) {
        let bytes = incoming.frame.wire_bytes();
        self.frame_bytes += bytes;
        self.frames.push_back(incoming);
        metrics.frames_received += 1;
        metrics.bytes_received += bytes as u64;
        if let Some(waker) = self.frame_waker.take() {
            waker.wake();
        }
    }

    pub(crate) fn pop_frame(&mut self) -> Option<Incoming> {
        let incoming = self.frames.pop_front()?;
        self.frame_bytes -= incoming.frame.wire_bytes();
        Some(incoming)
    }

    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        match self.pop_frame() {
            Some(incoming) => Poll::Ready(incoming),
            None => {
                self.frame_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(crate) fn push_event(
        &mut self,
        event: LinkEvent,
        limits: &TransportLimits,
        metrics: &mut TransportMetrics,
    ) {
        if self.events.len() >= limits.link_events_max {
            // The oldest event is the least useful: a later one supersedes it for that peer.
            self.events.pop_front();
            metrics.link_events_dropped += 1;
        }
        self.events.push_back(event);
        if let Some(waker) = self.event_waker.take() {
            waker.wake();
        }
    }

    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<LinkEvent> {
        match self.events.pop_front() {
            Some(event) => Poll::Ready(event),
            None => {
                self.event_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Wakes every waiter (used at shutdown so they observe it).
    pub(crate) fn wake_all(&mut self) {
        if let Some(waker) = self.frame_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.event_waker.take() {
            waker.wake();
        }
    }
}

/// A wake-up flag for a driver task: set by whoever makes work, awaited by the driver.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub(crate) fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub(crate) async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Wakers of tasks blocked in `send` on a full queue; all are woken when any room frees (few
/// senders per core, so a thundering herd of them is cheap).
#[derive(Debug, Default)]
pub(crate) struct SendWaiters {
    wakers: Vec<Waker>,
}

impl SendWaiters {
    pub(crate) fn register(&mut self, cx: &mut Context<'_>) {
        if !self.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            self.wakers.push(cx.waker().clone());
        }
    }

    pub(crate) fn wake_all(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }
}
