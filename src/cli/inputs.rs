//! Reading the files the analysis subcommands take (profiles, traces), with errors that name
//! the file.

use std::path::Path;

use anyhow::{Context, Result};

use crate::analysis::compare::check_same_model;
use crate::profile::traces::read_traces;
use crate::profile::{RoutingProfile, SequenceTrace};

/// Loads a profile; the error names the file.
pub(crate) fn load_profile(path: &Path) -> Result<RoutingProfile> {
    Ok(RoutingProfile::load(path)?)
}

/// Loads a traces file and checks it belongs to the profile's model.
pub(crate) fn load_traces(
    path: &Path,
    profile: &RoutingProfile,
    profile_path: &Path,
) -> Result<Vec<SequenceTrace>> {
    let (header, traces) = read_traces(path)?;
    check_same_model(&profile.model, &header.model).with_context(|| {
        format!(
            "{} and {} are not of the same model",
            path.display(),
            profile_path.display()
        )
    })?;
    Ok(traces)
}
