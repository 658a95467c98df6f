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

/// What is written to a program's stdin: bytes, or chunks as they come (the channel's end
/// closes it).
pub(crate) enum Feed {
    Bytes(Vec<u8>),
    Stream(tokio::sync::mpsc::Receiver<Vec<u8>>),
}

impl Feed {
    /// The `live` chunks when there are, else `bytes`; None: nothing to write.
    pub(crate) fn of(
        bytes: Option<&[u8]>,
        live: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    ) -> Option<Feed> {
        match (live, bytes) {
            (Some(rx), _) => Some(Feed::Stream(rx)),
            (None, Some(b)) => Some(Feed::Bytes(b.to_vec())),
            (None, None) => None,
        }
    }

    /// Writes it to `w` in the background (each chunk flushed as it comes), then closes
    /// `w`. A reader that went away ends it.
    pub(crate) fn spawn<W>(self, mut w: W) -> tokio::task::JoinHandle<()>
    where
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use tokio::io::AsyncWriteExt;
        tokio::spawn(async move {
            match self {
                Feed::Stream(mut rx) => {
                    while let Some(data) = rx.recv().await {
                        if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                            break;
                        }
                    }
                }
                Feed::Bytes(data) => {
                    let _ = w.write_all(&data).await;
                }
            }
            let _ = w.shutdown().await;
        })
    }
}
