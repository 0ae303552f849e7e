//! The thread that owns the model. The GUI sends typed [`Command`]s and drains typed [`Event`]s
//! over bounded crossbeam channels; it never waits on the model.
//!
//! - [`Worker::spawn`] starts a named thread (`moescope-worker`); the first event is
//!   [`Event::Ready`].
//! - Commands go with [`Worker::send`] (`try_send`: a full queue is reported as "worker busy",
//!   never a blocked frame); events come back through [`Worker::try_events`].
//! - Every event sent calls the `wake` callback (the GUI passes `ctx.request_repaint()`), so an
//!   idle window wakes up when a job progresses.
//! - Cancel: [`Worker::cancel`] sets a shared flag the running job checks between batches; the
//!   job then ends with [`Event::Cancelled`].
//! - Only plain data crosses: [`ModelInfo`](crate::model::ModelInfo), `Arc<RoutingProfile>`, [`TokenTrace`],
//!   [`SteerResult`], `Arc<EvalReport>`; never a tensor or a device. Errors cross as
//!   `format!("{err:#}")` text, handled once by the UI.
//! - Models load for routing only (no LM head, no experts in the last MoE layer: less memory
//!   for profiling). The first [`Command::Generate`] or [`Command::Eval`] reloads the same files
//!   in full, once.
//!
//! Files: `protocol.rs` (the messages), `handle.rs` ([`Worker`]), `outbox.rs` (sending events),
//! `state.rs` (the thread's state and command loop), one file per job (`load.rs`,
//! `profile.rs`, `trace.rs`, `generate.rs`, `eval.rs`, `train.rs`). Each job is a thin caller of
//! the same library function the CLI runs ([`crate::inference`], [`crate::steering::compare`],
//! [`crate::train`]).
//!
//! Must not import `gui` or `render`.

mod eval;
mod generate;
mod handle;
mod load;
mod outbox;
mod profile;
mod protocol;
mod state;
mod trace;
mod train;

pub use crate::inference::trace::{TokenTrace, TracedToken};
pub use crate::steering::compare::{Side, SteerResult};
pub use handle::Worker;
pub use protocol::{Command, Event, JobId, TOP_TOKENS_PER_EXPERT, TopTokenTable};

#[cfg(test)]
mod tests;
