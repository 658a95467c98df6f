//! What a network namespace shows in `/proc/net`, kept when the namespace is new and compared
//! after every job: the proof that a job left nothing in a namespace the next job shares
//! (the counters of every protocol, the socket lists and counts, routes and the IPv6 route
//! cache, flow labels, multicast memberships). A job that sent or tried to send a packet,
//! left a socket, looked up an IPv6 route or made a flow label has changed some of it.
//! Used by the native server for its slot's namespace (`slotnet`) and by the warm
//! containers' agent for its container's (`backend::docker::agent`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Files of `/proc/net` not compared:
/// - what shows the whole machine, not the namespace it is read in: every core's packet
///   counts, the IPv4 route cache's statistics and route realms' accounting, the packet
///   handlers (a host `tcpdump` is listed in every namespace), the protocols' memory, the
///   loaded netfilter extensions;
/// - the socket lists whose reading walks the whole machine's table (0.6 ms each for TCP
///   here): the sockets in them are counted per namespace in `sockstat` and `sockstat6`
///   (TCP's in TIME_WAIT too), and connection tracking's entries come only from packets,
///   which `snmp` counts.
const NOT_COMPARED: &[&str] = &[
    "softnet_stat",
    "stat/rt_cache",
    "rt_acct",
    "ptype",
    "protocols",
    "ip_tables_matches",
    "ip_tables_targets",
    "ip6_tables_matches",
    "ip6_tables_targets",
    "arp_tables_matches",
    "arp_tables_targets",
    "tcp",
    "tcp6",
    "udp",
    "udp6",
    "udplite",
    "udplite6",
    "raw",
    "raw6",
    "nf_conntrack",
];

/// `/proc/net` files of a namespace (their paths below `/proc/net`, opened in it: a
/// `/proc/net` file shows the namespace it was opened in) and their text when the view was
/// taken.
type Watched = Vec<(PathBuf, File, Vec<u8>)>;

/// Every compared file of a namespace's `/proc/net` and what it showed.
pub struct NetView {
    files: Watched,
    buf: Vec<u8>,
}

impl NetView {
    /// Opens the files of the calling thread's namespace (nothing is read yet).
    pub fn open() -> Vec<(PathBuf, File)> {
        let base = Path::new("/proc/thread-self/net");
        let mut files = Vec::new();
        open_all(base, base, &mut files);
        files
    }

    /// What `files` ([`NetView::open`], in any namespace) show now; None when the socket
    /// counts (`sockstat`) cannot be read: such a namespace could not be checked.
    pub fn of(files: Vec<(PathBuf, File)>) -> Option<NetView> {
        let mut buf = Vec::with_capacity(16 << 10);
        let mut kept = Vec::with_capacity(files.len());
        for (rel, mut f) in files {
            if read_masked(&rel, &mut f, &mut buf) {
                kept.push((rel, f, buf.clone()));
            }
        }
        kept.iter()
            .any(|(rel, _, _)| rel == Path::new("sockstat"))
            .then_some(NetView { files: kept, buf })
    }

    /// The first file that shows something else than when the view was taken (call it when
    /// no process of a job is left in the namespace); None: the namespace is as it was.
    pub fn changed(&mut self) -> Option<&Path> {
        let buf = &mut self.buf;
        for (rel, f, seen) in self.files.iter_mut() {
            if !read_masked(rel, f, buf) || buf != seen {
                return Some(rel.as_path());
            }
        }
        None
    }

    /// Whether the namespace has no interface but the loopback (`dev`): what no packet from
    /// outside can reach, so that only its jobs change what it shows.
    pub fn loopback_only(&self) -> bool {
        self.files
            .iter()
            .find(|(rel, _, _)| rel == Path::new("dev"))
            .is_some_and(|(_, _, text)| only_loopback(&String::from_utf8_lossy(text)))
    }
}

/// Whether `/proc/net/dev`'s text (two header lines, then `name: counters` per interface)
/// lists the loopback and nothing else.
fn only_loopback(dev: &str) -> bool {
    let names: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim())
        .collect();
    names == ["lo"]
}

/// Opens every file below `dir` (a `/proc/net` of the current namespace) except the
/// [`NOT_COMPARED`] ones; `rel` paths are relative to `base`.
fn open_all(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, File)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(rel) = path.strip_prefix(base).map(Path::to_path_buf) else {
            continue;
        };
        if NOT_COMPARED.iter().any(|m| rel == Path::new(m)) {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => open_all(base, &path, out),
            Ok(t) if t.is_file() => {
                if let Ok(f) = File::open(&path) {
                    out.push((rel, f));
                }
            }
            _ => {}
        }
    }
}

/// Reads `f` from its start into `buf`; in `sockstat`, the figures that count the whole
/// machine ([`crate::backend::clean::sockstat_of_namespace`]) are blanked.
fn read_masked(rel: &Path, f: &mut File, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    if f.seek(SeekFrom::Start(0)).is_err() || !read_all(f, buf) {
        return false;
    }
    if rel == Path::new("sockstat") {
        let text = String::from_utf8_lossy(buf).into_owned();
        *buf = crate::backend::clean::sockstat_of_namespace(&text).into_bytes();
    }
    true
}

/// Reads `f` from where it is to its end into `buf` with plain `read`s, the system calls
/// this check is made of (it runs after every job): `File::read_to_end` would also ask for
/// the file's size and position first (`statx`, `lseek`: two more calls per file, and a
/// `/proc` file's size is 0 anyway); through `Take` it has no size to ask for. The reads
/// stay sequential: a `pread` at another offset makes a seq_file render its whole text
/// again to find it.
fn read_all(f: &mut File, buf: &mut Vec<u8>) -> bool {
    f.take(u64::MAX).read_to_end(buf).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_loopback_is_told_apart_from_any_other_interface() {
        let head = "Inter-|   Receive |  Transmit\n face |bytes    packets|bytes packets\n";
        let lo = "    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n";
        let eth = "  eth0:    1234      10    0    0    0     0          0         0      456       5    0    0    0     0       0          0\n";
        assert!(only_loopback(&format!("{head}{lo}")));
        assert!(!only_loopback(&format!("{head}{lo}{eth}")));
        assert!(!only_loopback(&format!("{head}{eth}")));
        assert!(!only_loopback(head), "no loopback at all");
        assert!(!only_loopback(""));
    }
}
