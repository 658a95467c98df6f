//! The seccomp profile of the run phase's containers: the native sandbox's filters as an
//! OCI/Docker profile (EPERM for the same deny list, ENOSYS for `clone3`, EPERM for `clone`
//! with a namespace flag, EAFNOSUPPORT for socket families outside the native allow-list).
//! The engines' own defaults differ (Podman's allows `unshare`, `setns` and namespace flags
//! of `clone`; Docker 20.10's allows `io_uring_setup`, `ptrace(PTRACE_TRACEME)` and
//! `AF_VSOCK`), so every container gets this one. Docker takes the profile's JSON in the
//! request; Podman's Docker-compatible API takes only a path on the engine's machine, so for
//! a local Podman the runner writes it to a file named by its content hash below its private
//! directory and passes that path.

use std::path::PathBuf;
use std::sync::OnceLock;

/// Namespace flags of `clone` that untrusted code never needs.
const CLONE_NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// The profile, as OCI/Docker seccomp JSON.
pub fn profile() -> String {
    let denied: Vec<&str> = crate::sandbox::seccomp::DENIED
        .iter()
        .map(|(n, _)| *n)
        .collect();
    let mut rules = vec![
        serde_json::json!({"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM}),
        serde_json::json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}),
        // A container has no user namespace of its own, so the per-user count of inotify
        // instances is the host's, shared by every container job (the native sandbox
        // limits it per sandbox instead): refused, as if the kernel had no inotify
        // (programs that watch files fall back to polling).
        serde_json::json!({"names": ["inotify_init", "inotify_init1"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}),
    ];
    // Sockets by family (crate::sandbox::seccomp::SOCKET_FAMILIES): every other value of
    // the family argument, one comparison a rule as libseccomp wants them.
    let allowed: Vec<u64> = crate::sandbox::seccomp::SOCKET_FAMILIES
        .iter()
        .map(|(_, f)| *f as u64)
        .collect();
    let top = allowed.iter().max().copied().unwrap_or(0);
    let refuse = |args: serde_json::Value| {
        serde_json::json!({
            "names": ["socket", "socketpair"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EAFNOSUPPORT,
            "args": args,
        })
    };
    for family in (0..top).filter(|f| !allowed.contains(f)) {
        rules.push(refuse(serde_json::json!([
            {"index": 0, "value": family, "op": "SCMP_CMP_EQ"}
        ])));
    }
    rules.push(refuse(serde_json::json!([
        {"index": 0, "value": top + 1, "op": "SCMP_CMP_GE"}
    ])));
    for protocol in crate::sandbox::seccomp::NETLINK_PROTOCOLS {
        rules.push(refuse(serde_json::json!([
            {"index": 0, "value": libc::AF_NETLINK, "op": "SCMP_CMP_EQ"},
            {"index": 2, "value": protocol, "op": "SCMP_CMP_NE"}
        ])));
    }
    for flag in CLONE_NS_FLAGS {
        rules.push(serde_json::json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}).to_string()
}

/// The profile's file for an engine on this machine (written once per process; the name
/// is the content's hash, so concurrent runners share it). None when it cannot be written.
pub fn local_profile_path() -> Option<PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        use sha2::Digest;
        let body = profile();
        let hash = format!("{:x}", sha2::Sha256::digest(body.as_bytes()));
        let dir = match crate::owner::runs_root() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot write the Podman seccomp profile: {e}");
                return None;
            }
        };
        let path = dir.join(format!("seccomp-podman-{}.json", &hash[..16]));
        if std::fs::read(&path).ok().as_deref() == Some(body.as_bytes()) {
            return Some(path);
        }
        let write = || -> std::io::Result<()> {
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
            std::io::Write::write_all(&mut tmp, body.as_bytes())?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        match write() {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!(
                    "cannot write the Podman seccomp profile {}: {e}",
                    path.display()
                );
                None
            }
        }
    })
    .clone()
}

#[cfg(test)]
mod tests {
    #[test]
    fn profile_denies_namespaces_and_the_native_list() {
        let p: serde_json::Value = serde_json::from_str(&super::profile()).unwrap();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ALLOW");
        let rules = p["syscalls"].as_array().unwrap();
        let names = rules[0]["names"].as_array().unwrap();
        for n in ["unshare", "setns", "mount", "ptrace", "bpf", "keyctl"] {
            assert!(names.iter().any(|x| x == n), "{n} not denied");
        }
        assert_eq!(rules[1]["names"][0], "clone3");
        assert_eq!(rules[1]["errnoRet"], libc::ENOSYS);
        let newuser = libc::CLONE_NEWUSER as u64;
        assert!(rules.iter().any(|r| r["names"][0] == "clone"
            && r["args"][0]["value"] == newuser
            && r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"));
    }
}
