//! Output as it is produced: the chunks a streaming `run`/`execute_command` (and the
//! `exec` command) hand over while the program still runs.
//!
//! Chunks of one stream arrive in the order they were written; stdout and stderr are
//! separate streams (their relative order is not preserved). Each stream is capped at the
//! sandbox's output limit: the chunks carry exactly the bytes the buffered result keeps,
//! and once a stream passes the cap no more chunks come and the program is stopped.

use std::borrow::Cow;

/// Which of the program's output streams a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StdStream {
    Stdout,
    Stderr,
}

/// Bytes the program wrote to one stream, as they came (not split at line boundaries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: StdStream,
    pub data: Vec<u8>,
}

impl OutputChunk {
    /// The bytes as text (invalid UTF-8, e.g. a character split between two chunks,
    /// becomes U+FFFD: join the `data` of several chunks to decode exactly).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.data)
    }
}

/// Where the sandbox sends chunks. Bounded: a consumer that does not keep up slows the
/// program down (as a terminal does) instead of buffering without limit.
pub type ChunkSender = tokio::sync::mpsc::Sender<OutputChunk>;

/// How many chunks may wait for the consumer.
pub const CHANNEL_DEPTH: usize = 64;

/// A new chunk channel.
pub fn channel() -> (ChunkSender, tokio::sync::mpsc::Receiver<OutputChunk>) {
    tokio::sync::mpsc::channel(CHANNEL_DEPTH)
}
