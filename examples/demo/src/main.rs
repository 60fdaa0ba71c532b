//! The async-endpoint demo: `cargo run -p demo`, then open the URL it prints.
//!
//! - `cargo run -p demo`: page, endpoints and workers in one process, state in memory.
//! - `REDIS_URL=redis://127.0.0.1:6379/ SECRET="$(openssl rand -base64 32)" cargo run -p demo`:
//!   the same on Redis (every process sharing Redis needs the same `SECRET`).
//! - `… cargo run -p demo -- web` / `-- worker` (or `DEMO_ROLE`): web-only and worker-only
//!   processes on one Redis, to run several of each.
//!
//! `PORT` (default 3000; 0 picks a free one), `SECRET` (required with `REDIS_URL`; otherwise a
//! random key of this process), `TOKIO_WORKER_THREADS` (default 2).
//! Ctrl-C or SIGTERM shuts down gracefully.

use std::process::ExitCode;

use demo::{Role, Settings};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_endpoint=info".into()),
        )
        .init();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("demo: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.runtime_threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("demo: cannot start the Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain: "backend unavailable: … Connection refused" says what to fix.
            let mut message = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !message.contains(&cause_text) {
                    message.push_str(": ");
                    message.push_str(&cause_text);
                }
                source = cause.source();
            }
            eprintln!("demo: {message}");
            ExitCode::FAILURE
        }
    }
}

// The URL line is the demo's user interface (and what the tests read), so it goes to stdout.
#[allow(clippy::print_stdout)]
async fn run(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = demo::endpoint(&settings).await?;
    let backend = if settings.redis_url.is_some() {
        "Redis"
    } else if settings.database_url.is_some() {
        "PostgreSQL"
    } else {
        "in-memory"
    };
    if settings.role == Role::Worker {
        println!(
            "async-endpoint demo worker (pid {}, {backend} backend) running; Ctrl-C to stop",
            std::process::id()
        );
        endpoint.run_worker(shutdown_signal()).await;
        tracing::info!("worker stopped");
        return Ok(());
    }
    let app = demo::router(
        &endpoint,
        &settings,
        settings.runtime_threads,
        demo::load_jquery(),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", settings.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", settings.port))?;
    println!(
        "async-endpoint demo ({}, {backend} backend, pid {}) listening on http://{}/",
        settings.role.label(),
        std::process::id(),
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("HTTP server stopped");
    // Stops this process's workers (role `all`); a no-op for web-only processes.
    endpoint.shutdown().await;
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
