//! The sandbox pod: our defaults merged with the user's `pod_manifest`.
//!
//! Merging rules (README, *Kubernetes backend*):
//! - kept from the manifest: labels and annotations (ours are added and win on our keys),
//!   the pod's scheduling and runtime settings (`nodeSelector`, `tolerations`, `affinity`,
//!   `runtimeClassName`, `priorityClassName`, `imagePullSecrets`, …), its other volumes and
//!   the sandbox container's `imagePullPolicy`, `resources.requests` (capped at the job's
//!   limits) and extra `volumeMounts`;
//! - always ours: the pod and container security contexts (non-root uid 60999, no privilege
//!   escalation, every capability dropped, read-only root filesystem, seccomp
//!   `RuntimeDefault`), `automountServiceAccountToken: false`, `enableServiceLinks: false`,
//!   no host namespaces, `restartPolicy: Never`, the container's command, the
//!   memory-backed `emptyDir` volumes of `/sandbox` and `/tmp` (size `limits.disk`, like
//!   the container backends' tmpfs), `resources.limits` (from
//!   `limits`), the name and namespace;
//! - refused: more than one container, init or ephemeral containers, `hostPath` volumes.

use crate::backend::Error;
use crate::plan::job::ResolvedLimits;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The sandbox container's name.
pub const CONTAINER: &str = "sandbox";
/// The uid and gid everything in the pod runs as.
pub const UID: i64 = crate::backend::tarball::SANDBOX_UID as i64;
/// Label: the pod is ours.
pub const LABEL: &str = "llm-sandbox";
/// Label: the runner that owns it (`ls-<pid>-<starttime>`).
pub const LABEL_OWNER: &str = "llm-sandbox.owner";
/// The [`crate::backend::Scope`] (a run, a session) whose pod it is: what its end deletes.
pub const LABEL_SCOPE: &str = "llm-sandbox.scope";
/// Label: the host of that runner.
pub const LABEL_HOST: &str = "llm-sandbox.host";
/// Label: what the pod is for (`job`, `warm`, `session`).
pub const LABEL_KIND: &str = "llm-sandbox.kind";
/// Label: `off` when the job has no network (a deny-all NetworkPolicy selects it).
pub const LABEL_NETWORK: &str = "llm-sandbox.network";
/// Annotation: the job's pids limit (the fake API server enforces it; clusters use the
/// kubelet's `podPidsLimit`).
pub const ANNOTATION_PIDS: &str = "llm-sandbox.pids";
/// Annotation: the job's open-files limit.
pub const ANNOTATION_OPEN_FILES: &str = "llm-sandbox.open-files";
/// Annotation: the job's name.
pub const ANNOTATION_JOB: &str = "llm-sandbox.job";

/// The keep-alive of the sandbox container (pid 1): blocks reading its stdin (kept open,
/// never written) without any child process, so that a warm pod's cleanup can prove that
/// no process but it is left; exits at once on SIGTERM (deletion).
pub const KEEPALIVE: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while read -r _; do :; done; exec sleep 2147483647",
];

/// What a sandbox pod is made of.
#[derive(Debug, Clone)]
pub struct PodParams<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub limits: &'a ResolvedLimits,
    pub network: bool,
    /// `job`, `warm` or `session`.
    pub kind: &'a str,
    pub job_name: Option<&'a str>,
    /// `activeDeadlineSeconds`: the cluster stops the pod after this even when the runner
    /// is gone.
    pub deadline_secs: Option<u64>,
    /// The owner labels (`llm-sandbox.owner`, `llm-sandbox.host`).
    pub owner: &'a BTreeMap<String, String>,
    pub manifest: Option<&'a Value>,
}

/// A Kubernetes quantity of bytes: `512Mi` when it is a whole number of MiB.
pub fn bytes_quantity(b: u64) -> String {
    if b > 0 && b.is_multiple_of(1 << 30) {
        format!("{}Gi", b >> 30)
    } else if b > 0 && b.is_multiple_of(1 << 20) {
        format!("{}Mi", b >> 20)
    } else {
        b.to_string()
    }
}

/// A Kubernetes CPU quantity: `1`, `1500m`.
pub fn cpu_quantity(cpus: f64) -> String {
    let m = (cpus * 1000.0).round().max(1.0) as u64;
    if m.is_multiple_of(1000) {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}

/// Parses a Kubernetes quantity (`128Mi`, `1G`, `500m`, `2`) into a number.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mul = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1048576.0,
        "Gi" => 1073741824.0,
        "Ti" => 1099511627776.0,
        _ => return None,
    };
    Some(n * mul)
}

/// A label value Kubernetes accepts (≤ 63 characters of `[A-Za-z0-9._-]`, alphanumeric
/// at both ends).
pub fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let v = v.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if v.is_empty() {
        "x".into()
    } else {
        v.to_string()
    }
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// A job's `pod_manifest` that cannot be used: an error of its prepare phase.
macro_rules! invalid {
    ($($t:tt)*) => {
        Error::Prepare { message: format!($($t)*), log: None }
    };
}

/// The pod manifest (JSON) of a sandbox; `Err` names what in `pod_manifest` is refused.
pub fn build(p: &PodParams) -> Result<Value, Error> {
    let user = match p.manifest {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(invalid!(
                "pod_manifest: expected a Pod manifest (a mapping)"
            ))
        }
    };
    if let Some(kind) = user.get("kind") {
        if kind != "Pod" {
            return Err(invalid!(
                "pod_manifest: `kind` is {kind}, expected \"Pod\" (a Pod manifest, not a Deployment or Job)"
            ));
        }
    }
    if let Some(v) = user.get("apiVersion") {
        if v != "v1" {
            return Err(invalid!(
                "pod_manifest: `apiVersion` is {v}, expected \"v1\""
            ));
        }
    }
    let umeta = obj(user.get("metadata").unwrap_or(&Value::Null));
    let uspec = obj(user.get("spec").unwrap_or(&Value::Null));
    for key in ["initContainers", "ephemeralContainers"] {
        if uspec
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return Err(invalid!(
                "pod_manifest: `spec.{key}` is not supported: the sandbox pod has exactly one container"
            ));
        }
    }
    let ucontainers = uspec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ucontainers.len() > 1 {
        return Err(invalid!(
            "pod_manifest: `spec.containers` has {} containers; the sandbox pod has exactly one (its settings are merged into the sandbox container)",
            ucontainers.len()
        ));
    }
    let uc = obj(ucontainers.first().unwrap_or(&Value::Null));

    // Metadata: the user's labels and annotations, ours on top.
    let mut labels = obj(umeta.get("labels").unwrap_or(&Value::Null));
    labels.insert(LABEL.into(), json!("1"));
    for (k, v) in p.owner {
        labels.insert(k.clone(), json!(label_value(v)));
    }
    labels.insert(LABEL_KIND.into(), json!(p.kind));
    labels.insert(
        LABEL_NETWORK.into(),
        json!(if p.network { "on" } else { "off" }),
    );
    let mut annotations = obj(umeta.get("annotations").unwrap_or(&Value::Null));
    annotations.insert(ANNOTATION_PIDS.into(), json!(p.limits.pids.to_string()));
    annotations.insert(
        ANNOTATION_OPEN_FILES.into(),
        json!(p.limits.open_files.to_string()),
    );
    if let Some(j) = p.job_name {
        annotations.insert(ANNOTATION_JOB.into(), json!(j));
    }
    let mut meta = Map::new();
    meta.insert("name".into(), json!(p.name));
    meta.insert("labels".into(), Value::Object(labels));
    meta.insert("annotations".into(), Value::Object(annotations));

    // Volumes: the user's (no hostPath), then ours for /sandbox and /tmp.
    let disk = bytes_quantity(p.limits.disk);
    let mut volumes: Vec<Value> = Vec::new();
    for v in uspec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        if v.get("hostPath").is_some() {
            return Err(invalid!(
                "pod_manifest: volume `{name}` is a hostPath volume; sandbox pods may not mount host directories"
            ));
        }
        if name == "sandbox" || name == "tmp" {
            continue;
        }
        volumes.push(v.clone());
    }
    // Memory-backed like the container backends' tmpfs: a write past the size fails
    // (ENOSPC) instead of getting the pod evicted.
    volumes.push(json!({"name": "sandbox", "emptyDir": {"medium": "Memory", "sizeLimit": disk}}));
    volumes.push(json!({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": disk}}));

    let mut mounts: Vec<Value> = uc
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| {
            let path = m.get("mountPath").and_then(Value::as_str).unwrap_or("");
            let name = m.get("name").and_then(Value::as_str).unwrap_or("");
            !matches!(path.trim_end_matches('/'), "/sandbox" | "/tmp")
                && name != "sandbox"
                && name != "tmp"
        })
        .cloned()
        .collect();
    mounts.push(json!({"name": "sandbox", "mountPath": "/sandbox"}));
    mounts.push(json!({"name": "tmp", "mountPath": "/tmp"}));

    // Resources: limits from the job; requests the user's, capped at the limits.
    let mem = bytes_quantity(p.limits.memory);
    let cpu = cpu_quantity(p.limits.cpus);
    let eph = bytes_quantity(p.limits.disk.saturating_mul(2).saturating_add(64 << 20));
    let ureq = obj(uc
        .get("resources")
        .and_then(|r| r.get("requests"))
        .unwrap_or(&Value::Null));
    let capped = |key: &str, limit: &str| -> Value {
        let want = ureq.get(key).and_then(|v| match v {
            Value::String(s) => parse_quantity(s).map(|n| (n, v.clone())),
            Value::Number(n) => n.as_f64().map(|x| (x, v.clone())),
            _ => None,
        });
        match (want, parse_quantity(limit)) {
            (Some((w, v)), Some(l)) if w <= l => v,
            _ => json!(limit),
        }
    };
    let mut requests = ureq.clone();
    requests.insert("cpu".into(), capped("cpu", &cpu));
    requests.insert("memory".into(), capped("memory", &mem));
    requests.insert(
        "ephemeral-storage".into(),
        capped("ephemeral-storage", &eph),
    );
    let resources = json!({
        "limits": {"cpu": cpu, "memory": mem, "ephemeral-storage": eph},
        "requests": requests,
    });

    // The container: the user's other settings, ours where it matters.
    let mut c = uc.clone();
    for k in [
        "command",
        "args",
        "stdinOnce",
        "tty",
        "lifecycle",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "ports",
        "volumeDevices",
    ] {
        c.remove(k);
    }
    c.insert("name".into(), json!(CONTAINER));
    c.insert("image".into(), json!(p.image));
    if !c.contains_key("imagePullPolicy") {
        c.insert("imagePullPolicy".into(), json!("IfNotPresent"));
    }
    c.insert("command".into(), json!(KEEPALIVE));
    c.insert("stdin".into(), json!(true));
    c.insert("workingDir".into(), json!("/sandbox"));
    c.insert("resources".into(), resources);
    c.insert("volumeMounts".into(), Value::Array(mounts));
    c.insert(
        "securityContext".into(),
        json!({
            "runAsNonRoot": true,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }),
    );

    // The pod: the user's scheduling settings, ours for everything that matters.
    let mut spec = uspec.clone();
    for k in [
        "containers",
        "initContainers",
        "ephemeralContainers",
        "volumes",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "hostUsers",
        "shareProcessNamespace",
        "serviceAccountName",
        "serviceAccount",
        "nodeName",
    ] {
        spec.remove(k);
    }
    let mut psc = obj(uspec.get("securityContext").unwrap_or(&Value::Null));
    psc.remove("sysctls");
    psc.remove("windowsOptions");
    psc.insert("runAsNonRoot".into(), json!(true));
    psc.insert("runAsUser".into(), json!(UID));
    psc.insert("runAsGroup".into(), json!(UID));
    psc.insert("fsGroup".into(), json!(UID));
    psc.insert("seccompProfile".into(), json!({"type": "RuntimeDefault"}));
    spec.insert("securityContext".into(), Value::Object(psc));
    spec.insert("containers".into(), json!([Value::Object(c)]));
    spec.insert("volumes".into(), Value::Array(volumes));
    spec.insert("restartPolicy".into(), json!("Never"));
    spec.insert("automountServiceAccountToken".into(), json!(false));
    spec.insert("enableServiceLinks".into(), json!(false));
    let grace = uspec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .min(1);
    spec.insert("terminationGracePeriodSeconds".into(), json!(grace));
    if let Some(d) = p.deadline_secs {
        let d = uspec
            .get("activeDeadlineSeconds")
            .and_then(Value::as_u64)
            .map_or(d, |u| u.min(d))
            .max(1);
        spec.insert("activeDeadlineSeconds".into(), json!(d));
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": Value::Object(meta),
        "spec": Value::Object(spec),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_OWNER.to_string(), "ls-42-1234".to_string()),
            (LABEL_HOST.to_string(), "build host!".to_string()),
        ])
    }

    fn params<'a>(
        limits: &'a ResolvedLimits,
        owner: &'a BTreeMap<String, String>,
        manifest: Option<&'a Value>,
    ) -> PodParams<'a> {
        PodParams {
            name: "ls-42-1234-7",
            image: "llm-sandbox/python:latest",
            limits,
            network: false,
            kind: "job",
            job_name: Some("hello"),
            deadline_secs: Some(95),
            owner,
            manifest,
        }
    }

    #[test]
    fn default_pod() {
        let (l, o) = (ResolvedLimits::default(), owner());
        let pod = build(&params(&l, &o, None)).unwrap();
        insta::assert_json_snapshot!("kubernetes_default_pod", pod);
        // It is a valid Pod for the typed API.
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
        let c = &typed.spec.unwrap().containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    }

    #[test]
    fn user_manifest_is_merged_and_our_security_wins() {
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "ignored", "labels": {"team": "ml", "llm-sandbox": "0"},
                          "annotations": {"note": "kept"}},
            "spec": {
                "nodeSelector": {"pool": "sandboxes"},
                "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}],
                "runtimeClassName": "gvisor",
                "hostNetwork": true,
                "hostPID": true,
                "serviceAccountName": "admin",
                "automountServiceAccountToken": true,
                "restartPolicy": "Always",
                "activeDeadlineSeconds": 30,
                "securityContext": {"runAsUser": 0, "runAsNonRoot": false,
                                    "supplementalGroups": [5000],
                                    "sysctls": [{"name": "kernel.shm_rmid_forced", "value": "0"}]},
                "volumes": [{"name": "cfg", "configMap": {"name": "settings"}},
                            {"name": "sandbox", "emptyDir": {}}],
                "containers": [{
                    "name": "main",
                    "image": "ignored-when-the-job-names-one",
                    "imagePullPolicy": "Always",
                    "command": ["/bin/bash"],
                    "env": [{"name": "FROM_MANIFEST", "value": "1"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Gi"}},
                    "securityContext": {"privileged": true, "runAsUser": 0,
                                        "capabilities": {"add": ["SYS_ADMIN"]},
                                        "allowPrivilegeEscalation": true},
                    "volumeMounts": [{"name": "cfg", "mountPath": "/etc/settings", "readOnly": true},
                                     {"name": "sandbox", "mountPath": "/sandbox"}]
                }]
            }
        });
        let (l, o) = (ResolvedLimits::default(), owner());
        let pod = build(&params(&l, &o, Some(&manifest))).unwrap();
        insta::assert_json_snapshot!("kubernetes_merged_pod", pod);
        let spec = &pod["spec"];
        assert_eq!(spec["runtimeClassName"], "gvisor");
        assert_eq!(spec["hostNetwork"], Value::Null);
        assert_eq!(spec["hostPID"], Value::Null);
        assert_eq!(spec["serviceAccountName"], Value::Null);
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["activeDeadlineSeconds"], 30);
        assert_eq!(spec["securityContext"]["runAsUser"], UID);
        assert_eq!(spec["securityContext"]["supplementalGroups"], json!([5000]));
        assert_eq!(spec["securityContext"]["sysctls"], Value::Null);
        let c = &spec["containers"][0];
        assert_eq!(c["name"], CONTAINER);
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["securityContext"]["privileged"], false);
        assert_eq!(
            c["securityContext"]["capabilities"],
            json!({"drop": ["ALL"]})
        );
        assert_eq!(c["resources"]["requests"]["cpu"], "100m");
        // A request above the limit is capped at it.
        assert_eq!(c["resources"]["requests"]["memory"], "512Mi");
        assert_eq!(pod["metadata"]["labels"]["team"], "ml");
        assert_eq!(pod["metadata"]["labels"]["llm-sandbox"], "1");
        let typed: Result<k8s_openapi::api::core::v1::Pod, _> = serde_json::from_value(pod);
        assert!(typed.is_ok(), "{typed:?}");
    }

    #[test]
    fn refused_manifests_say_why() {
        let (l, o) = (ResolvedLimits::default(), owner());
        let cases = [
            (json!({"kind": "Deployment"}), "expected \"Pod\""),
            (
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                "exactly one",
            ),
            (
                json!({"spec": {"initContainers": [{"name": "a", "image": "x"}]}}),
                "spec.initContainers",
            ),
            (
                json!({"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}),
                "hostPath",
            ),
            (json!(["not", "a", "mapping"]), "mapping"),
        ];
        for (m, want) in cases {
            let e = build(&params(&l, &o, Some(&m))).unwrap_err();
            assert!(matches!(e, Error::Prepare { .. }), "{e:?}");
            let e = e.to_string();
            assert!(e.contains("pod_manifest") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(bytes_quantity(512 << 20), "512Mi");
        assert_eq!(bytes_quantity(2 << 30), "2Gi");
        assert_eq!(bytes_quantity(1000), "1000");
        assert_eq!(cpu_quantity(1.0), "1");
        assert_eq!(cpu_quantity(0.5), "500m");
        assert_eq!(parse_quantity("128Mi"), Some(134217728.0));
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("12Q"), None);
        assert_eq!(label_value("build host!"), "build_host");
        assert_eq!(label_value("--"), "x");
    }
}
