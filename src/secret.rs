//! Secret values: a token or credential is a `SecretString` from the moment it is read, exposed only where it is
//! put on the wire (an HTTP header, a sink record, the journal). Where a secret comes from is a
//! `policy::SecretRef`.

pub use secrecy::{ExposeSecret, SecretString};
