//! The Consul stand-in (to come).
