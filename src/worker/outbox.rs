//! The worker's side of the event channel: events the UI must see, and progress events that
//! are dropped rather than waited for when the UI falls behind.

use std::time::Duration;

use crossbeam_channel::Sender;

use super::protocol::{Event, JobId};

/// Minimum time between two progress events of one job.
pub(super) const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Sends events and wakes the UI after each.
pub(super) struct Outbox {
    pub(super) events: Sender<Event>,
    pub(super) wake: Box<dyn Fn() + Send>,
}

impl Outbox {
    /// Sends an event the UI must see (waits if the queue is full; the UI drains every frame).
    pub(super) fn send(&self, event: Event) {
        // An error means the UI is gone; the command loop then ends on its own.
        let _ = self.events.send(event);
        (self.wake)();
    }

    /// Sends a progress event unless the queue is full.
    pub(super) fn progress(&self, job: JobId, done: u64, total: u64, label: String) {
        if self
            .events
            .try_send(Event::Progress {
                job,
                done,
                total,
                label,
            })
            .is_ok()
        {
            (self.wake)();
        }
    }
}
