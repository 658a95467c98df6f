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
    /// `--filter EXPR` (name glob, or `tag:NAME`); a job is selected when any filter
    /// matches; `!EXPR` excludes what it matches.
    pub filters: Vec<String>,
    /// `--shard I/N` (1-based): the jobs whose name hashes to shard I of N.
    pub shard: Option<Shard>,
}

/// `--shard I/N`: a deterministic part of the selected jobs, the same on every machine (by
/// a hash of the job's name), so that N machines together run each job once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based.
    pub index: u64,
    pub count: u64,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// `I/N` with 1 <= I <= N.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let bad = || {
            format!("invalid shard `{s}`: use I/N with 1 <= I <= N, e.g. 2/3 (the second of three)")
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<u64>().map_err(|_| bad())?,
            n.trim().parse::<u64>().map_err(|_| bad())?,
        );
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether the job named `name` is in this shard.
    pub fn holds(&self, name: &str) -> bool {
        use sha2::Digest;
        let h = sha2::Sha256::digest(name.as_bytes());
        let n = u64::from_le_bytes(h[..8].try_into().unwrap_or_default());
        n % self.count == self.index - 1
    }
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
    /// What identifies the selected jobs before `--shard` (a hash of their names): the
    /// reports of one job set's shards carry the same one (`llm-sandbox merge`).
    pub job_set: String,
    pub shard: Option<Shard>,
}
