//! Plot capture (src/plots): python jobs that use matplotlib get their figures as artifacts
//! `.plots/plot-NNN.png` (from `plt.show()` and figures left open at exit), on every
//! backend under test; programs that do not plot are unaffected; sessions hand them out
//! with `take_plots`.

use crate::common;

use common::{backend_selected, run_yaml, strict};
use llm_sandbox::{BackendKind, Lang, Session};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Whether `backend`'s python has matplotlib; a SKIPPED notice (or, under CI=true, a
/// failure) when not.
fn matplotlib_on(backend: &str) -> bool {
    let (_s, r) = run_yaml(
        &format!(
            "jobs:\n  - name: probe\n    lang: python\n    backend: {backend}\n    code: import matplotlib\n"
        ),
        &[],
    );
    if r.code == 0 {
        return true;
    }
    let why = format!(
        "matplotlib is not installed for python on {backend} (apt-get install python3-matplotlib; scripts/build-images for docker): {}",
        r.job("probe")
    );
    if let Some(s) = strict() {
        panic!("{why} ({s} requires it)");
    }
    common::skipped(why);
    false
}

fn plots_become_artifacts(backend: &str) {
    if !backend_selected(backend) || !matplotlib_on(backend) {
        return;
    }
    let yaml = format!(
        r#"
jobs:
  - name: plotting
    lang: python
    backend: {backend}
    code: |
      import matplotlib.pyplot as plt
      plt.plot([1, 2, 3], [2, 4, 8])
      plt.show()
      plt.figure()
      plt.scatter([1, 2], [2, 1])
      print("drawn")
    expect:
      stdout: drawn
  - name: not-plotting
    lang: python
    backend: {backend}
    code: print("plain")
    expect:
      stdout: plain
  - name: own-artifacts-too
    lang: python
    backend: {backend}
    artifacts: ["out.txt"]
    code: |
      import matplotlib
      matplotlib.use("Agg")
      import matplotlib.pyplot as plt
      open("out.txt", "w").write("x")
      plt.hist([1, 1, 2])
      plt.show()
"#
    );
    let (s, r) = run_yaml(&yaml, &[]);
    assert_eq!(r.code, 0, "{}", r.pretty());
    let job = r.assert_status("plotting", "passed");
    let listed: Vec<String> = job["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed[0].ends_with("plotting/.plots/plot-001.png"),
        "{listed:?}"
    );
    assert!(
        listed[1].ends_with("plotting/.plots/plot-002.png"),
        "{listed:?}"
    );
    for a in &listed {
        let p = std::path::Path::new(a);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            s.path().join(p)
        };
        let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(data.starts_with(PNG), "{} is not a PNG", p.display());
        assert!(
            data.len() > 1000,
            "{} is too small to be a plot",
            p.display()
        );
    }
    let plain = r.assert_status("not-plotting", "passed");
    assert_eq!(plain["artifacts"].as_array().unwrap().len(), 0, "{plain}");
    let both = r.assert_status("own-artifacts-too", "passed");
    let names: Vec<&str> = both["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names
        .iter()
        .any(|a| a.ends_with("own-artifacts-too/out.txt")));
    assert!(names
        .iter()
        .any(|a| a.ends_with("own-artifacts-too/.plots/plot-001.png")));
}

#[test]
fn plots_are_artifacts_on_native() {
    plots_become_artifacts("native");
}

#[test]
fn plots_are_artifacts_on_docker() {
    if !backend_selected("docker") {
        if let Some(s) = strict() {
            panic!("docker is not available ({s} requires it)");
        }
        common::skipped("docker is not available");
        return;
    }
    plots_become_artifacts("docker");
}

#[test]
fn plots_are_artifacts_on_podman() {
    if !backend_selected("podman") {
        if let Some(s) = strict() {
            panic!("podman is not available ({s} requires it)");
        }
        common::skipped("podman is not available");
        return;
    }
    plots_become_artifacts("podman");
}

/// The hook stays out of the way: a program's own sitecustomize-free start-up, its own
/// PYTHONPATH, and `sys.modules` without matplotlib.
#[test]
fn the_hook_does_not_import_matplotlib() {
    let (_s, r) = run_yaml(
        r#"
jobs:
  - name: lazy
    lang: python
    env: { PYTHONPATH: /nowhere }
    code: |
      import os, sys
      print("matplotlib" in sys.modules, os.environ["PYTHONPATH"].split(":")[0], os.environ["MPLBACKEND"])
    expect:
      stdout: "False /nowhere Agg"
"#,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.pretty());
}

async fn session_plots(backend: BackendKind) {
    let mut s = Session::builder()
        .lang(Lang::Python)
        .backend(backend)
        .open()
        .await
        .unwrap();
    let out = s
        .run(
            "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()\nprint('ok')",
            &[],
        )
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    let plots = s.take_plots().await.unwrap();
    assert_eq!(plots.len(), 1, "{plots:?}");
    assert_eq!(plots[0].name, "plot-001.png");
    assert!(plots[0].png.starts_with(PNG));
    assert!(s.take_plots().await.unwrap().is_empty(), "taken once");
    let out = s.run("print('no figure')", &[]).await.unwrap();
    assert!(out.success(), "{out:?}");
    assert!(s.take_plots().await.unwrap().is_empty());
    s.close().await.unwrap();
}

#[tokio::test]
async fn sessions_take_plots() {
    common::use_binary_as_helper();
    if !matplotlib_on("native") {
        return;
    }
    session_plots(BackendKind::Native).await;
    if backend_selected("docker") && matplotlib_on("docker") {
        session_plots(BackendKind::Docker).await;
    }
}

/// Python jobs that never plot pay nothing for the capture (no hook, no `.plots`
/// collection): what batches of thousands of samples would feel.
#[test]
fn jobs_that_do_not_plot_get_no_hook() {
    let mut backends = vec!["native"];
    for b in ["docker", "podman"] {
        if backend_selected(b) {
            backends.push(b);
        }
    }
    for backend in backends {
        let (_s, r) = run_yaml(
            &format!(
                r#"
jobs:
  - name: plain
    lang: python
    backend: {backend}
    code: |
      import os, sys
      print(os.environ.get("PYTHONPATH"), [p for p in sys.path if "llm-sandbox" in p])
    expect:
      stdout: "None []"
"#
            ),
            &[],
        );
        assert_eq!(r.code, 0, "{backend}: {}", r.pretty());
    }
}
