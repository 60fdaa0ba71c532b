//! Logging for the helper processes of the multi-process tests: async-endpoint's errors always
//! reach the test's output (a 500's cause is logged, never sent), so a failure in CI shows it;
//! everything with `AE_LOG` set.

/// Installs the helper process's subscriber (once; later calls do nothing).
pub(crate) fn init() {
    let filter = if std::env::var("AE_LOG").is_ok() {
        "async_endpoint=debug"
    } else {
        "async_endpoint=error"
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
