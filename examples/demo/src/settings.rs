//! The demo's settings, read from the environment and the command line.

/// Worker threads of the demo's Tokio runtime unless `TOKIO_WORKER_THREADS` says otherwise. Fixed
/// (rather than one per core) so the blocking example behaves the same on every machine.
const DEFAULT_RUNTIME_THREADS: usize = 2;

/// What this process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves the page and the endpoints, and runs workers in the same process (the default).
    All,
    /// Serves the page and the endpoints only; jobs run in `worker` processes (needs Redis).
    Web,
    /// Runs jobs only, no HTTP (needs Redis).
    Worker,
}

impl Role {
    /// How the page names the role.
    pub fn label(self) -> &'static str {
        match self {
            Role::All => "web + workers",
            Role::Web => "web",
            Role::Worker => "worker",
        }
    }
}

/// The demo's settings.
#[derive(Clone)]
pub struct Settings {
    /// `DEMO_ROLE`, or the first argument (`all`, `web`, `worker`); default `all`.
    pub role: Role,
    /// `PORT`; default 3000, `0` picks a free port. The demo binds 127.0.0.1 only.
    pub port: u16,
    /// `REDIS_URL`: use the Redis backend instead of the in-memory one.
    pub redis_url: Option<String>,
    /// `DATABASE_URL`: use the PostgreSQL backend instead of the in-memory one (not with
    /// `REDIS_URL`).
    pub database_url: Option<String>,
    /// `SECRET`: the token key, at least 32 bytes, the same in every process. Required with
    /// `REDIS_URL`; without it the in-memory demo signs with a random key of its own.
    pub secret: Option<String>,
    /// `TOKIO_WORKER_THREADS`; default 2.
    pub runtime_threads: usize,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret and the Redis URL (which may hold a password) stay out of logs.
        f.debug_struct("Settings")
            .field("role", &self.role)
            .field("port", &self.port)
            .field("redis", &self.redis_url.is_some())
            .field("postgres", &self.database_url.is_some())
            .field("runtime_threads", &self.runtime_threads)
            .finish_non_exhaustive()
    }
}

/// A setting the demo cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(String);

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

impl Settings {
    /// Reads the process's environment and arguments.
    pub fn from_env() -> Result<Settings, SettingsError> {
        Settings::parse(|name| std::env::var(name).ok(), std::env::args().skip(1))
    }

    /// Reads settings through `var` (an environment lookup) and `args` (without the program name).
    pub fn parse(
        var: impl Fn(&str) -> Option<String>,
        args: impl IntoIterator<Item = String>,
    ) -> Result<Settings, SettingsError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let mut args = args.into_iter();
        let role_name = match args.next() {
            Some(arg) => Some(arg),
            None => var("DEMO_ROLE"),
        };
        if let Some(extra) = args.next() {
            return Err(SettingsError(format!(
                "unexpected argument `{extra}` (usage: demo [all|web|worker])"
            )));
        }
        let role = match role_name.as_deref().map(str::trim) {
            None | Some("all") => Role::All,
            Some("web") => Role::Web,
            Some("worker") => Role::Worker,
            Some(other) => {
                return Err(SettingsError(format!(
                    "unknown role `{other}`: expected `all` (the default), `web` or `worker`"
                )));
            }
        };
        let port = match var("PORT") {
            None => 3000,
            Some(p) => p.trim().parse().map_err(|_| {
                SettingsError(format!("PORT must be a port number (0–65535), not `{p}`"))
            })?,
        };
        let runtime_threads = match var("TOKIO_WORKER_THREADS") {
            None => DEFAULT_RUNTIME_THREADS,
            Some(n) => n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                SettingsError(format!(
                    "TOKIO_WORKER_THREADS must be a positive number, not `{n}`"
                ))
            })?,
        };
        let redis_url = var("REDIS_URL");
        let database_url = var("DATABASE_URL");
        if redis_url.is_some() && database_url.is_some() {
            return Err(SettingsError(
                "set REDIS_URL or DATABASE_URL, not both: the demo uses one shared backend"
                    .to_owned(),
            ));
        }
        if role != Role::All && redis_url.is_none() && database_url.is_none() {
            return Err(SettingsError(format!(
                "the `{}` role needs REDIS_URL or DATABASE_URL: with the in-memory backend, jobs and requests \
                 live in one process, so it must run both web and workers (the default role)",
                role.label()
            )));
        }
        let secret = var("SECRET");
        if database_url.is_some() && secret.is_none() {
            return Err(SettingsError(
                "DATABASE_URL needs SECRET: every process sharing PostgreSQL must sign tokens \
                 with the same key of at least 32 bytes, e.g. \
                 `export SECRET=\"$(openssl rand -base64 32)\"`"
                    .to_owned(),
            ));
        }
        if redis_url.is_some() && secret.is_none() {
            return Err(SettingsError(
                "REDIS_URL needs SECRET: every process sharing Redis must sign tokens with the \
                 same key of at least 32 bytes, e.g. `export SECRET=\"$(openssl rand -base64 32)\"`"
                    .to_owned(),
            ));
        }
        Ok(Settings {
            role,
            port,
            redis_url,
            database_url,
            secret,
            runtime_threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)], args: &[&str]) -> Result<Settings, SettingsError> {
        Settings::parse(
            |name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            },
            args.iter().map(|a| (*a).to_owned()),
        )
    }

    #[test]
    fn defaults_are_the_embedded_demo_on_port_3000() {
        let s = parse(&[], &[]).expect("defaults are valid");
        assert_eq!(s.role, Role::All);
        assert_eq!(s.port, 3000);
        assert_eq!(s.redis_url, None);
        assert_eq!(s.runtime_threads, DEFAULT_RUNTIME_THREADS);
        // No secret in the code: the in-memory demo signs with a random key of its own.
        assert_eq!(s.secret, None);
    }

    #[test]
    fn roles_come_from_the_argument_or_demo_role() {
        let redis = ("REDIS_URL", "redis://127.0.0.1:6379/");
        let secret = ("SECRET", "a key of the test's own, 32 bytes or more");
        assert_eq!(
            parse(&[redis], &["worker"]).map(|s| s.role),
            Err(SettingsError(
                "REDIS_URL needs SECRET: every process sharing Redis must sign tokens with the \
                 same key of at least 32 bytes, e.g. `export SECRET=\"$(openssl rand -base64 32)\"`"
                    .to_owned()
            ))
        );
        assert_eq!(
            parse(&[redis, secret], &["worker"]).map(|s| s.role),
            Ok(Role::Worker)
        );
        assert_eq!(
            parse(&[redis, secret, ("DEMO_ROLE", "web")], &[]).map(|s| s.role),
            Ok(Role::Web)
        );
        assert_eq!(
            parse(&[redis, secret, ("DEMO_ROLE", "web")], &["all"]).map(|s| s.role),
            Ok(Role::All)
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let message = |r: Result<Settings, SettingsError>| r.expect_err("invalid").to_string();
        assert!(message(parse(&[], &["worker"])).contains("REDIS_URL"));
        let pg = ("DATABASE_URL", "postgres://demo@127.0.0.1/demo");
        assert!(message(parse(&[pg], &["worker"])).contains("DATABASE_URL needs SECRET"));
        let secret = ("SECRET", "a key of the test's own, 32 bytes or more");
        assert_eq!(
            parse(&[pg, secret], &["worker"]).map(|s| s.role),
            Ok(Role::Worker)
        );
        let redis = ("REDIS_URL", "redis://127.0.0.1:6379/");
        assert!(message(parse(&[pg, redis, secret], &[])).contains("not both"));
        assert!(message(parse(&[], &["web"])).contains("REDIS_URL"));
        assert!(message(parse(&[], &["cook"])).contains("unknown role"));
        assert!(message(parse(&[("PORT", "http")], &[])).contains("PORT"));
        assert!(message(parse(&[("TOKIO_WORKER_THREADS", "0")], &[])).contains("TOKIO"));
        assert!(message(parse(&[], &["web", "extra"])).contains("unexpected argument"));
    }

    #[test]
    fn port_zero_and_empty_values() {
        assert_eq!(parse(&[("PORT", "0")], &[]).map(|s| s.port), Ok(0));
        assert_eq!(parse(&[("PORT", "")], &[]).map(|s| s.port), Ok(3000));
    }
}
