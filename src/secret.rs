//! Secret values: a token or credential is a `SecretString` from the moment it is read, exposed only where it is
//! put on the wire (an HTTP header, a sink record, the journal). Where a secret comes from is a
//! `policy::SecretRef`.

pub use secrecy::{ExposeSecret, SecretString};

use std::sync::{Arc, RwLock};

/// A credential shared by whoever calls with it, replaced in place when the daemon rotates it (an issuer's own
/// token, also borrowed by a `tfe-variable` sink). `Debug` shows no value.
#[derive(Clone)]
pub struct LiveSecret(Arc<RwLock<SecretString>>);

impl LiveSecret {
    pub fn new(value: SecretString) -> Self {
        LiveSecret(Arc::new(RwLock::new(value)))
    }

    pub fn get(&self) -> SecretString {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is(&self, value: &SecretString) -> bool {
        self.get().expose_secret() == value.expose_secret()
    }

    pub fn set(&self, value: SecretString) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

impl std::fmt::Debug for LiveSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveSecret(..)")
    }
}
