//! Prompt and profile files: reading a dataset or prompt folder into prompts, opening and saving
//! routing profiles, with the outcome reported as a message.

use std::path::Path;
use std::sync::Arc;

use crate::data::DataOptions;
use crate::gui::state::AppState;
use crate::profile::RoutingProfile;

impl AppState {
    /// Loads prompts from a dataset file or prompt folder.
    pub fn load_prompts(&mut self, path: &Path) {
        let opts = DataOptions {
            subject_optional: false,
            subject_column: Some(self.ui.subject_column.clone()).filter(|s| !s.is_empty()),
            text_column: Some(self.ui.text_column.clone()).filter(|s| !s.is_empty()),
            max_per_subject: None,
        };
        match crate::data::load_prompts(path, &opts) {
            Ok(set) => {
                self.info(format!(
                    "{} prompts in {} subjects from {}",
                    set.len(),
                    set.subjects().len(),
                    path.display()
                ));
                self.ui.last_dataset = Some(path.display().to_string());
                self.prompts = Some(Arc::new(set));
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    pub fn open_profile(&mut self, path: &Path) {
        match RoutingProfile::load(path) {
            Ok(p) => {
                self.info(format!("opened profile {}", path.display()));
                self.set_profile(Arc::new(p), Some(path.to_path_buf()));
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    pub fn save_profile(&mut self, path: &Path) {
        let Some(p) = self.profile.clone() else {
            self.error("no profile to save: run profiling first");
            return;
        };
        match p.save(path) {
            Ok(()) => {
                self.info(format!("saved profile to {}", path.display()));
                self.profile_path = Some(path.to_path_buf());
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }
}
