//! The tower layer that hands the engine to the extractor.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::engine::Engine;

/// The engine as a request extension, found by the [`AsyncRequest`](crate::AsyncRequest)
/// extractor whatever the app's state type.
#[derive(Clone)]
pub(crate) struct EngineRef(pub(crate) Arc<Engine>);

/// Makes an [`AsyncEndpoint`](crate::AsyncEndpoint) available to handlers; from
/// [`AsyncEndpoint::layer`](crate::AsyncEndpoint::layer).
///
/// ```
/// # use async_endpoint::{AsyncEndpoint, AsyncTask, Failure, TaskContext};
/// # struct T;
/// # impl AsyncTask for T {
/// #     const NAME: &'static str = "t"; type Params = (); type Output = ();
/// #     async fn execute_task(&self, _: (), _: TaskContext) -> Result<(), Failure> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), async_endpoint::Error> {
/// let endpoint = AsyncEndpoint::builder().secret([7u8; 32]).task(T).build()?;
/// let app: axum::Router = axum::Router::new().layer(endpoint.layer());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncEndpointLayer {
    engine: Arc<Engine>,
}

impl AsyncEndpointLayer {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        AsyncEndpointLayer { engine }
    }
}

impl std::fmt::Debug for AsyncEndpointLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEndpointLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AsyncEndpointLayer {
    type Service = AsyncEndpointService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AsyncEndpointService {
            inner,
            engine: self.engine.clone(),
        }
    }
}

/// The service made by [`AsyncEndpointLayer`].
#[derive(Clone)]
pub struct AsyncEndpointService<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S> std::fmt::Debug for AsyncEndpointService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEndpointService")
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for AsyncEndpointService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request
            .extensions_mut()
            .insert(EngineRef(self.engine.clone()));
        self.inner.call(request)
    }
}
