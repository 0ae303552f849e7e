//! The load job: a model folder or hub id (downloads reported as progress), routing only,
//! with an adapter merged if given.

use std::path::PathBuf;
use std::time::Instant;

use super::outbox::{Outbox, PROGRESS_INTERVAL};
use super::protocol::{Event, JobId};
use super::state::WorkerState;
use crate::model::hub::DownloadProgress;
use crate::model::{LoadOptions, load_model};

impl WorkerState {
    pub(super) fn load(&mut self, job: JobId, model: &str, adapter: Option<PathBuf>) {
        let model = model.trim();
        if model.is_empty() {
            return self.fail(
                Some(job),
                "no model given: enter a hub id or choose a folder".into(),
            );
        }
        self.outbox
            .progress(job, 0, 0, format!("resolving {model}"));
        let opts = LoadOptions {
            model: model.to_string(),
            routing_only: true,
            adapter: adapter.clone(),
            ..LoadOptions::default()
        };
        let mut progress = DownloadEvents {
            outbox: &self.outbox,
            job,
            file: String::new(),
            done: 0,
            total: 0,
            last: Instant::now(),
        };
        match load_model(&opts, Some(&mut progress)) {
            Ok(loaded) => {
                let info = loaded.model.info().clone();
                // Drop the old model first so two never sit in memory at once.
                self.model = None;
                self.model = Some(loaded);
                self.full = false;
                self.adapter = adapter;
                self.outbox.send(Event::ModelLoaded {
                    job,
                    info: Box::new(info),
                });
            }
            Err(e) => self.fail(Some(job), format!("cannot load {model}: {e:#}")),
        }
    }
}

/// Turns download progress into progress events (throttled).
struct DownloadEvents<'a> {
    outbox: &'a Outbox,
    job: JobId,
    file: String,
    done: u64,
    total: u64,
    last: Instant,
}

impl DownloadProgress for DownloadEvents<'_> {
    fn on_file(&mut self, file: &str, total_bytes: usize) {
        self.file = file.to_string();
        self.done = 0;
        self.total = total_bytes as u64;
        self.outbox
            .progress(self.job, 0, self.total, format!("downloading {file}"));
    }

    fn on_bytes(&mut self, bytes: usize) {
        self.done += bytes as u64;
        if self.last.elapsed() >= PROGRESS_INTERVAL || self.done >= self.total {
            self.last = Instant::now();
            self.outbox.progress(
                self.job,
                self.done,
                self.total,
                format!(
                    "downloading {} ({:.1} / {:.1} MB)",
                    self.file,
                    mb(self.done),
                    mb(self.total)
                ),
            );
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}
