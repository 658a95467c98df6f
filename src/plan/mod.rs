//! Expansion (matrix, dataset), rendering (minijinja), validation and batching.

pub mod deps;
pub mod expand;
pub mod job;

pub use expand::{
    expand_file, load_dataset, merge, plan_file, plan_loaded, plan_paths, plan_paths_diag,
    resolve_paths,
};
pub use job::PlannedJob;

use crate::spec::types::BackendKind;
use std::path::PathBuf;

/// Options of `run`, `plan`, `validate` that shape the plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--var KEY=VALUE` overrides (win over every file's `vars`).
    pub vars: Vec<(String, String)>,
    /// `--backend B` overrides every job's backend.
    pub backend_override: Option<BackendKind>,
    /// `--filter EXPR` (name glob, or `tag:NAME`); a job is selected when any filter matches.
    pub filters: Vec<String>,
}

/// The expanded jobs of all given paths.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Selected jobs, in plan order (`id` is the index in this vector).
    pub jobs: Vec<PlannedJob>,
    /// Every job file that was loaded, in sorted order.
    pub files: Vec<PathBuf>,
    /// Every job before filtering (count).
    pub total_before_filter: usize,
    /// What is not wrong enough to stop, but likely a mistake (a `--var` no file uses).
    pub warnings: Vec<String>,
}
