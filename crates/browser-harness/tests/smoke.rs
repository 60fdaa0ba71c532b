//! The harness against a real headless Chromium: every command once, on a `data:` page.
//!
//! Skips loudly without chromium/chromedriver, and fails instead when `CI=true`.

use std::time::Duration;

use browser_harness::{Browser, Error};
use serde_json::json;

const PAGE: &str = "data:text/html;charset=utf-8,\
<title>harness</title>\
<input id=name value=initial>\
<button id=go onclick=\"setTimeout(() => { document.querySelector('%23out').textContent = \
'hello ' + document.querySelector('%23name').value; window.done = {ok: true}; \
console.error('logged from the page'); }, 300)\">go</button>\
<p id=out>waiting</p>";

#[test]
fn every_command_works_on_a_real_page() -> Result<(), Error> {
    if !browser_harness::browser_or_skip("every_command_works_on_a_real_page") {
        return Ok(());
    }
    let browser = Browser::launch()?;
    browser.goto(PAGE)?;
    assert_eq!(browser.title()?, "harness");
    assert!(browser.current_url()?.starts_with("data:text/html"));

    assert_eq!(
        browser.execute("return arguments[0] + arguments[1];", &[json!(2), json!(3)])?,
        json!(5)
    );
    assert_eq!(
        browser.execute_async(
            "const done = arguments[arguments.length - 1]; setTimeout(() => done(arguments[0] * 2), 50);",
            &[json!(21)],
        )?,
        json!(42)
    );
    let thrown = browser
        .execute("throw new Error('boom');", &[])
        .unwrap_err();
    assert_eq!(
        thrown.webdriver_code(),
        Some("javascript error"),
        "{thrown}"
    );
    let missing = browser.find("#nope").unwrap_err();
    assert_eq!(
        missing.webdriver_code(),
        Some("no such element"),
        "{missing}"
    );

    assert_eq!(browser.value("#name")?, "initial");
    browser.find("#name")?.clear()?;
    browser.send_keys("#name", "world")?;
    assert_eq!(browser.value("#name")?, "world");
    assert_eq!(browser.find_all("input, button")?.len(), 2);
    assert_eq!(browser.find("#go")?.attribute("id")?.as_deref(), Some("go"));

    browser.click("#go")?;
    let done = browser.wait_for("window.done", Duration::from_secs(30))?;
    assert_eq!(done, json!({ "ok": true }));
    assert_eq!(browser.text("#out")?, "hello world");
    let text = browser.wait_until("text", Duration::from_secs(5), |b| {
        Ok(Some(b.text("#out")?).filter(|t| t.starts_with("hello")))
    })?;
    assert_eq!(text, "hello world");

    let never = browser
        .wait_for("window.never", Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(never, Error::Timeout { .. }), "{never}");

    // chromedriver collects console messages from DevTools events, which may arrive after the
    // page's state is visible: wait for the message (each call drains what it returns).
    let mut logs = Vec::new();
    let logged = browser.wait_until("the console message", Duration::from_secs(30), |b| {
        logs.extend(b.console_logs()?);
        Ok(logs
            .iter()
            .any(|l| l.message.contains("logged from the page"))
            .then_some(()))
    });
    assert!(logged.is_ok(), "console: {logs:?}");

    let png = browser.screenshot()?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    Ok(())
}
