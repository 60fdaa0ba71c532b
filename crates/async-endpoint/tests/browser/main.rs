//! The JavaScript client's tests, one binary: its unit tests under Node, and the client in
//! headless Chromium against a real server, same-origin and across two origins (CORS).

mod browser_cors;
mod browser_js;
mod browser_stream;
mod js_types;
mod js_unit;
