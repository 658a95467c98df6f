//! The network namespace of a sandbox server's slot (as root): made once, and every sandbox
//! of the slot without `network` runs in it instead of in a namespace of its own. Making and
//! freeing a network namespace costs the kernel about 0.8 ms of CPU (the per-namespace state
//! of every protocol, then its teardown and an RCU grace period in kernel workers): a tenth
//! of a HumanEval sample's whole cost.
//!
//! Only one job at a time ever runs in it (a server serves one sandbox at a time; the slots'
//! namespaces are distinct), and the next job finds it as it was made: after every job the
//! server reads everything the namespace shows in `/proc/net` ([`SlotNet::untouched`]: the
//! counters of every protocol, the socket lists and counts, routes and the IPv6 route
//! cache, flow labels, multicast memberships) and compares it with what it showed when it
//! was new. A job that sent or tried to send a packet, left a socket, looked up an IPv6
//! route or made a flow label has changed some of it, and the slot gets a new namespace
//! before its next job. No job can change its configuration: the namespace belongs to the
//! host's user namespace, so no job (nor its sandbox's init) has any capability in it, and
//! `/proc/sys` is read-only to the steps (Landlock). What a job can change that no file
//! shows (the IPv4 route cache a UDP `connect` fills: only the whole machine's statistics
//! count it) the next job could tell only by timing (README, "Security").
//!
//! The server itself stays in the host's namespace (`slirp4netns` for jobs with network
//! starts from there): it enters the slot's only to clone a sandbox ([`SlotNet::enter`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
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

/// A `/proc/net` file of a namespace (its path below `/proc/net`, opened in it) and its text
/// when the namespace was new.
type Watched = Vec<(PathBuf, File, Vec<u8>)>;

/// The network namespace a slot's sandboxes share, and what it showed when it was new.
pub struct SlotNet {
    /// The host's network namespace (the server's own).
    host: OwnedFd,
    ns: OwnedFd,
    /// Every per-namespace file of its `/proc/net`, opened in it (a `/proc/net` file shows
    /// the namespace it was opened in).
    files: Watched,
    buf: Vec<u8>,
}

impl SlotNet {
    /// A new namespace with its loopback up, or None when this process may not make one
    /// (not root): its sandboxes then get a namespace each.
    pub fn new() -> Option<SlotNet> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let host = File::open("/proc/thread-self/ns/net").ok()?.into();
        let (ns, files) = Self::make(&host)?;
        Some(SlotNet {
            host,
            ns,
            files,
            buf: Vec::with_capacity(16 << 10),
        })
    }

    /// Makes a namespace, reads what it shows, and goes back to the host's.
    fn make(host: &OwnedFd) -> Option<(OwnedFd, Watched)> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        super::init::loopback_up();
        let ns: Option<OwnedFd> = File::open("/proc/thread-self/ns/net").ok().map(Into::into);
        let mut files = Vec::new();
        let mut buf = Vec::new();
        if ns.is_some() {
            let base = Path::new("/proc/thread-self/net");
            open_all(base, base, &mut files);
        }
        back_to(host);
        let mut with_text = Vec::with_capacity(files.len());
        for (rel, mut f) in files {
            if read_masked(&rel, &mut f, &mut buf) {
                with_text.push((rel, f, buf.clone()));
            }
        }
        // Without its socket counts the namespace could not be checked.
        let counted = with_text
            .iter()
            .any(|(rel, _, _)| rel == Path::new("sockstat"));
        Some((ns?, with_text)).filter(|_| counted)
    }

    /// Puts the calling thread in the slot's namespace (to clone a sandbox into it).
    pub fn enter(&self) -> bool {
        nix::sched::setns(self.ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
    }

    /// Back to the host's namespace after [`SlotNet::enter`].
    pub fn leave(&self) {
        back_to(&self.host);
    }

    /// Whether the namespace shows exactly what it showed when it was new (call it when no
    /// process of a job is left in it).
    pub fn untouched(&mut self) -> bool {
        let buf = &mut self.buf;
        self.files
            .iter_mut()
            .all(|(rel, f, seen)| read_masked(rel, f, buf) && buf == seen)
    }

    /// Replaces the namespace with a new one (the old one goes once its last sandbox has
    /// exited). False when none can be made: the caller then stops using one.
    pub fn renew(&mut self) -> bool {
        match Self::make(&self.host) {
            Some((ns, files)) => {
                self.ns = ns;
                self.files = files;
                true
            }
            None => false,
        }
    }
}

/// Puts the calling thread back in the host's network namespace `host`. A server that
/// cannot return exits rather than make its own sockets (and `slirp4netns`) in the slot's
/// namespace (the runner reports the slot's jobs as errors).
fn back_to(host: &OwnedFd) {
    if nix::sched::setns(host.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        eprintln!("llm-sandbox: cannot return to the host's network namespace");
        std::process::exit(1);
    }
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
    if f.seek(SeekFrom::Start(0)).is_err() || f.read_to_end(buf).is_err() {
        return false;
    }
    if rel == Path::new("sockstat") {
        let text = String::from_utf8_lossy(buf).into_owned();
        *buf = crate::backend::clean::sockstat_of_namespace(&text).into_bytes();
    }
    true
}
