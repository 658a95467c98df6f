//! The image side of the container backends (docker and podman, the same code): `libraries`
//! installed in a prepare container and committed as a template, `dockerfile` builds,
//! `keep_template`, and nothing of the run left behind (containers, volumes, unkept
//! images), checked with the engine's own CLI through the runner's owner label.

use crate::common;

use common::{backend_selected, engine_cli as cli, engine_objects as ours, Scratch};
use serde_json::Value;
use std::process::Stdio;

const JOBS: &str = r#"
[defaults]
lang = "python"

[[jobs]]
name = "libs"
libraries = ["six==1.16.0"]
code = "import six; print(six.__version__)"
expect.stdout = "1.16.0\n"

[[jobs]]
name = "dockerfile"
dockerfile = "img/Dockerfile"
code = "print(open('/etc/marker').read().strip())"
expect.stdout = "built-from-dockerfile\n"

[[jobs]]
name = "kept"
libraries = ["six==1.15.0"]
setup = "echo NONCE > /etc/nonce"
keep_template = true
code = "import six; print(six.__version__)"
expect.stdout = "1.15.0\n"
"#;

fn images_section(engine: &str) {
    if !backend_selected(engine) {
        common::skipped(format!("{engine} image tests ({engine} not available)"));
        return;
    }
    let s = Scratch::new();
    // The template and the Dockerfile's image are new to this test run (the template's
    // key includes `setup`, the image's the build context).
    let nonce = format!("{}-{}", std::process::id(), engine);
    s.write("jobs.toml", &JOBS.replace("NONCE", &nonce));
    s.write(
        "img/Dockerfile",
        &format!(
            "FROM llm-sandbox/python:latest\nLABEL test.nonce={nonce}\nRUN echo built-from-dockerfile > /etc/marker\n"
        ),
    );
    let child = s
        .cmd()
        .args([
            "run",
            "--no-progress",
            "--json",
            "-",
            "--backend",
            engine,
            "jobs.toml",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let owner = format!("ls-{}-", child.id());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{engine}: no report ({e}); stderr:\n{stderr}"));
    for j in report["jobs"].as_array().unwrap() {
        assert_eq!(
            j["status"], "passed",
            "{engine}: {} did not pass: {j}\nstderr:\n{stderr}",
            j["name"]
        );
        assert_eq!(j["backend"], engine);
    }
    assert_eq!(out.status.code(), Some(0), "{engine}: {stderr}");

    // Nothing of the run is left but the kept template.
    let left: Vec<_> = ours(engine, "container")
        .into_iter()
        .filter(|c| c.1.starts_with(&owner))
        .collect();
    assert!(left.is_empty(), "{engine}: containers left: {left:?}");
    if engine == "podman" {
        let left: Vec<_> = ours(engine, "volume")
            .into_iter()
            .filter(|v| v.1.starts_with(&owner))
            .collect();
        assert!(left.is_empty(), "{engine}: volumes left: {left:?}");
    }
    let images: Vec<_> = ours(engine, "image")
        .into_iter()
        .filter(|i| i.1.starts_with(&owner))
        .collect();
    assert_eq!(
        images.len(),
        1,
        "{engine}: exactly the kept template should remain: {images:?}"
    );
    assert_eq!(images[0].2, "template", "{engine}: {images:?}");
    assert_eq!(images[0].3, "true", "{engine}: {images:?}");
    let built = cli(
        engine,
        &[
            "images",
            "-q",
            "--filter",
            &format!("label=test.nonce={nonce}"),
        ],
    );
    assert!(
        built.trim().is_empty(),
        "{engine}: the Dockerfile's image was kept without keep_template: {built}"
    );

    // The kept template is reused: the next run installs nothing.
    let again = s.run_json(&["--backend", engine, "--filter", "kept", "jobs.toml"]);
    assert_eq!(again.code, 0, "{engine}: {}", again.stderr);
    let j = &again.report["jobs"][0];
    assert_eq!(j["status"], "passed", "{engine}: {j}");
    let _ = cli(engine, &["rmi", "-f", &images[0].0]);
}

#[test]
fn docker_libraries_dockerfile_keep_template_and_no_leftovers() {
    images_section("docker");
}

#[test]
fn podman_libraries_dockerfile_keep_template_and_no_leftovers() {
    images_section("podman");
}

#[test]
fn doctor_reports_each_engine_and_how_to_start_podman() {
    let out = common::bin()
        .args(["doctor", "--json"])
        .env("CONTAINER_HOST", "unix:///nonexistent/podman.sock")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let podman = &v["backends"]["podman"];
    assert_eq!(podman["ok"], false, "{podman}");
    let detail = podman["detail"].as_str().unwrap();
    assert!(
        detail.contains("/nonexistent/podman.sock") && detail.contains("podman system service"),
        "{detail}"
    );
    if backend_selected("docker") {
        let docker = &v["backends"]["docker"];
        assert_eq!(docker["ok"], true, "{docker}");
        assert!(
            docker["detail"].as_str().unwrap().contains("docker"),
            "{docker}"
        );
    }
    if backend_selected("podman") {
        let out = common::bin().args(["doctor", "--json"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let podman = &v["backends"]["podman"];
        assert_eq!(podman["ok"], true, "{podman}");
        assert!(
            podman["detail"].as_str().unwrap().contains("podman.sock"),
            "{podman}"
        );
    }
}
