//! How the runner and the warm containers' agent ([`super::agent`]) frame their messages:
//! a JSON header and the message's bytes (inputs, stdin, output, packed files) as raw
//! blobs, every part length-prefixed, so neither side scans for a delimiter, encodes bytes
//! as text, or guesses a size before it reads.
//!
//! ```text
//! message := blobs:u32 | json_len:u64 | json | (blob_len:u64 | blob) × blobs   (little-endian)
//! ```

use crate::backend::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Read;

/// A message whose bytes travel as blobs beside its JSON header.
pub trait Framed: Serialize + DeserializeOwned {
    /// Moves its bytes out, in an order of its own (the JSON header then lacks them).
    fn take_blobs(&mut self) -> Vec<Vec<u8>>;
    /// Puts them back, in the order of [`Framed::take_blobs`]; Err when they do not fit
    /// the header.
    fn put_blobs(&mut self, blobs: Vec<Vec<u8>>) -> Result<(), Error>;
}

/// The frame of `msg`.
pub fn encode<T: Framed>(mut msg: T) -> Result<Vec<u8>, Error> {
    let blobs = msg.take_blobs();
    let json = serde_json::to_vec(&msg).map_err(|e| Error::Protocol(e.to_string()))?;
    drop(msg);
    let total = 12 + json.len() + blobs.iter().map(|b| 8 + b.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for b in &blobs {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    }
    Ok(out)
}

/// Where a frame is read from: the agent's stdin (blocking) or the runner's end of the
/// container's attach stream (async).
pub trait Source {
    /// Exactly `n` bytes; Ok(None) when the source ended before the first of them.
    fn exact(
        &mut self,
        n: usize,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, Error>>;
}

/// Reads one message, refusing one whose parts add up to more than `max` bytes. Ok(None):
/// the source ended between messages.
pub async fn read<T: Framed, S: Source>(src: &mut S, max: u64) -> Result<Option<T>, Error> {
    let Some(head) = src.exact(12).await? else {
        return Ok(None);
    };
    let count = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as u64;
    let json_len = u64::from_le_bytes(head[4..].try_into().unwrap_or_default());
    let mut budget = Budget { left: max };
    budget.take(json_len.saturating_add(count.saturating_mul(8)))?;
    let json = need(src.exact(json_len as usize).await?)?;
    let mut msg: T =
        serde_json::from_slice(&json).map_err(|e| Error::Protocol(format!("bad message: {e}")))?;
    drop(json);
    let mut blobs = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = need(src.exact(8).await?)?;
        let len = u64::from_le_bytes(len[..].try_into().unwrap_or_default());
        budget.take(len)?;
        blobs.push(need(src.exact(len as usize).await?)?);
    }
    msg.put_blobs(blobs)?;
    Ok(Some(msg))
}

/// The length of the first message in `buf` when all of it is there (None: not yet).
fn complete(buf: &[u8]) -> Option<usize> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
    };
    let count = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?);
    let mut end = 12usize.checked_add(usize::try_from(word(4)?).ok()?)?;
    for _ in 0..count {
        let len = usize::try_from(word(end)?).ok()?;
        end = end.checked_add(8)?.checked_add(len)?;
    }
    (buf.len() >= end).then_some(end)
}

/// Takes the first message out of `buf` when all of it is there (Ok(None): not yet).
pub fn take<T: Framed>(buf: &mut Vec<u8>, max: u64) -> Result<Option<T>, Error> {
    let Some(n) = complete(buf) else {
        // Bytes past the budget that make no message yet never will within it.
        Budget { left: max }.take(buf.len() as u64)?;
        return Ok(None);
    };
    let msg = block_on(read::<T, _>(&mut Blocking(&buf[..n]), max))?;
    buf.drain(..n);
    msg.map(Some)
        .ok_or_else(|| Error::Protocol("an empty message".into()))
}

struct Budget {
    left: u64,
}

impl Budget {
    fn take(&mut self, n: u64) -> Result<(), Error> {
        self.left = self.left.checked_sub(n).ok_or_else(|| {
            Error::Protocol(
                "the message is larger than the limits allow (the job's output and file limits)"
                    .into(),
            )
        })?;
        Ok(())
    }
}

fn need(part: Option<Vec<u8>>) -> Result<Vec<u8>, Error> {
    part.ok_or_else(|| Error::Protocol("the message ended early".into()))
}

/// A blocking reader as a [`Source`] (the agent's stdin; run with a no-op waker: it
/// never waits on the runtime).
pub struct Blocking<R: Read>(pub R);

impl<R: Read> Source for Blocking<R> {
    async fn exact(&mut self, n: usize) -> Result<Option<Vec<u8>>, Error> {
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.0.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(Error::Protocol("the message ended early".into())),
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Protocol(e.to_string())),
            }
        }
        Ok(Some(buf))
    }
}

/// Runs a future that never waits on a runtime (a [`Blocking`] read) to its end.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Msg {
        name: String,
        #[serde(skip)]
        a: Vec<u8>,
        #[serde(skip)]
        b: Option<Vec<u8>>,
    }

    impl Framed for Msg {
        fn take_blobs(&mut self) -> Vec<Vec<u8>> {
            let mut v = vec![std::mem::take(&mut self.a)];
            v.extend(self.b.take());
            v
        }
        fn put_blobs(&mut self, blobs: Vec<Vec<u8>>) -> Result<(), Error> {
            let mut it = blobs.into_iter();
            self.a = it.next().ok_or(Error::Protocol("no a".into()))?;
            self.b = it.next();
            Ok(())
        }
    }

    fn read_all(bytes: &[u8], max: u64) -> Result<Vec<Msg>, Error> {
        let mut src = Blocking(bytes);
        let mut out = vec![];
        while let Some(m) = block_on(read::<Msg, _>(&mut src, max))? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn messages_round_trip_with_any_bytes() {
        let m1 = Msg {
            name: "one\n{\"x\"".into(),
            a: (0..=255).collect(),
            b: Some(b"\n\n\0".to_vec()),
        };
        let m2 = Msg {
            name: "two".into(),
            a: vec![],
            b: None,
        };
        let mut bytes = encode(m1.clone()).unwrap();
        bytes.extend(encode(m2.clone()).unwrap());
        assert_eq!(read_all(&bytes, 1 << 20).unwrap(), vec![m1, m2]);
    }

    /// Bytes as they come, in pieces of any size: a message is taken once all of it is
    /// there, and only then.
    #[test]
    fn messages_are_taken_from_a_buffer_once_complete() {
        let m1 = Msg {
            name: "one".into(),
            a: vec![1; 300],
            b: Some(vec![]),
        };
        let m2 = Msg {
            name: "two".into(),
            a: vec![2; 5],
            b: None,
        };
        let mut bytes = encode(m1.clone()).unwrap();
        bytes.extend(encode(m2.clone()).unwrap());
        for piece in [1, 7, 13, 400, bytes.len()] {
            let (mut buf, mut got) = (Vec::new(), Vec::new());
            for chunk in bytes.chunks(piece) {
                buf.extend_from_slice(chunk);
                while let Some(m) = take::<Msg>(&mut buf, 1 << 20).unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, vec![m1.clone(), m2.clone()], "pieces of {piece}");
            assert!(buf.is_empty());
        }
        // Bytes that never make a message within the budget are refused.
        let mut buf = bytes[..bytes.len() - 1].to_vec();
        assert!(take::<Msg>(&mut buf, 100).is_err());
    }

    #[test]
    fn a_message_past_the_budget_or_cut_short_is_refused() {
        let m = Msg {
            name: "x".into(),
            a: vec![7; 1000],
            b: None,
        };
        let bytes = encode(m).unwrap();
        let e = read_all(&bytes, 500).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let e = read_all(&bytes[..bytes.len() - 1], 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ended early"), "{e}");
        // A forged length does not make the reader allocate it.
        let mut forged = bytes.clone();
        forged[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_all(&forged, 1 << 20).is_err());
    }
}
