//! `--html FILE` (README, "Reports"): one self-contained page, checked in a real browser:
//! headless Chromium (Debian's `chromium`, installed by scripts/test) runs its script,
//! prints the DOM it ends with, and renders it to a PNG.

use crate::common::{self, Scratch};
use std::path::Path;
use std::process::Command;

/// The jobs: two pass, one fails with a diff, one times out, one prints markup and fails;
/// grouped.
const JOBS: &str = r#"
[defaults]
lang = "bash"
timeout = "5s"

[[jobs]]
name = "ok-1"
group = "t1"
code = "echo hi"
expect.stdout = "hi"

[[jobs]]
name = "ok-2"
group = "t1"
code = "echo hi"
expect.stdout = "hi"

[[jobs]]
name = "wrong"
group = "t2"
code = "printf '1\n2\n6\n'"
expect.stdout = "1\n2\n5\n"

[[jobs]]
name = "slow"
group = "t2"
timeout = "200ms"
code = "sleep 5"

[[jobs]]
name = "markup"
group = "t3"
code = "echo '<script>document.title=\"pwned\"</script><img src=x onerror=alert(1)>'; exit 3"
"#;

fn browser() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| common::have(b))
}

/// Headless Chromium on `page` (with `fragment`): `args` plus the page's address.
fn chromium(browser: &str, page: &Path, fragment: &str, args: &[&str]) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            // Nothing may be fetched: a page that needs the network stays broken.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=3000",
        ])
        .args(args)
        .arg(format!("file://{}{fragment}", page.display()))
        .output()
        .expect("start the browser")
}

#[test]
fn the_html_report_renders_in_a_browser_and_filters_by_status() {
    let s = Scratch::new();
    s.write("jobs.toml", JOBS);
    let out = s
        .cmd()
        .args([
            "run",
            "--no-progress",
            "--html",
            "report.html",
            "--json",
            "r.json",
            "jobs.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = s.path().join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained, and the program's output is text, not markup.
    for external in ["src=\"http", "href=\"http", "src=\"//", "<link", "@import"] {
        assert!(!html.contains(external), "{external} in the page");
    }
    assert!(html.contains("&lt;script&gt;document.title"), "{html}");
    assert!(
        html.contains("<span class=\"add\">+6</span>"),
        "the diff: {html}"
    );
    assert!(
        html.contains("<span class=\"del\">-5</span>"),
        "the diff: {html}"
    );
    assert_eq!(html.matches("<tr class=\"job\"").count(), 5);
    assert_eq!(html.matches("<tr class=\"group\"").count(), 3);

    let Some(browser) = browser() else {
        let why = "no chromium on PATH (apt-get install chromium; scripts/test installs it)";
        if let Some(strict) = common::strict() {
            panic!("{why}; {strict} requires it");
        }
        common::skipped(format!("the HTML report's browser check: {why}"));
        return;
    };
    // Its script ran, and `#status=failed,timeout` shows only those three.
    let dom = chromium(browser, &page, "#status=failed,timeout", &["--dump-dom"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        dom_text.contains("data-ready=\"yes\""),
        "the script did not finish:\n{dom_text}"
    );
    assert!(
        dom_text.contains("<span id=\"shown\">3</span>"),
        "{dom_text}"
    );
    assert!(
        dom_text.contains("<title>llm-sandbox report</title>"),
        "the job's output ran as script:\n{dom_text}"
    );
    let visible: Vec<&str> = dom_text
        .split("<tr class=\"job\"")
        .skip(1)
        .filter(|row| !row[..row.find('>').unwrap()].contains("display: none"))
        .map(|row| {
            let at = row.find("data-status=\"").unwrap() + 13;
            &row[at..at + row[at..].find('"').unwrap()]
        })
        .collect();
    assert_eq!(visible, ["failed", "timeout", "failed"], "{dom_text}");
    // Without a filter every job shows; the chart counted all five.
    let dom = chromium(browser, &page, "", &["--dump-dom"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom_text.contains("<span id=\"shown\">5</span>"),
        "{dom_text}"
    );
    let counted: usize = dom_text
        .split("data-count=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse::<usize>().unwrap())
        .sum();
    assert_eq!(counted, 5);

    // And it draws: a PNG of the page, not blank.
    let shot = s.path().join("report.png");
    let out = chromium(
        browser,
        &page,
        "",
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,1400",
        ],
    );
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // A blank 1200x1400 page compresses to a few KB; text, tables and the chart do not.
    assert!(
        png.len() > 20_000,
        "a {} byte screenshot: blank?",
        png.len()
    );
}

#[test]
fn merge_writes_the_html_report_of_the_shards() {
    let s = Scratch::new();
    s.write("jobs.toml", JOBS);
    for i in 1..=2 {
        s.cmd()
            .args([
                "run",
                "--no-progress",
                "--shard",
                &format!("{i}/2"),
                "--json",
            ])
            .arg(format!("s{i}.json"))
            .arg("jobs.toml")
            .output()
            .unwrap();
    }
    let out = s
        .cmd()
        .args(["merge", "s1.json", "s2.json", "--html", "all.html"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(s.path().join("all.html")).unwrap();
    assert_eq!(html.matches("<tr class=\"job\"").count(), 5);
    assert!(
        html.contains("<span class=\"failed\" data-status=\"failed\">2 failed</span>"),
        "{html}"
    );
    // Two reports on stdout are one too many.
    let out = s
        .cmd()
        .args(["merge", "s1.json", "s2.json", "--html", "-", "--json", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--json - and --html -"));
}
