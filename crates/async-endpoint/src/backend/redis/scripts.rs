//! The Lua scripts behind every transition, loaded once per process and run with EVALSHA
//! (redis-rs reloads a script on `NOSCRIPT`, e.g. after a Redis restart).
//!
//! The status letters stored in records and the codes the scripts return are defined once, in
//! the tables below. Every script is loaded with a prelude generated from them (`local QUEUED =
//! 'q'`, …), so Lua and Rust cannot disagree on a letter or a number; the Rust side decodes
//! replies into these enums, so an unknown code is reported as corrupt rather than guessed at.
//! redis-rs hashes the final text (prelude included) for EVALSHA.

use std::fmt::Write as _;

use redis::{FromRedisValue, ParsingError, Script, Value};

use crate::Status;

const COMMON: &str = include_str!("lua/common.lua");
/// Helpers of the scripts that read queue entries.
const ENTRY: &str = include_str!("lua/entry.lua");

/// Declares a table of codes shared with Lua: an enum, its code per variant, the Lua name the
/// prelude binds to that code, and decoding from a reply.
macro_rules! codes {
    (
        $(#[$doc:meta])*
        $name:ident: $code:ty as $decoded:ty {
            $($(#[$vdoc:meta])* $variant:ident = $value:expr => $lua:literal,)+
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(super) enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            const ALL: &[Self] = &[$(Self::$variant),+];

            /// The code as stored or returned by the scripts.
            pub(super) const fn code(self) -> $code {
                match self {
                    $(Self::$variant => $value,)+
                }
            }

            /// The name the Lua prelude gives the code.
            const fn lua_name(self) -> &'static str {
                match self {
                    $(Self::$variant => $lua,)+
                }
            }

            /// Appends `local NAME = code` for every variant.
            fn lua_locals(lua: &mut String) {
                for code in Self::ALL {
                    // Writing to a String cannot fail.
                    let _ = writeln!(lua, "local {} = {}", code.lua_name(), LuaLiteral::lua(&code.code()));
                }
            }
        }

        impl FromRedisValue for $name {
            fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
                let decoded: $decoded = redis::from_redis_value(v)?;
                Self::ALL
                    .iter()
                    .copied()
                    .find(|code| decoded == code.code())
                    .ok_or_else(|| {
                        format!(concat!("unknown ", stringify!($name), " code {:?}"), decoded).into()
                    })
            }
        }
    };
}

codes! {
    /// A request's status as stored in its record's `s` field (one letter: it is stored per
    /// request).
    Stored: &'static str as String {
        Queued = "q" => "QUEUED",
        Running = "r" => "RUNNING",
        Retrying = "y" => "RETRYING",
        Done = "d" => "DONE",
        Failed = "f" => "FAILED",
    }
}

codes! {
    /// Why `begin.lua` did not start an attempt (it returns the attempt's data otherwise).
    Skipped: i64 as i64 {
        /// The record is gone or already terminal.
        Gone = 0 => "SKIP_GONE",
        /// The deadline passed before the job started: the request failed with a timeout.
        TimedOut = 1 => "SKIP_TIMED_OUT",
        /// Delivered more than `max_deliveries` times: the request failed.
        Poisoned = 2 => "SKIP_POISONED",
    }
}

codes! {
    /// What `group.lua` found.
    Group: i64 as i64 {
        /// It created the consumer group.
        Created = 1 => "GROUP_CREATED",
        /// The group was there already.
        Existed = 0 => "GROUP_EXISTED",
        /// There is no stream (nothing was enqueued within the TTL).
        NoStream = -1 => "GROUP_NO_STREAM",
    }
}

codes! {
    /// Whether a conditional write happened (`poll.lua` reports whether it timed the request
    /// out, `cancel.lua` whether it cancelled or timed it out; `create`, `progress`, `retrying`
    /// and `release` return it too).
    Write: i64 as i64 {
        Applied = 1 => "APPLIED",
        Unchanged = 0 => "UNCHANGED",
    }
}

codes! {
    /// What `create.lua` did.
    Admission: i64 as i64 {
        /// Stored and enqueued.
        Admitted = 1 => "ADMITTED",
        /// The owner's pending limit is reached: nothing was written.
        OverOwner = 2 => "OVER_OWNER_LIMIT",
        /// The task's pending limit is reached: nothing was written.
        OverTask = 3 => "OVER_TASK_LIMIT",
    }
}

impl Stored {
    /// The public status this letter stands for.
    pub(super) fn status(self) -> Status {
        match self {
            Stored::Queued => Status::Queued,
            Stored::Running => Status::Running,
            Stored::Retrying => Status::Retrying,
            Stored::Done => Status::Done,
            Stored::Failed => Status::Failed,
        }
    }

    /// Not terminal yet: the deadline still applies (`unfinished` in Lua is generated from it).
    pub(super) fn unfinished(self) -> bool {
        matches!(self, Stored::Queued | Stored::Running | Stored::Retrying)
    }
}

/// Any text as a Lua string literal: bytes other than letters, digits and `:_-.` escaped.
fn lua_string(text: &str) -> String {
    let mut lua = String::from("'");
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b':' | b'_' | b'-' | b'.') {
            lua.push(char::from(byte));
        } else {
            let _ = write!(lua, "\\{byte:03}");
        }
    }
    lua.push('\'');
    lua
}

/// A code as a Lua literal.
trait LuaLiteral {
    fn lua(&self) -> String;
}

impl LuaLiteral for &str {
    fn lua(&self) -> String {
        // Codes are single letters: nothing to escape.
        format!("'{self}'")
    }
}

impl LuaLiteral for i64 {
    fn lua(&self) -> String {
        self.to_string()
    }
}

/// The longest record field value kept in the record's hash (`INLINE_MAX` in Lua): Redis's
/// default `hash-max-listpack-value`. A longer one would turn the whole hash into a hashtable
/// (~600 bytes more), so it goes to a string key of its own (see `common.lua`).
const INLINE_MAX: usize = 64;

/// The Lua text every script starts with: the shared codes, the consumer group's name, the key
/// prefix and `unfinished(s)`.
fn prelude(group: &str, prefix: &str, cluster: bool) -> String {
    let mut lua = String::from("-- Generated by scripts.rs from the tables shared with Rust.\n");
    Stored::lua_locals(&mut lua);
    Skipped::lua_locals(&mut lua);
    Group::lua_locals(&mut lua);
    Write::lua_locals(&mut lua);
    Admission::lua_locals(&mut lua);
    let _ = writeln!(lua, "local GROUP = {}", LuaLiteral::lua(&group));
    let _ = writeln!(lua, "local PREFIX = {}", lua_string(prefix));
    let _ = writeln!(lua, "local INLINE_MAX = {INLINE_MAX}");
    // On a cluster every key a script builds lies in the shard of its first key (the same hash
    // tag), and changes go out on sharded channels.
    let _ = writeln!(lua, "local CLUSTER = {cluster}");
    let _ = writeln!(
        lua,
        "local PUBLISH = {}",
        if cluster { "'SPUBLISH'" } else { "'PUBLISH'" }
    );
    let _ = writeln!(
        lua,
        "local function shard_key(kind, rest)\n  \
         if CLUSTER then\n    \
         return PREFIX .. ':' .. kind .. ':' .. string.match(KEYS[1], '{{[^}}]*}}') .. ':' .. rest\n  \
         end\n  \
         return PREFIX .. ':' .. kind .. ':' .. rest\nend"
    );
    let unfinished: Vec<String> = Stored::ALL
        .iter()
        .filter(|code| code.unfinished())
        .map(|code| format!("s == {}", code.lua_name()))
        .collect();
    let _ = writeln!(
        lua,
        "local function unfinished(s)\n  return {}\nend",
        unfinished.join(" or ")
    );
    lua
}

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
    pub(super) takeover: Script,
    pub(super) reap: Script,
    pub(super) group: Script,
    pub(super) cancel: Script,
    pub(super) sweep: Script,
}

impl Scripts {
    pub(super) fn new(group: &str, prefix: &str, cluster: bool) -> Self {
        let prelude = prelude(group, prefix, cluster);
        let plain = |body: &str| Script::new(&format!("{prelude}\n{body}"));
        // Record scripts also get the shared helpers.
        let record = |body: &str| Script::new(&format!("{prelude}\n{COMMON}\n{body}"));
        // Scripts that read queue entries get their field parser.
        let entries = |body: &str| Script::new(&format!("{prelude}\n{ENTRY}\n{body}"));
        Scripts {
            create: record(include_str!("lua/create.lua")),
            poll: record(include_str!("lua/poll.lua")),
            begin: record(include_str!("lua/begin.lua")),
            progress: record(include_str!("lua/progress.lua")),
            retrying: record(include_str!("lua/retrying.lua")),
            finish: record(include_str!("lua/finish.lua")),
            release: plain(include_str!("lua/release.lua")),
            claim: entries(include_str!("lua/claim.lua")),
            takeover: entries(include_str!("lua/takeover.lua")),
            reap: plain(include_str!("lua/reap.lua")),
            group: plain(include_str!("lua/group.lua")),
            cancel: record(include_str!("lua/cancel.lua")),
            sweep: entries(include_str!("lua/sweep.lua")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prelude_defines_every_code_once() {
        let lua = prelude("workers", "ae", false);
        for line in [
            "local QUEUED = 'q'",
            "local FAILED = 'f'",
            "local SKIP_GONE = 0",
            "local SKIP_POISONED = 2",
            "local GROUP_NO_STREAM = -1",
            "local APPLIED = 1",
            "local GROUP = 'workers'",
            "local PREFIX = 'ae'",
            "local OVER_TASK_LIMIT = 3",
            "return s == QUEUED or s == RUNNING or s == RETRYING",
        ] {
            assert_eq!(lua.matches(line).count(), 1, "{line} in\n{lua}");
        }
    }

    #[test]
    fn codes_and_names_are_distinct() {
        // A repeated code would decode as whichever variant comes first.
        fn distinct<T: PartialEq + std::fmt::Debug>(items: &[T]) {
            for (i, item) in items.iter().enumerate() {
                assert!(!items[..i].contains(item), "{item:?} twice");
            }
        }
        distinct(&Stored::ALL.iter().map(|c| c.code()).collect::<Vec<_>>());
        distinct(&Skipped::ALL.iter().map(|c| c.code()).collect::<Vec<_>>());
        distinct(&Group::ALL.iter().map(|c| c.code()).collect::<Vec<_>>());
        distinct(&Write::ALL.iter().map(|c| c.code()).collect::<Vec<_>>());
        distinct(&Admission::ALL.iter().map(|c| c.code()).collect::<Vec<_>>());
        let lua = prelude("workers", "ae", false);
        let names: Vec<&str> = lua
            .lines()
            .filter_map(|line| line.strip_prefix("local "))
            .filter_map(|line| line.split(" = ").next())
            .collect();
        distinct(&names);
    }

    #[test]
    fn scripts_use_names_the_prelude_defines() {
        // A name the prelude lacks would be a global, which Redis refuses at run time; catch a
        // typo here instead.
        let lua = prelude("workers", "ae", false);
        let bodies = [
            COMMON,
            ENTRY,
            include_str!("lua/create.lua"),
            include_str!("lua/poll.lua"),
            include_str!("lua/begin.lua"),
            include_str!("lua/progress.lua"),
            include_str!("lua/retrying.lua"),
            include_str!("lua/finish.lua"),
            include_str!("lua/release.lua"),
            include_str!("lua/claim.lua"),
            include_str!("lua/takeover.lua"),
            include_str!("lua/reap.lua"),
            include_str!("lua/group.lua"),
            include_str!("lua/cancel.lua"),
            include_str!("lua/sweep.lua"),
        ];
        for body in bodies {
            // Code only: no comments, no string literals (command names are upper case too).
            let code: String = body
                .lines()
                .map(|line| line.split("--").next().unwrap_or(""))
                .flat_map(|line| line.split('\'').step_by(2))
                .collect::<Vec<_>>()
                .join(" ");
            for word in code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let constant = word.len() > 1
                    && word.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    && !matches!(word, "KEYS" | "ARGV");
                if constant {
                    assert!(
                        lua.contains(&format!("local {word} = ")),
                        "{word} is not in the prelude"
                    );
                }
            }
        }
    }

    #[test]
    fn prefixes_become_safe_lua_strings() {
        assert_eq!(lua_string("my-app:v1"), "'my-app:v1'");
        assert_eq!(lua_string("a'b\\c"), "'a\\039b\\092c'");
    }

    #[test]
    fn replies_decode_through_the_tables() {
        let decode = |v: Value| redis::from_redis_value::<Stored>(v);
        assert_eq!(
            decode(Value::BulkString(b"y".to_vec())),
            Ok(Stored::Retrying)
        );
        assert!(decode(Value::BulkString(b"x".to_vec())).is_err());
        assert_eq!(
            redis::from_redis_value::<Skipped>(Value::Int(2)),
            Ok(Skipped::Poisoned)
        );
        assert!(redis::from_redis_value::<Skipped>(Value::Int(3)).is_err());
        assert_eq!(
            redis::from_redis_value::<Group>(Value::Int(-1)),
            Ok(Group::NoStream)
        );
    }
}
