//! The handler most tests serve: it echoes what it gets and names the service that ran it.

use meshage::{HandlerError, Header};
use serde_json::{json, Value};

/// An echo handler that also names the service that ran it: `{"echoed": data, "by": id}`.
pub async fn echo_by(data: Value, header: Header) -> Result<Value, HandlerError> {
    Ok(json!({ "echoed": data, "by": &*header.service_id, "key": &*header.partition_key }))
}
