//! Why a message could not be answered, and the HTTP status each reason is answered with.

use std::time::Duration;

use http::StatusCode;

use crate::message::HandlerError;

/// Why a message could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    #[error("No matching services found for '{0}'")]
    UnknownStream(String),
    #[error("Service {0} not found")]
    UnknownService(String),
    /// A forwarded request named a service this node does not run (tables disagreed).
    #[error("service {0} is not on this node")]
    NotHere(String),
    /// A forwarded request named a service that this node's table does not give the key to,
    /// and the node checks (`--strict-ownership`); or, at the sender, the owners kept saying
    /// so until the deadline: the cluster's tables did not agree in time.
    #[error(
        "service {0} does not own this key in its node's table; the tables did not agree in time"
    )]
    NotOwner(String),
    #[error("owner {service_id} at {endpoint} is unreachable: {reason}")]
    Unreachable {
        service_id: String,
        endpoint: String,
        reason: String,
    },
    /// The connection to the owner failed after the request may have reached it; it was not
    /// sent again because the caller did not mark it idempotent.
    #[error(
        "owner {service_id} at {endpoint} failed after the request may have reached it ({reason}); \
         not resent, as it was not marked idempotent"
    )]
    Lost {
        service_id: String,
        endpoint: String,
        reason: String,
    },
    /// This node has as many requests in flight as it accepts.
    #[error("node is at its limit of {0} requests in flight; retry later")]
    Overloaded(usize),
    /// The node holds its bound of messages being delivered in the background (`?wait=false`).
    #[error("node is at its limit of {0} messages being delivered in the background; retry later")]
    Backlog(usize),
    #[error("no answer from service {service_id} within {after:?}")]
    Timeout { service_id: String, after: Duration },
    #[error("{0}")]
    Handler(#[from] HandlerError),
    #[error("the answer is not JSON: {0}")]
    BadAnswer(String),
}

impl RouteError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::UnknownStream(_) | RouteError::UnknownService(_) => StatusCode::NOT_FOUND,
            RouteError::NotHere(_) => StatusCode::MISDIRECTED_REQUEST,
            RouteError::Unreachable { .. } | RouteError::Lost { .. } | RouteError::BadAnswer(_) => {
                StatusCode::BAD_GATEWAY
            }
            RouteError::Overloaded(_) | RouteError::Backlog(_) | RouteError::NotOwner(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RouteError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            RouteError::Handler(e) => e.status,
        }
    }
}
