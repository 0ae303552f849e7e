//! The UI's handle on the worker thread: spawning it, queueing commands without waiting,
//! cancelling the running job, draining events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::outbox::Outbox;
use super::protocol::{Command, Event};
use super::state::WorkerState;

/// Commands queued per worker; more than this and [`Worker::send`] reports the worker busy.
const COMMAND_CAPACITY: usize = 16;
/// Events queued for the UI; progress events are dropped (not waited for) when it is full.
const EVENT_CAPACITY: usize = 256;

/// The UI's handle on the worker thread. Dropping it shuts the thread down.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker thread. `wake` is called after every event (pass a closure that
    /// requests a repaint).
    pub fn spawn(wake: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (cmd_tx, cmd_rx) = bounded(COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = bounded(EVENT_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let outbox = Outbox {
            events: ev_tx,
            wake: Box::new(wake),
        };
        let flag = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("moescope-worker".into())
            .spawn(move || {
                let mut state = WorkerState {
                    model: None,
                    full: false,
                    adapter: None,
                    cancel: flag,
                    outbox,
                };
                state.outbox.send(Event::Ready);
                state.run(&cmd_rx);
            })?;
        Ok(Self {
            commands: cmd_tx,
            events: ev_rx,
            cancel,
            thread: Some(thread),
        })
    }

    /// Queues a command without waiting; errors if the worker is busy with a full queue or gone.
    pub fn send(&self, command: Command) -> Result<(), String> {
        if matches!(command, Command::Cancel) {
            self.cancel();
        }
        self.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => {
                "the worker is busy: too many queued jobs; try again".to_string()
            }
            TrySendError::Disconnected(_) => "the worker thread has stopped".to_string(),
        })
    }

    /// Asks the running job to stop at its next check (between batches).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Events received so far, without waiting.
    pub fn try_events(&self) -> impl Iterator<Item = Event> + '_ {
        self.events.try_iter()
    }

    /// Waits up to `timeout` for the next event (tests and headless use; the GUI never waits).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Worker {
    /// Stops the thread and waits for it (tests; the GUI just drops the handle).
    pub fn shutdown(mut self) {
        self.cancel();
        let _ = self
            .commands
            .send_timeout(Command::Shutdown, Duration::from_secs(5));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    /// Cancels the running job and asks the thread to stop, without waiting for it: a long
    /// forward pass must not freeze the closing window. The thread also stops when its
    /// command channel disconnects.
    fn drop(&mut self) {
        self.cancel();
        let _ = self.commands.try_send(Command::Shutdown);
    }
}
