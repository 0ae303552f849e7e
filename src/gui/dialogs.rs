//! Native file dialogs (rfd) on a helper thread, so a dialog never blocks a frame. The result is
//! polled in `App::logic`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, bounded};

/// What a dialog's answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogPurpose {
    ModelFolder,
    Dataset,
    OpenProfile,
    SaveProfile,
    OpenSelection,
    SaveSelection,
    PeftDir,
    EsftFile,
    OpenSteering,
    SaveSteering,
    EvalData,
    TrainData,
    TrainOut,
}

pub struct Dialogs {
    tx: Sender<(DialogPurpose, PathBuf)>,
    rx: Receiver<(DialogPurpose, PathBuf)>,
    /// True while a dialog thread runs (one dialog at a time).
    open: Arc<AtomicBool>,
}

impl Default for Dialogs {
    fn default() -> Self {
        let (tx, rx) = bounded(4);
        Self {
            tx,
            rx,
            open: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Dialogs {
    fn spawn(
        &mut self,
        purpose: DialogPurpose,
        f: impl FnOnce() -> Option<PathBuf> + Send + 'static,
    ) {
        if self.open.swap(true, Ordering::AcqRel) {
            return;
        }
        let tx = self.tx.clone();
        let open = self.open.clone();
        let started = std::thread::Builder::new()
            .name("moescope-file-dialog".into())
            .spawn(move || {
                if let Some(p) = f() {
                    let _ = tx.send((purpose, p));
                }
                open.store(false, Ordering::Release);
            });
        if started.is_err() {
            self.open.store(false, Ordering::Release);
        }
    }

    pub fn pick_folder(&mut self, purpose: DialogPurpose) {
        self.spawn(purpose, || rfd::FileDialog::new().pick_folder());
    }

    pub fn pick_file(&mut self, purpose: DialogPurpose, filters: &[&str]) {
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        self.spawn(purpose, move || {
            let mut d = rfd::FileDialog::new();
            if filters.iter().any(|f| f == "gguf") {
                d = d.add_filter("GGUF model", &filters);
            } else if !filters.is_empty() {
                d = d.add_filter("data", &filters);
            }
            d.pick_file()
        });
    }

    pub fn save_file(&mut self, purpose: DialogPurpose, name: &str) {
        let name = name.to_string();
        self.spawn(purpose, move || {
            rfd::FileDialog::new().set_file_name(name).save_file()
        });
    }

    /// Answers received since the last call.
    pub fn poll(&mut self) -> Vec<(DialogPurpose, PathBuf)> {
        self.rx.try_iter().collect()
    }
}
