//! Test fixtures shared by the analysis subcommands' unit tests: a small profile and traces
//! that match it.

use std::path::Path;

use crate::profile::traces::TraceWriter;
use crate::profile::{ProfileModel, RoutingProfile, SequenceTrace};

/// A two-layer, four-expert OLMoE-layout profile with two subjects: the analysis tests'
/// profile, named `tiny-olmoe` and given the OLMoE module layout the exports need.
pub(crate) fn fixture_profile() -> RoutingProfile {
    let mut profile = crate::analysis::report::tests::profile();
    profile.model.id = "tiny-olmoe".into();
    profile.model.layout = Some(crate::selection::accounting::tests::olmoe_layout());
    profile
}

/// Traces matching [`fixture_profile`]'s counts (the analysis tests' traces), tokens named
/// `tok{id}`.
pub(crate) fn fixture_traces() -> Vec<SequenceTrace> {
    let mut traces = crate::analysis::report::tests::traces();
    for t in &mut traces {
        t.tokens = t.token_ids.iter().map(|i| format!("tok{i}")).collect();
    }
    traces
}

pub(crate) fn write_traces(path: &Path, model: &ProfileModel, traces: &[SequenceTrace]) {
    let mut w = TraceWriter::create(path, model).unwrap();
    for t in traces {
        w.write(t).unwrap();
    }
    w.finish().unwrap();
}
