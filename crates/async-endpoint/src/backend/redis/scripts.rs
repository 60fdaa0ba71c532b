//! The Lua scripts behind every transition, loaded once per process and run with EVALSHA
//! (redis-rs reloads a script on `NOSCRIPT`, e.g. after a Redis restart).

use redis::Script;

const COMMON: &str = include_str!("lua/common.lua");

/// Every script the backend runs.
pub(super) struct Scripts {
    pub(super) create: Script,
    pub(super) poll: Script,
    pub(super) begin: Script,
    pub(super) progress: Script,
    pub(super) retrying: Script,
    pub(super) finish: Script,
    pub(super) release: Script,
    pub(super) claim: Script,
    pub(super) reap: Script,
    pub(super) group: Script,
}

/// A record script: the shared helpers followed by its body.
fn record(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            create: Script::new(include_str!("lua/create.lua")),
            poll: record(include_str!("lua/poll.lua")),
            begin: record(include_str!("lua/begin.lua")),
            progress: Script::new(include_str!("lua/progress.lua")),
            retrying: Script::new(include_str!("lua/retrying.lua")),
            finish: record(include_str!("lua/finish.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            claim: Script::new(include_str!("lua/claim.lua")),
            reap: Script::new(include_str!("lua/reap.lua")),
            group: Script::new(include_str!("lua/group.lua")),
        }
    }
}
