//! The errors the backends' primitives return (engines, clusters, containers, pods, the
//! warm pools, the agent's protocol), one type for all of them: what kind of thing went
//! wrong is the variant, what happened and how to fix it the message. A job's report turns
//! them into status `error` with the message ([`super::error_report`]); the library's
//! `SessionError` keeps their kind.

/// What went wrong in a backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The engine or the cluster cannot be reached or is not set up here (the message says
    /// how to set it up).
    #[error("{0}")]
    Unavailable(String),
    /// The engine or the cluster refused or failed a call.
    #[error("{0}")]
    Engine(String),
    /// Making the environment failed: an image pull or build, libraries, setup commands.
    /// `log` is the build's output, when there is one.
    #[error("{message}")]
    Prepare {
        message: String,
        log: Option<String>,
    },
    /// Something failed in the sandbox itself: an exec could not run, the container or pod
    /// went away, copying files in or out failed.
    #[error("{0}")]
    Sandbox(String),
    /// The warm containers' agent said something malformed or too large.
    #[error("{0}")]
    Protocol(String),
    /// Interrupted (the run's or the session's cancel token): what ran was stopped.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// The message with the build log, when there is one.
    pub fn with_log(&self) -> String {
        match self {
            Error::Prepare {
                message,
                log: Some(l),
            } => format!("{message}\n{l}"),
            e => e.to_string(),
        }
    }
}

/// A backend call's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources, one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
