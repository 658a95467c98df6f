//! Typed messages from the helper and the init to the host, one JSON object per line on
//! the control pipe.

use super::StepKind;
use serde::{Deserialize, Serialize};
use std::io::Write;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// The sandbox is set up; steps start now.
    Ready { setup_us: u64 },
    /// One step ended.
    Step(StepResult),
    /// Files copied out (relative paths) and those refused, with why.
    Collected {
        files: Vec<String>,
        refused: Vec<(String, String)>,
    },
    /// What the cgroup saw (sent by the helper after the init is gone).
    Limits(LimitEvents),
    /// Where the helper's time went (µs since the helper started), for `bench/` and debugging.
    Timing { phases: Vec<(String, u64)> },
    /// The sandbox could not be set up or run; `hint` says how to fix it.
    Error {
        message: String,
        hint: Option<String>,
    },
}

impl Msg {
    /// An `Error`'s text, its hint after the message.
    pub fn error_text(&self) -> Option<String> {
        match self {
            Msg::Error { message, hint } => Some(match hint {
                Some(h) => format!("{message}: {h}"),
                None => message.clone(),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub kind: Option<StepKind>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// Captured output (non-run steps).
    pub output: String,
    pub output_truncated: bool,
    /// exec failed (program missing, …).
    pub spawn_error: Option<String>,
    /// What the step's processes used ([`super::usage`]); None when it was not measured.
    #[serde(default)]
    pub usage: Option<super::usage::Usage>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitEvents {
    /// How limits were enforced: "cgroup v1", "cgroup v2" or "rlimits".
    pub enforcement: String,
    pub oom_killed: bool,
    pub pids_limit_hit: bool,
    pub memory_peak: Option<u64>,
}

/// Writes one message as a JSON line on `fd` (best effort: the host may be gone).
pub fn send(fd: i32, msg: &Msg) {
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    // SAFETY: the fd stays open for the process's lifetime; ManuallyDrop keeps it open.
    let mut f = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    let _ = f.write_all(&line);
}

/// Parses the control stream.
pub fn parse_all(bytes: &[u8]) -> Vec<Msg> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}
