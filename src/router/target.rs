//! Requests addressed to one service by id (a forward's hop, `X-Service-ID`,
//! [`crate::SendOptions::service`], each service of a broadcast): asked once, wherever it runs,
//! also on a node that is leaving and still drains, so that a key's new owner can take its
//! state from there.

use std::sync::Arc;

use super::{finish_local, start_local, Owner, RouteError, RouteRequest, Routed, Router};
use crate::message::Payload;

impl Router {
    /// Runs `request` on the service `id`: here if it is local, else forwarded to its node
    /// (never again from a hop).
    pub(super) async fn route_to(
        &self,
        id: &str,
        request: RouteRequest<'_>,
        payload: Payload,
    ) -> Result<Routed, RouteError> {
        let RouteRequest { stream, key, .. } = request;
        let locals = self.inner.local.load();
        if let Some(local) = locals.get(id) {
            if request.ring != 0 && self.inner.config.strict_ownership {
                self.check_owner(stream, key, id, request.ring)?;
            }
            let service_id: Arc<str> = Arc::from(id);
            let previous = match request.extra.previous_owner {
                Some(told) if request.hop => Some(Arc::from(told)),
                _ => self.previous_owner_by_id(stream, key, id, request.hop),
            };
            let answer = start_local(
                service_id.clone(),
                local,
                key,
                request.extra,
                previous,
                payload,
            );
            drop(locals);
            return finish_local(service_id, answer, request.deadline).await;
        }
        drop(locals);
        if request.hop {
            return Err(RouteError::NotHere(id.to_owned()));
        }
        let table = self.inner.table.load();
        // A service of a node that is leaving is off the rings but still answers by id.
        let owner = table.service(id).or_else(|| table.draining(id)).map(|s| {
            (
                s.id.clone(),
                s.node_id.clone(),
                s.endpoint.clone(),
                s.fingerprint,
            )
        });
        drop(table);
        let Some((service_id, node_id, endpoint, fingerprint)) = owner else {
            return Err(self.not_in_table(id));
        };
        let to = Owner {
            endpoint: &endpoint,
            node_id: &node_id,
            fingerprint,
        };
        // What this node's tables of the window say, for the service's node (nothing while
        // none changed).
        let told = self.previous_owner_by_id(stream, key, &service_id, true);
        self.forward(to, service_id, request, &payload, told)
            .await
            .map_err(|failure| failure.error)
    }
}
