//! llm-sandbox: run untrusted (LLM-written) code in sandboxes, driven by declarative
//! TOML/YAML job files.
//!
//! Data flows one way: [`spec`] (parse, validate) → [`plan`] (expand, render) →
//! [`run`] (schedule, execute on a [`backend`]) → [`checks`] → [`report`].

pub mod backend;
pub mod checks;
pub mod lang;
pub mod mcp;
pub mod owner;
pub mod plan;
pub mod plots;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod schema;
pub mod session;
pub mod spec;
pub mod stream;

pub use plan::job::PlannedJob;
pub use report::model::{JobReport, Report, Status};
pub use session::{ExecOutput, Session, SessionBuilder};
pub use spec::types::{BackendKind, Lang};
pub use stream::{OutputChunk, StdStream};

/// Exit codes of the command line (README, "Command line"), in one table.
pub mod exit_codes {
    /// Every selected job passed (or was skipped).
    pub const OK: i32 = 0;
    /// Some job failed, timed out or errored.
    pub const JOBS_FAILED: i32 = 1;
    /// Bad input (job file, template, CLI usage), reported before anything runs.
    pub const BAD_INPUT: i32 = 2;
    /// Interrupted by Ctrl-C (conventional 128 + SIGINT).
    pub const INTERRUPTED: i32 = 130;
}
