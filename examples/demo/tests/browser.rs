//! The demo page in a real browser (headless Chromium through `test_support::browser`): the built
//! `demo` binary is started on a free port; the test starts requests from the form and checks
//! that progress advances and the result shows, that a failure shows the error, that the
//! synchronous buttons and the jQuery example answer, and that the heartbeat stalls while the
//! blocking client holds every runtime thread. It saves a screenshot to `target/demo.png`.
//!
//! Skips loudly without chromium/chromedriver (fails when `CI=true`).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::Demo;
use test_support::browser::{Browser, Options};

/// Bounds for things that take seconds when the machine is idle; generous for a loaded one.
const LONG: Duration = Duration::from_secs(60);

/// Sets the form: query, delay (s), failure rate (%), requests at once.
fn set_form(browser: &Browser, q: &str, delay_s: u32, fail: u32, count: u32) {
    browser
        .execute(
            "const [q, delay, fail, count] = arguments;
             const set = (id, v) => {
               const input = document.getElementById(id);
               input.value = String(v);
               input.dispatchEvent(new Event('input', { bubbles: true }));
             };
             set('q', q); set('delay', delay); set('fail', fail);
             document.querySelector(`input[name=count][value='${count}']`).click();",
            &[q.into(), delay_s.into(), fail.into(), count.into()],
        )
        .expect("set the form");
}

/// `document.querySelector('.card[data-n="n"]')` as a JS expression.
fn card(n: u32) -> String {
    format!("document.querySelector('.card[data-n=\"{n}\"]')")
}

/// Installs `window.__events`, a log of every change the page makes to a card's state or percent,
/// to the heartbeat status, to an output's state, and of every missed heartbeat slot drawn. States
/// that last a moment (a percent, a stall) are checked in this log afterwards, so they cannot
/// slip between two polls of the test on a slow machine.
fn record_events(browser: &Browser) {
    browser
        .execute(
            "if (window.__events) return;
             const events = (window.__events = []);
             new MutationObserver((records) => {
               for (const r of records) {
                 const t = r.target;
                 if (r.type === 'childList') {
                   for (const n of r.addedNodes) if (n.classList && n.classList.contains('miss')) events.push({ miss: true });
                 } else if (t.classList.contains('card')) {
                   events.push({ card: +t.dataset.n, state: t.dataset.state, percent: +t.dataset.percent });
                 } else if (t.id === 'hb-status') {
                   events.push({ hb: t.dataset.state });
                 } else if (t.id) {
                   events.push({ out: t.id, state: t.dataset.state });
                 }
               }
             }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state', 'data-percent'] });",
            &[],
        )
        .expect("install the event recorder");
}

/// The events recorded so far (see [`record_events`]).
fn events(browser: &Browser) -> Vec<Value> {
    match browser
        .execute("return window.__events;", &[])
        .expect("read the events")
    {
        Value::Array(events) => events,
        other => panic!("no event log: {other}"),
    }
}

/// Where screenshots go: the target directory (the built binary's profile directory's parent).
fn screenshot_path(name: &str) -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_demo"));
    exe.parent()
        .and_then(|profile| profile.parent())
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join(name)
}

#[test]
fn demo_page_in_chromium() {
    if !test_support::browser::available_or_skip("demo_page_in_chromium") {
        return;
    }
    let demo = Demo::start(&[], &[]);
    let url = demo.url();
    let browser =
        Browser::launch_with(&Options::default().window(1280, 1200)).expect("launch chromium");
    browser.goto(&format!("{url}/")).expect("open the page");
    assert_eq!(browser.title().expect("title"), "async-endpoint · demo");
    browser
        .wait_for("document.querySelector('#facts b')", LONG)
        .expect("server facts load from /api/info");
    let facts = browser.text("#facts").expect("facts");
    assert!(facts.contains("memory"), "facts: {facts}");

    record_events(&browser);

    // 1. One request: progress strictly between 0 and 100 is seen, then it advances, then the result.
    set_form(&browser, "browser", 4, 0, 1);
    browser.click("#start").expect("click start");
    let c1 = card(1);
    browser
        .wait_for(&format!("{c1} && {c1}.dataset.state === 'done'"), LONG)
        .expect("the request finishes");
    let card1: Vec<(String, f64)> = events(&browser)
        .iter()
        .filter(|e| e["card"] == 1)
        .map(|e| {
            let state = e["state"].as_str().unwrap_or_default().to_owned();
            (state, e["percent"].as_f64().unwrap_or(f64::NAN))
        })
        .collect();
    let first = card1
        .iter()
        .position(|(state, p)| state == "running" && *p > 0.0 && *p < 100.0)
        .unwrap_or_else(|| panic!("progress between 0 and 100 while running: {card1:?}"));
    assert!(
        card1[first + 1..].iter().any(|(_, p)| *p > card1[first].1),
        "progress advances: {card1:?}"
    );
    let result = browser.text(".card[data-n=\"1\"] .result").expect("result");
    assert!(result.contains("results for “browser”"), "result: {result}");
    assert!(result.contains("worker pid"), "result: {result}");
    assert_eq!(
        browser
            .execute(&format!("return {c1}.dataset.percent;"), &[])
            .expect("percent"),
        Value::from("100")
    );

    // 2. A failure shows the task's error message.
    set_form(&browser, "failing", 2, 100, 1);
    browser.click("#start").expect("click start");
    let c2 = card(2);
    browser
        .wait_for(&format!("{c2} && {c2}.dataset.state === 'failed'"), LONG)
        .expect("the request fails");
    let error = browser.text(".card[data-n=\"2\"] .result").expect("error");
    assert!(
        error.contains("The external API answered 503 Service Unavailable"),
        "error: {error}"
    );
    assert!(
        browser
            .text(".card[data-n=\"2\"] .chip")
            .expect("chip")
            .contains("422"),
        "the failure is the 422 answer"
    );

    // 3. The original jQuery call (jQuery is served when libjs-jquery is installed).
    let has_jquery = browser
        .execute(
            "return !document.getElementById('jquery-panel').hidden;",
            &[],
        )
        .expect("jquery panel");
    if std::path::Path::new(demo::JQUERY_PATH).exists() {
        assert_eq!(
            has_jquery,
            Value::Bool(true),
            "jQuery is installed: the example shows"
        );
        set_form(&browser, "jquery", 2, 0, 1);
        browser
            .click("#jquery-run")
            .expect("run the jQuery example");
        // The page's snippet gives up after 10 s (its verbatim timeout) for a 2 s request: wait
        // for either end, so a failure shows its message at once.
        browser
            .wait_for(
                "['done', 'failed'].includes(document.getElementById('jquery-out').dataset.state)",
                LONG,
            )
            .expect("$.getAsyncRequest(url, 10000) calls back");
        let out = browser.text("#jquery-out").expect("jquery output");
        assert_eq!(
            browser
                .execute(
                    "return document.getElementById('jquery-out').dataset.state;",
                    &[]
                )
                .expect("jquery state"),
            Value::from("done"),
            "$.getAsyncRequest(url, 10000).success(...) is called: {out}"
        );
        assert!(out.contains("results for “jquery”"), "jQuery output: {out}");
    } else {
        assert_eq!(
            has_jquery,
            Value::Bool(false),
            "no jQuery: the example is hidden"
        );
    }

    // 4. Synchronous, awaiting: one answer after the whole delay.
    set_form(&browser, "hello", 2, 0, 1);
    browser.click("#sync-await").expect("click await");
    browser
        .wait_for(
            "document.getElementById('sync-await-out').dataset.state === 'done'",
            LONG,
        )
        .expect("the awaiting handler answers");
    let out = browser.text("#sync-await-out").expect("await output");
    assert!(out.starts_with("200 after"), "await output: {out}");

    // 5. Synchronous, blocking: one call per runtime thread (two here). Which thread each lands
    //    on is the scheduler's business, so the stall itself is asserted in the one-thread test
    //    below; here both users get their answer, and the screenshot shows the heartbeat.
    set_form(&browser, "hello", 5, 0, 1);
    browser.click("#sync-blocking").expect("click blocking");
    browser
        .wait_for(
            "document.getElementById('sync-blocking-out').dataset.state === 'done'",
            LONG,
        )
        .expect("the blocking handlers answer");
    let out = browser.text("#sync-blocking-out").expect("blocking output");
    assert_eq!(out.matches("200 after").count(), 2, "two users: {out}");

    // 6. Several at once, for the screenshot: three running cards above the finished ones.
    set_form(&browser, "weather in Lisbon", 12, 20, 3);
    browser.click("#start").expect("click start");
    browser
        .wait_for(
            "[3, 4, 5].map(n => document.querySelector(`.card[data-n=\"${n}\"]`)).every(c => c && +c.dataset.percent >= 25) || [...document.querySelectorAll('.card')].some(c => +c.dataset.n > 2 && ['done', 'failed', 'error'].includes(c.dataset.state))",
            LONG,
        )
        .expect("the three requests show progress");
    // From the event log: all three were running at the same moment (each runs 6 s or more, so
    // none ends before the others have started).
    let at_once = browser
        .wait_for(
            "(() => {
               const running = new Set(), ended = new Set();
               let most = 0;
               for (const e of window.__events) {
                 if (![3, 4, 5].includes(e.card)) continue;
                 if (e.state === 'running' && !ended.has(e.card)) running.add(e.card);
                 if (['done', 'failed', 'error'].includes(e.state)) { running.delete(e.card); ended.add(e.card); }
                 most = Math.max(most, running.size);
               }
               return (most === 3 || ended.size === 3) && { most };
             })()",
            LONG,
        )
        .expect("the three requests run or end");
    assert_eq!(
        at_once["most"],
        3,
        "three requests run at once, each with its own progress: {:?}",
        events(&browser)
            .iter()
            .filter(|e| e["card"].as_u64().is_some_and(|n| n > 2))
            .collect::<Vec<_>>()
    );
    let path = screenshot_path("demo.png");
    browser.screenshot_png(&path).expect("save the screenshot");
    let size = std::fs::metadata(&path).expect("screenshot written").len();
    assert!(size > 10_000, "the screenshot has content ({size} bytes)");

    // 7. Stop: the card's stop button aborts the client's signal, which sends DELETE with the id
    // and token; the card says cancelled, and on the server the task and its fake external call
    // are dropped (the demo counts stopped calls in /api/info).
    set_form(&browser, "never mind", 30, 0, 1);
    browser.click("#start").expect("click start");
    let c6 = card(6);
    browser
        .wait_for(
            &format!("{c6} && {c6}.dataset.state === 'running' && +{c6}.dataset.percent > 0"),
            LONG,
        )
        .expect("the request runs");
    browser
        .click(".card[data-n=\"6\"] .stop")
        .expect("click stop");
    browser
        .wait_for(&format!("{c6}.dataset.state === 'cancelled'"), LONG)
        .expect("the card says cancelled");
    let text = browser.text(".card[data-n=\"6\"] .result").expect("text");
    assert!(text.contains("Cancelled"), "card text: {text}");
    let stopped = browser
        .wait_for(
            "(() => {
               fetch('/api/info', { cache: 'no-store' }).then(r => r.json())
                 .then(i => { window.__stopped = i.external_calls_stopped; });
               return window.__stopped >= 1 && window.__stopped;
             })()",
            LONG,
        )
        .expect("the server stopped the external call");
    assert!(stopped.as_u64().is_some_and(|n| n >= 1), "{stopped}");

    // 8. Five at once with the heartbeat: the five follow one shared event stream (no waiting
    // poll each), so the heartbeat's requests keep finding a free connection; all five answer.
    set_form(&browser, "five at once", 6, 0, 5);
    browser.click("#start").expect("click start");
    let five = "[7, 8, 9, 10, 11].map(n => document.querySelector(`.card[data-n=\"${n}\"]`))";
    browser
        .wait_for(
            &format!("{five}.every(c => c && ['running', 'done'].includes(c.dataset.state))"),
            LONG,
        )
        .expect("the five requests run");
    browser
        .wait_for(
            "(() => { const t0 = performance.now();
               fetch('/api/heartbeat', { cache: 'no-store' }).then(() => { window.__beat = performance.now() - t0; });
               return true; })()",
            LONG,
        )
        .expect("send a beat");
    browser
        .wait_for("window.__beat !== undefined", LONG)
        .expect("the heartbeat answers while five requests are pending");
    browser
        .wait_for(
            &format!("{five}.every(c => c.dataset.state === 'done')"),
            LONG,
        )
        .expect("all five answer");
    let streams = browser
        .execute(
            "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/async-endpoint/stream')).length;",
            &[],
        )
        .expect("resource timings");
    assert!(
        streams.as_u64().is_some_and(|n| n >= 1),
        "the page followed its requests over the event stream: {streams}"
    );

    // No script errors or failed loads on the page.
    let severe: Vec<_> = browser
        .console_logs()
        .expect("console logs")
        .into_iter()
        .filter(|l| l.level == "SEVERE")
        // The failures this test asks for are logged by Chromium as failed loads; they are not
        // page errors.
        .filter(|l| !l.message.contains("status of 422"))
        .collect();
    assert!(severe.is_empty(), "console errors: {severe:#?}");
}

#[test]
fn on_one_runtime_thread_a_blocking_call_stalls_everything_and_the_page_fits_a_phone() {
    let name = "on_one_runtime_thread_a_blocking_call_stalls_everything_and_the_page_fits_a_phone";
    if !test_support::browser::available_or_skip(name) {
        return;
    }
    let demo = Demo::start(&[], &[("TOKIO_WORKER_THREADS", "1")]);
    let browser =
        Browser::launch_with(&Options::default().window(390, 900)).expect("launch chromium");
    browser
        .goto(&format!("{}/", demo.url()))
        .expect("open the page");
    browser
        .wait_for("document.querySelector('#facts b')", LONG)
        .expect("server facts load");
    record_events(&browser);
    assert!(
        browser
            .text("#facts")
            .expect("facts")
            .contains("1 runtime thread")
    );

    // One column, nothing wider than the screen.
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            &[],
        )
        .expect("measure");
    assert_eq!(
        overflow,
        Value::from(0),
        "no horizontal scrolling on a phone"
    );
    let columns = browser
        .execute(
            "return getComputedStyle(document.querySelector('.layout')).gridTemplateColumns.split(' ').length;",
            &[],
        )
        .expect("grid columns");
    assert_eq!(
        columns,
        Value::from(1),
        "the panels stack on a narrow screen"
    );

    // With the only runtime thread asleep in a blocking client, the heartbeat gets no answer
    // (reported after 0.4 s; the call blocks for 4 s), then recovers. Shown by order in the
    // event log: a stall and missed beats after the click, before the blocking answer arrives.
    set_form(&browser, "phone", 4, 0, 1);
    browser
        .wait_for(
            "document.querySelectorAll('#hb i:not(.none)').length > 0",
            LONG,
        )
        .expect("the heartbeat beats");
    browser.click("#sync-blocking").expect("click blocking");
    browser
        .wait_for(
            "document.getElementById('sync-blocking-out').dataset.state === 'done'",
            LONG,
        )
        .expect("the blocking handler answers");
    browser
        .wait_for(
            "document.getElementById('hb-status').dataset.state !== 'stalled'",
            LONG,
        )
        .expect("the heartbeat recovers");
    let log = events(&browser);
    let blocking = |state: &str| {
        log.iter()
            .position(|e| e["out"] == "sync-blocking-out" && e["state"] == state)
            .unwrap_or_else(|| panic!("no `{state}` of the blocking output: {log:?}"))
    };
    let (clicked, answered) = (blocking("waiting"), blocking("done"));
    let during = &log[clicked..answered];
    assert!(
        during.iter().any(|e| e["hb"] == "stalled"),
        "the heartbeat stalls while the only runtime thread is blocked: {during:?}"
    );
    assert!(
        during.iter().any(|e| e["miss"] == true),
        "missed beats are drawn: {during:?}"
    );

    // The async path works on one thread too.
    set_form(&browser, "phone", 1, 0, 1);
    browser.click("#start").expect("click start");
    browser
        .wait_for(
            &format!("{c} && {c}.dataset.state === 'done'", c = card(1)),
            LONG,
        )
        .expect("the request finishes");
    browser
        .screenshot_png(screenshot_path("demo-phone.png"))
        .expect("save the screenshot");
}
