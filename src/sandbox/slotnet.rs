//! The network namespace of a sandbox server's slot (as root): made once, and every sandbox
//! of the slot without `network` runs in it instead of in a namespace of its own. Making and
//! freeing a network namespace costs the kernel about 0.8 ms of CPU (the per-namespace state
//! of every protocol, then its teardown and an RCU grace period in kernel workers): a tenth
//! of a HumanEval sample's whole cost.
//!
//! Only one job at a time ever runs in it (a server serves one sandbox at a time; the slots'
//! namespaces are distinct), and the next job finds it as it was made: after every job the
//! server reads everything the namespace shows in `/proc/net` ([`SlotNet::untouched`],
//! [`NetView`]) and compares it with what it showed when it was new. A job that changed
//! any of it gives the slot a new namespace before its next job. No job can change its
//! configuration: the namespace belongs to the host's user namespace, so no job (nor its
//! sandbox's init) has any capability in it, and `/proc/sys` is read-only to the steps
//! (Landlock). What a job can change that no file
//! shows (the IPv4 route cache a UDP `connect` fills: only the whole machine's statistics
//! count it) the next job could tell only by timing (README, "Security").
//!
//! The server itself stays in the host's namespace (`slirp4netns` for jobs with network
//! starts from there): it enters the slot's only to clone a sandbox ([`SlotNet::enter`]).

use super::netview::NetView;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

/// The network namespace a slot's sandboxes share, and what it showed when it was new.
pub struct SlotNet {
    /// The host's network namespace (the server's own).
    host: OwnedFd,
    ns: OwnedFd,
    /// What its `/proc/net` showed when it was new.
    view: NetView,
}

impl SlotNet {
    /// A new namespace with its loopback up, or None when this process may not make one
    /// (not root): its sandboxes then get a namespace each.
    pub fn new() -> Option<SlotNet> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let host = File::open("/proc/thread-self/ns/net").ok()?.into();
        let (ns, view) = Self::make(&host)?;
        Some(SlotNet { host, ns, view })
    }

    /// Makes a namespace, reads what it shows, and goes back to the host's.
    fn make(host: &OwnedFd) -> Option<(OwnedFd, NetView)> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        super::init::loopback_up();
        let ns: Option<OwnedFd> = File::open("/proc/thread-self/ns/net").ok().map(Into::into);
        let files = if ns.is_some() {
            NetView::open()
        } else {
            Vec::new()
        };
        back_to(host);
        Some((ns?, NetView::of(files)?))
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
        self.view.changed().is_none()
    }

    /// Replaces the namespace with a new one (the old one goes once its last sandbox has
    /// exited). False when none can be made: the caller then stops using one.
    pub fn renew(&mut self) -> bool {
        match Self::make(&self.host) {
            Some((ns, view)) => {
                self.ns = ns;
                self.view = view;
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
