//! The seccomp profile of Podman containers. Podman's default profile allows `unshare`,
//! `setns` and namespace flags of `clone` (for nested containers); Docker's does not. Its
//! Docker-compatible API takes a profile only as a path on the engine's machine, so for a
//! local engine the runner writes this profile (the native sandbox's deny list: EPERM for
//! the same syscalls, ENOSYS for `clone3`, EPERM for `clone` with a namespace flag) to a
//! file named by its content hash and passes that path.

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
    ];
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
        let dir = if nix::unistd::geteuid().is_root() {
            PathBuf::from("/run/llm-sandbox")
        } else {
            std::env::var_os("XDG_RUNTIME_DIR")
                .filter(|d| !d.is_empty())
                .map(|d| PathBuf::from(d).join("llm-sandbox"))
                .unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("llm-sandbox-{}", nix::unistd::getuid()))
                })
        };
        let path = dir.join(format!("seccomp-podman-{}.json", &hash[..16]));
        if std::fs::read(&path).ok().as_deref() == Some(body.as_bytes()) {
            return Some(path);
        }
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
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
