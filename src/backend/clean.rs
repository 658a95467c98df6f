//! The proof that a warm container or pod is clean: after a job, nothing of it may reach
//! the next job that runs there. One rule for every backend that reuses sandboxes (Docker
//! and Podman containers, Kubernetes pods; native sandboxes are never reused):
//!
//! - **processes**: every process of the sandbox is killed but pid 1 (the keep-alive),
//!   the cleaner itself and root's (the agent, the engine's init: a job never runs as
//!   root). A process is found through `/proc`, which no process can leave; one whose
//!   `/proc` entry exists but cannot be read makes the sandbox not clean.
//! - **files**: `/sandbox`, `/tmp`, `/dev/shm` and `/dev/mqueue` are emptied, and their
//!   roots must be as they were when the sandbox was made: owner, group, mode, ACLs and
//!   extended attributes ([`Root`], snapshotted before any job ran).
//! - **IPC and sockets**: no System V IPC object and no TCP or UDP socket is left (a
//!   TIME_WAIT on the sandbox's loopback would make the next job's `bind` fail).
//!
//! Two collectors gather the [`Evidence`], and this module's [`verdict`] judges it: the
//! agent of a warm container (in Rust, inside it: it also repairs roots, which needs
//! syscalls no shell tool of an arbitrary image offers), and [`SCRIPT`] (POSIX sh and
//! coreutils, for pods and containers without an agent; `getfattr` when the image has it).
//! A sandbox that is not proven clean is removed, never reused.

use serde::{Deserialize, Serialize};

/// The writable places of a sandbox, emptied after every job.
pub const WRITABLE: &[&str] = &["/sandbox", "/tmp", "/dev/shm", "/dev/mqueue"];

/// A writable place's root as the sandbox was made (or as a job left it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Whether it has a POSIX ACL; None: not known (the collector could not tell).
    pub acl: Option<bool>,
    /// Its extended attributes (name, hex value), sorted; None: not known (no `getfattr`).
    pub xattrs: Option<Vec<(String, String)>>,
    /// Its access and modification times (seconds and nanoseconds of each): a job that
    /// changes a file in it at a chosen moment (or, where access times move on reads, reads
    /// it) would leave the next job that moment. The agent puts them back; None: not known
    /// (the shell collector leaves them: README, *Security*).
    pub times: Option<[i64; 4]>,
}

/// What a collector found after cleaning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Processes still alive after the last round of killing.
    pub processes_left: u32,
    /// `/proc` entries of live processes that could not be read.
    pub unreadable: u32,
    /// Entries left in a writable place (the first few).
    pub left: Vec<String>,
    /// The writable places' roots.
    pub roots: Vec<Root>,
    /// System V IPC objects left.
    pub ipc_objects: u32,
    /// TCP and UDP sockets left in the sandbox's network namespace.
    pub sockets: u32,
    /// The first `/proc/net` file of the sandbox's network namespace that shows something
    /// else than when the sandbox was made (`sandbox::netview`; the agent's proof only).
    #[serde(default)]
    pub network_changed: Option<String>,
}

/// Whether `e` proves the sandbox clean, against its roots as made (`fresh`); `Err` says
/// what is not.
pub fn verdict(e: &Evidence, fresh: &[Root]) -> Result<(), String> {
    if e.processes_left > 0 {
        return Err(format!(
            "{} process(es) survived the kill",
            e.processes_left
        ));
    }
    if e.unreadable > 0 {
        return Err(format!(
            "{} process(es) whose /proc entry could not be read",
            e.unreadable
        ));
    }
    if let Some(first) = e.left.first() {
        return Err(format!("left behind: {first}"));
    }
    for f in fresh {
        let Some(now) = e.roots.iter().find(|r| r.path == f.path) else {
            return Err(format!("{} was not examined", f.path));
        };
        if (now.uid, now.gid, now.mode) != (f.uid, f.gid, f.mode) {
            return Err(format!(
                "{} is {}:{} {:04o}, was {}:{} {:04o}",
                f.path, now.uid, now.gid, now.mode, f.uid, f.gid, f.mode
            ));
        }
        if let (Some(a), Some(b)) = (now.acl, f.acl) {
            if a != b {
                return Err(format!(
                    "{} has {} ACL",
                    f.path,
                    if a { "an" } else { "no" }
                ));
            }
        }
        if let (Some(a), Some(b)) = (&now.xattrs, &f.xattrs) {
            if a != b {
                return Err(format!("{}'s extended attributes changed", f.path));
            }
        }
        if let (Some(a), Some(b)) = (now.times, f.times) {
            if a != b {
                return Err(format!("{}'s access or modification time changed", f.path));
            }
        }
    }
    if e.ipc_objects > 0 {
        return Err(format!("{} System V IPC object(s) left", e.ipc_objects));
    }
    if e.sockets > 0 {
        return Err(format!("{} socket(s) left", e.sockets));
    }
    if let Some(f) = &e.network_changed {
        return Err(format!(
            "the network namespace changed (/proc/net/{f}: a packet, a route looked up, a flow label...)"
        ));
    }
    Ok(())
}

/// The shell collector (pods, and containers without an agent), as `sh -c SCRIPT sh MODE
/// PACK`: MODE `snapshot` prints the roots only (right after the sandbox is made), `clean`
/// kills, empties and prints the evidence, `end` only kills (sandboxes used once); PACK 1
/// writes a tar of `/sandbox` to stdout before anything is emptied. The cgroup's counters
/// (`oom_kill N`, `max N`) and the evidence go to stderr, one fact a line ([`parse`]).
/// Only shell built-ins run while a process of the job may still exist.
pub const SCRIPT: &str = r##"W="/sandbox /tmp /dev/shm /dev/mqueue"
roots() {
  for d in $W; do
    [ -d "$d" ] || continue
    s=$(stat -c '%u %g %a' "$d" 2>/dev/null) || continue
    set -- $(ls -ld "$d" 2>/dev/null)
    case "$1" in *+) acl=1 ;; ?*) acl=0 ;; *) acl=- ;; esac
    echo "root $d $s $acl" >&2
    if command -v getfattr >/dev/null 2>&1; then
      echo "xattrs $d" >&2
      getfattr -h -d -m - -e hex "$d" 2>/dev/null | while IFS= read -r l; do
        case "$l" in "#"*|"") ;; *) echo "xattr $d $l" >&2 ;; esac
      done
    fi
  done
}
if [ "$1" = snapshot ]; then roots; exit 0; fi
# The entries of /proc tables (their lines but the header) in all of "$@".
entries() {
  c=0
  for t in "$@"; do
    [ -r "$t" ] || continue
    k=0; while read -r line; do k=$((k+1)); done < "$t"
    [ $k -gt 1 ] && c=$((c+k-1))
  done
  echo $c
}
# The TCP, UDP and raw sockets of this network namespace, and TCP's in TIME_WAIT, as
# /proc/net/sockstat{,6} count them (per namespace, at a constant cost; sockstat_sockets
# in backend/clean.rs is the same count). Unreadable: not clean.
socks() {
  [ -r /proc/net/sockstat ] || { echo 1; return; }
  c=0
  for f in /proc/net/sockstat /proc/net/sockstat6; do
    [ -r "$f" ] || continue
    while read -r proto rest; do
      case "$proto" in TCP:|UDP:|UDPLITE:|RAW:|TCP6:|UDP6:|UDPLITE6:|RAW6:) ;; *) continue ;; esac
      set -- $rest
      while [ $# -ge 2 ]; do
        case "$1" in inuse|tw) c=$((c+$2)) ;; esac
        shift 2
      done
    done < "$f"
  done
  echo $c
}
# Every process but pid 1, this shell and root's; prints how many are left.
kill_round() {
  n=0; u=0
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    if [ "$p" = 1 ] || [ "$p" = $$ ]; then continue; fi
    ids=""; st=""
    while read -r k a b c e; do
      case "$k" in Uid:) ids="$a $b $c $e" ;; State:) st=$a ;; esac
    done < "$d/status" 2>/dev/null
    if [ -z "$ids" ]; then [ -d "$d" ] && u=$((u+1)); continue; fi
    [ "$ids" = "0 0 0 0" ] && continue
    [ "$st" = Z ] && continue
    kill -9 "$p" 2>/dev/null; n=$((n+1))
  done
}
i=0
while :; do
  kill_round
  [ $n = 0 ] && break
  i=$((i+1)); [ $i -ge 100 ] && break
done
for f in /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events /sys/fs/cgroup/pids/pids.events /sys/fs/cgroup/pids.events; do
  [ -r "$f" ] && while read -r k v; do echo "$k $v" >&2; done < "$f"
done
for f in /sys/fs/cgroup/memory.peak /sys/fs/cgroup/memory/memory.max_usage_in_bytes; do
  [ -r "$f" ] && read -r v < "$f" && echo "memory-peak $v" >&2 && break
done
if [ "$2" = 1 ]; then tar -c -C /sandbox . || exit 3; fi
[ "$1" = clean ] || exit 0
echo "processes-left $n" >&2
echo "unreadable $u" >&2
find $W -mindepth 1 -delete 2>/dev/null
for d in $W; do
  for f in "$d"/* "$d"/.[!.]* "$d"/..?*; do
    if [ -e "$f" ] || [ -L "$f" ]; then echo "left $f" >&2; break; fi
  done
done
roots
IPC="/proc/sysvipc/shm /proc/sysvipc/msg /proc/sysvipc/sem"
ipc=$(entries $IPC)
if [ "$ipc" -gt 0 ] && ipcrm -a 2>/dev/null; then ipc=$(entries $IPC); fi
echo "ipc $ipc" >&2
echo "sockets $(socks)" >&2
echo "examined" >&2
exit 0"##;

/// `/proc/net/sockstat` as a proof that a namespace is as it was compares it: blanked, the
/// figures that count the whole machine, not the namespace it is read in (TCP's orphans and
/// allocated sockets, each protocol's memory), and `sockets: used`, which counts a socket
/// until the kernel frees it, an RCU grace period after its close for netlink sockets (those
/// the engine used to set up a new container's loopback were still counted when its agent
/// started, and gone after its first job). The sockets that can outlive their processes
/// are counted per kind: TCP, UDP and raw on their lines here, unix sockets and netlink
/// sockets in `/proc/net/unix` and `/proc/net/netlink`.
pub fn sockstat_of_namespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut blank = false;
        for (i, word) in line.split(' ').enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(if blank { "-" } else { word });
            blank = matches!(word, "orphan" | "alloc" | "mem" | "used");
        }
        out.push('\n');
    }
    out
}

/// The sockets `/proc/net/sockstat` and `sockstat6` (their text, one after the other) count
/// in their network namespace: TCP, UDP, UDP-Lite and raw ones in use, and TCP's in
/// TIME_WAIT (the shell proof's `socks` counts the same).
pub fn sockstat_sockets(text: &str) -> u32 {
    let mut n = 0u32;
    for line in text.lines() {
        let Some((proto, rest)) = line.split_once(':') else {
            continue;
        };
        if !matches!(
            proto,
            "TCP" | "UDP" | "UDPLITE" | "RAW" | "TCP6" | "UDP6" | "UDPLITE6" | "RAW6"
        ) {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for pair in fields.chunks(2) {
            if let [key, value] = pair {
                if matches!(*key, "inuse" | "tw") {
                    // A count that does not parse is not a clean namespace.
                    n = n.saturating_add(value.parse().unwrap_or(1));
                }
            }
        }
    }
    n
}

/// A sandbox cgroup's counters as last read (after the previous job): what grew since
/// is the job's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub oom_kills: u64,
    pub pids_max: u64,
    /// The memory peak (since the sandbox was made); None before the first reading.
    pub memory_peak: Option<u64>,
}

impl Counters {
    /// The job's peak memory, from the sandbox's peak now: the peak, when the job raised
    /// it (always the first job of a sandbox: nothing ran in it before); unknown when it
    /// did not (an earlier job's peak was higher).
    pub fn job_peak(&self, now: Option<u64>) -> Option<u64> {
        let now = now?;
        self.memory_peak
            .is_none_or(|before| now > before)
            .then_some(now)
    }
}

/// The command line of [`SCRIPT`] in `mode` (`snapshot`, `clean`, `end`), packing the
/// workdir to stdout with `pack`.
pub fn script_argv(mode: &str, pack: bool) -> Vec<String> {
    [
        "/bin/sh",
        "-c",
        SCRIPT,
        "sh",
        mode,
        if pack { "1" } else { "0" },
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Whether a sandbox cleaned by [`SCRIPT`] is proven clean against its roots as made
/// (`fresh`; none taken: never); why not goes to the debug log.
pub fn proven(out: &ScriptOutput, fresh: Option<&[Root]>, what: &str) -> bool {
    match (&out.evidence, fresh) {
        (Some(e), Some(fresh)) => verdict(e, fresh)
            .map_err(|why| tracing::debug!("{what} not clean: {why}"))
            .is_ok(),
        _ => false,
    }
}

/// What [`SCRIPT`] said on stderr.
#[derive(Debug, Default)]
pub struct ScriptOutput {
    /// The cgroup's OOM kills and pids-limit hits, when it could read them.
    pub oom_kills: Option<u64>,
    pub pids_max: Option<u64>,
    /// The cgroup's memory peak (since the sandbox was made), when it could read it.
    pub memory_peak: Option<u64>,
    /// The evidence, when it cleaned (`clean` mode to its end).
    pub evidence: Option<Evidence>,
    /// The roots it printed (every mode).
    pub roots: Vec<Root>,
}

/// Parses [`SCRIPT`]'s stderr.
pub fn parse(stderr: &str) -> ScriptOutput {
    let mut out = ScriptOutput::default();
    let mut e = Evidence::default();
    let mut examined = false;
    for line in stderr.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        let num = || rest.trim().parse::<u64>().ok();
        match key {
            "oom_kill" => out.oom_kills = num(),
            "max" => out.pids_max = num(),
            "memory-peak" => out.memory_peak = num(),
            "processes-left" => e.processes_left = num().unwrap_or(1) as u32,
            "unreadable" => e.unreadable = num().unwrap_or(1) as u32,
            "left" => e.left.push(rest.to_string()),
            "ipc" => e.ipc_objects = num().unwrap_or(1) as u32,
            "sockets" => e.sockets = num().unwrap_or(1) as u32,
            "examined" => examined = true,
            "root" => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if let [path, uid, gid, mode, acl] = f[..] {
                    out.roots.push(Root {
                        path: path.to_string(),
                        uid: uid.parse().unwrap_or(u32::MAX),
                        gid: gid.parse().unwrap_or(u32::MAX),
                        mode: u32::from_str_radix(mode, 8).unwrap_or(u32::MAX),
                        acl: match acl {
                            "1" => Some(true),
                            "0" => Some(false),
                            _ => None,
                        },
                        xattrs: None,
                        times: None,
                    });
                }
            }
            "xattrs" => {
                if let Some(r) = out.roots.iter_mut().find(|r| r.path == rest) {
                    r.xattrs = Some(Vec::new());
                }
            }
            "xattr" => {
                let (path, attr) = rest.split_once(' ').unwrap_or((rest, ""));
                let (name, value) = attr.split_once('=').unwrap_or((attr, ""));
                if let Some(list) = out
                    .roots
                    .iter_mut()
                    .find(|r| r.path == path)
                    .and_then(|r| r.xattrs.as_mut())
                {
                    list.push((name.to_string(), value.to_string()));
                    list.sort();
                }
            }
            _ => {}
        }
    }
    if examined {
        e.roots = out.roots.clone();
        out.evidence = Some(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_of_the_namespace_leaves_out_machine_wide_and_late_freed_figures() {
        let a = "sockets: used 3\nTCP: inuse 1 orphan 0 tw 2 alloc 1 mem 0\nUDP: inuse 0 mem 4\nFRAG: inuse 0 memory 0\n";
        let b = "sockets: used 3\nTCP: inuse 1 orphan 7 tw 2 alloc 90 mem 12\nUDP: inuse 0 mem 9\nFRAG: inuse 0 memory 0\n";
        assert_eq!(sockstat_of_namespace(a), sockstat_of_namespace(b));
        assert_eq!(
            sockstat_of_namespace(a),
            "sockets: used -\nTCP: inuse 1 orphan - tw 2 alloc - mem -\nUDP: inuse 0 mem -\nFRAG: inuse 0 memory 0\n"
        );
        // A socket closed but not yet freed (netlink: after an RCU grace period) is not one
        // the namespace holds.
        assert_eq!(
            sockstat_of_namespace(a),
            sockstat_of_namespace(&a.replace("used 3", "used 5"))
        );
        // What the namespace itself holds still counts.
        for (from, to) in [
            ("inuse 1", "inuse 2"),
            ("tw 2", "tw 3"),
            ("memory 0", "memory 8"),
        ] {
            assert_ne!(
                sockstat_of_namespace(a),
                sockstat_of_namespace(&a.replace(from, to)),
                "{from}"
            );
        }
    }

    #[test]
    fn sockets_are_counted_from_sockstat() {
        let clean = "sockets: used 3\nTCP: inuse 0 orphan 0 tw 0 alloc 1 mem 0\nUDP: inuse 0 mem 0\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\nTCP6: inuse 0\nUDP6: inuse 0\nUDPLITE6: inuse 0\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n";
        assert_eq!(sockstat_sockets(clean), 0);
        // A listener, one in TIME_WAIT, a UDP and a raw v6 socket; allocated and fragment
        // figures are not sockets of the namespace.
        let left = clean
            .replace(
                "TCP: inuse 0 orphan 0 tw 0 alloc 1",
                "TCP: inuse 1 orphan 0 tw 1 alloc 9",
            )
            .replace("UDP: inuse 0", "UDP: inuse 1")
            .replace("RAW6: inuse 0", "RAW6: inuse 1")
            .replace("FRAG: inuse 0", "FRAG: inuse 7");
        assert_eq!(sockstat_sockets(&left), 4);
        assert_eq!(
            sockstat_sockets("TCP: inuse x"),
            1,
            "unparsable is not clean"
        );
    }

    fn root(path: &str, mode: u32) -> Root {
        Root {
            path: path.into(),
            uid: 0,
            gid: 0,
            mode,
            acl: Some(false),
            xattrs: Some(vec![]),
            times: Some([1, 2, 3, 4]),
        }
    }

    #[test]
    fn a_clean_sandbox_passes_and_every_trace_fails() {
        let fresh = vec![root("/sandbox", 0o755), root("/tmp", 0o1777)];
        let clean = Evidence {
            roots: fresh.clone(),
            ..Default::default()
        };
        assert_eq!(verdict(&clean, &fresh), Ok(()));
        let mut cases: Vec<(Evidence, &str)> = Vec::new();
        let mut e = clean.clone();
        e.processes_left = 1;
        cases.push((e, "survived"));
        let mut e = clean.clone();
        e.unreadable = 2;
        cases.push((e, "could not be read"));
        let mut e = clean.clone();
        e.left = vec!["/tmp/x".into()];
        cases.push((e, "/tmp/x"));
        let mut e = clean.clone();
        e.roots[0].mode = 0o777;
        cases.push((e, "0777"));
        let mut e = clean.clone();
        e.roots[0].acl = Some(true);
        cases.push((e, "ACL"));
        let mut e = clean.clone();
        e.roots[1].xattrs = Some(vec![("user.x".into(), "0x31".into())]);
        cases.push((e, "extended attributes"));
        let mut e = clean.clone();
        e.roots[1].times = Some([1, 2, 3, 5]);
        cases.push((e, "modification time"));
        let mut e = clean.clone();
        e.roots.pop();
        cases.push((e, "not examined"));
        let mut e = clean.clone();
        e.ipc_objects = 1;
        cases.push((e, "IPC"));
        let mut e = clean.clone();
        e.sockets = 1;
        cases.push((e, "socket"));
        for (e, why) in cases {
            let got = verdict(&e, &fresh).unwrap_err();
            assert!(got.contains(why), "{got} does not say {why}");
        }
        // What a collector could not tell is not held against it.
        let mut e = clean.clone();
        e.roots[1].xattrs = None;
        e.roots[1].acl = None;
        e.roots[1].times = None;
        assert_eq!(verdict(&e, &fresh), Ok(()));
    }

    #[test]
    fn the_scripts_lines_make_the_evidence() {
        let out = parse(
            "oom_kill 3\nmax 1\nprocesses-left 0\nunreadable 0\nleft /tmp/.x\nroot /sandbox 1000 1000 755 1\nxattrs /sandbox\nxattr /sandbox user.k=0x76\nroot /tmp 0 0 1777 0\nipc 0\nsockets 2\nexamined\n",
        );
        assert_eq!((out.oom_kills, out.pids_max), (Some(3), Some(1)));
        let e = out.evidence.unwrap();
        assert_eq!(e.left, ["/tmp/.x"]);
        assert_eq!(e.sockets, 2);
        assert_eq!(e.roots[0].mode, 0o755);
        assert_eq!(e.roots[0].acl, Some(true));
        assert_eq!(
            e.roots[0].xattrs,
            Some(vec![("user.k".to_string(), "0x76".to_string())])
        );
        assert_eq!(e.roots[1].xattrs, None);
        assert!(
            parse("oom_kill 1\n").evidence.is_none(),
            "no `examined`: no proof"
        );
    }
}
