//! The JavaScript client's tests, one binary: its unit tests under Node, and the client in
//! headless Chromium against a real server.

mod browser_js;
mod js_types;
mod js_unit;
