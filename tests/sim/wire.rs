//! The daemon's wire to the token services in the simulation: every request goes to the in-memory emulator through
//! the seeded fault schedule (a proxy answering 503 or 429, a request lost before or after the service acted, an
//! answer cut off, a refused probe, latency), and what crosses it is noted for the invariants.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use serde_json::{json, Value};
use token_rotator::issuer::api::{Exchange, WireError, WireRequest, WireResponse};

use crate::faults::WireFault;
use crate::world::{hash_in, world_now, Service, World};

pub struct SimWire {
    pub world: Arc<World>,
    pub service: Service,
}

/// Holds a policy token's create "in flight" while alive (dropped on every path, a crash included).
struct InFlight {
    world: Arc<World>,
    token: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self
            .world
            .lock()
            .facts
            .creates_in_flight
            .get_mut(&self.token)
        {
            *n -= 1;
        }
    }
}

/// The client's request timeout (http.rs): a lost request fails after it.
const TIMEOUT: Duration = Duration::from_secs(30);

fn bearer(req: &WireRequest) -> Option<String> {
    let v = req.headers.get("authorization")?.to_str().ok()?;
    v.split_once(' ').map(|(_, t)| t.to_string())
}

impl SimWire {
    /// The policy token a create is for, from its path (and label, where several tokens share a resource).
    fn create_scope(&self, req: &WireRequest, body: &Value) -> Option<String> {
        let path = req.url.path();
        match self.service {
            Service::Pulumi => {
                if path.starts_with("/api/orgs/pacme/teams/") {
                    Some("pulumi-team".into())
                } else if path.starts_with("/api/orgs/") {
                    Some("pulumi".into())
                } else if path == "/api/user/tokens" {
                    Some("pulumi-personal".into())
                } else {
                    None
                }
            }
            Service::Tfc => {
                if path.starts_with("/api/v2/organizations/") {
                    return Some("org".into());
                }
                let segment = path.split('/').nth(4)?;
                let scoped = self.world.tfc_scopes.get(segment)?;
                if scoped == "team" {
                    let label = body
                        .pointer("/data/attributes/description")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let owner = self
                        .world
                        .policy
                        .tokens
                        .values()
                        .find(|t| label.starts_with(&format!("{} ", t.label)))?;
                    return Some(owner.name.to_string());
                }
                Some(scoped.clone())
            }
        }
    }

    fn is_probe(&self, req: &WireRequest) -> bool {
        let path = req.url.path();
        req.method == reqwest::Method::GET
            && (path == "/api/v2/account/details" || path == "/api/user")
    }

    /// The id a DELETE revokes.
    fn revoked_id(&self, req: &WireRequest) -> Option<String> {
        (req.method == reqwest::Method::DELETE)
            .then(|| req.url.path().rsplit('/').next().map(str::to_string))
            .flatten()
    }

    /// An answer from something in front of the service; its error body quotes the bearer (redaction is tested).
    fn synthetic(&self, status: u16, req: &WireRequest) -> WireResponse {
        let who = bearer(req).unwrap_or_default();
        let mut headers = reqwest::header::HeaderMap::new();
        let body = match self.service {
            Service::Tfc => {
                if status == 429 {
                    headers.insert("x-ratelimit-reset", "0.8".parse().unwrap());
                }
                json!({"errors": [{"status": status.to_string(), "title": "proxy", "detail": format!("request with token {who} failed")}]})
            }
            Service::Pulumi => {
                if status == 429 {
                    headers.insert("retry-after", "1".parse().unwrap());
                }
                json!({"code": status, "message": format!("request with token {who} failed")})
            }
        };
        WireResponse {
            status,
            headers,
            body: Ok(serde_json::to_vec(&body).unwrap()),
        }
    }

    /// The id and value in a create's answer.
    fn created<'b>(&self, body: &'b Value) -> (Option<&'b str>, Option<&'b str>) {
        match self.service {
            Service::Tfc => (
                body.pointer("/data/id").and_then(Value::as_str),
                body.pointer("/data/attributes/token")
                    .and_then(Value::as_str),
            ),
            Service::Pulumi => (
                body.get("id").and_then(Value::as_str),
                body.get("tokenValue").and_then(Value::as_str),
            ),
        }
    }

    /// Notes what the service answered: which policy token a created id belongs to, and the values in it.
    fn note_answer(&self, req: &WireRequest, scope: Option<&str>, status: u16, body: &Value) {
        let mut inner = self.world.lock();
        hash_in(
            &mut inner.facts.trace,
            &format!("{} {} {status}", req.method, req.url.path()),
        );
        inner.facts.requests += 1;
        if let (Some(scope), true) = (scope, (200..300).contains(&status)) {
            let (id, value) = self.created(body);
            if let (Some(id), Some(value)) = (id, value) {
                inner.facts.created_for.insert(id.into(), scope.into());
                inner
                    .facts
                    .created_order
                    .push((id.to_string(), scope.to_string()));
                inner.facts.secrets.insert(value.into());
                hash_in(&mut inner.facts.trace, id);
            }
        }
    }

    fn note_delivered(&self, req: &WireRequest, scope: Option<&str>, status: u16, body: &Value) {
        if !(200..300).contains(&status) {
            return;
        }
        let mut inner = self.world.lock();
        if let Some(scope) = scope {
            let (id, value) = self.created(body);
            if let (Some(id), Some(value)) = (id, value) {
                inner
                    .facts
                    .delivered
                    .insert(value.into(), (scope.into(), id.into(), world_now()));
            }
        }
        if self.is_probe(req) {
            if let Some(b) = bearer(req) {
                inner.facts.verified.insert(b);
            }
        }
    }
}

#[async_trait]
impl Exchange for SimWire {
    async fn exchange(&self, req: WireRequest) -> Result<WireResponse, WireError> {
        let world = &self.world;
        let sent_at = world_now();
        let body_json: Value = req
            .body
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        let scope = (req.method == reqwest::Method::POST)
            .then(|| self.create_scope(&req, &body_json))
            .flatten();
        let (fault, latency) = {
            let mut inner = world.lock();
            let fault = inner.faults.wire(self.is_probe(&req));
            (fault, inner.faults.latency(5, 200))
        };
        // At most one create in flight per policy token.
        let _in_flight = scope.as_ref().map(|t| {
            let n = {
                let mut inner = world.lock();
                let n = inner.facts.creates_in_flight.entry(t.clone()).or_default();
                *n += 1;
                *n
            };
            if n > 1 {
                world.violate(format!("{n} creates in flight for {t}"));
            }
            InFlight {
                world: world.clone(),
                token: t.clone(),
            }
        });
        // SPEC §5.4: after a 429 nothing goes out with that credential before the reset has passed.
        if let Some(b) = bearer(&req) {
            let until = world.lock().facts.blocked_until.get(&b).copied();
            if until.is_some_and(|u| world_now() < u) {
                world.violate(format!(
                    "{} {} sent before the 429 reset had passed",
                    req.method,
                    req.url.path()
                ));
            }
        }
        if let Some(t) = &scope {
            // SPEC §5.10: after a create whose outcome the daemon could not know, the next one for this token
            // comes only after the attempt backoff (30 s), unless someone asked (`rotate`, a reload re-adding it).
            let now = world_now();
            let (ambiguous, nudged, restarted) = {
                let inner = world.lock();
                let a = inner.facts.ambiguous_at.get(t).copied();
                (
                    a,
                    inner.facts.nudged_at.get(t).copied(),
                    // A restart is a new process: its first attempt is the next one.
                    a.is_some_and(|a| inner.facts.crashes.iter().any(|c| *c >= a)),
                )
            };
            if let Some(a) = ambiguous {
                // A `rotate` that arrived while an earlier visit was still running is served right after it.
                let asked =
                    restarted || nudged.is_some_and(|n| n + chrono::TimeDelta::seconds(60) >= a);
                if now - a < chrono::TimeDelta::seconds(25) && !asked {
                    world.violate(format!(
                        "a create for {t} was sent {:.1} s after one whose outcome was unknown",
                        (now - a).as_seconds_f64()
                    ));
                }
            }
            let back = world.lock().faults.reload_during_create();
            if let Some(back_after) = back {
                world.reload_without(t, back_after);
            }
        }
        tokio::time::sleep(latency).await;
        let ambiguous = matches!(
            fault,
            WireFault::Unavailable
                | WireFault::LostBefore
                | WireFault::LostAfter { .. }
                | WireFault::CutAfter
                | WireFault::CommitThen503
        );
        if let (Some(t), true) = (&scope, ambiguous) {
            // From when the request left: an operator's nudge during it counts as asking for a new attempt.
            world.lock().facts.ambiguous_at.insert(t.clone(), sent_at);
        }
        match fault {
            WireFault::NotSent => {
                return Err(WireError {
                    sent: false,
                    refused_certificate: None,
                    message: "connection refused".into(),
                })
            }
            WireFault::Unavailable => return Ok(self.synthetic(503, &req)),
            WireFault::RateLimited => {
                if let Some(b) = bearer(&req) {
                    // The answer says 0.8 s (TFC) or 1 s (Pulumi); it left the proxy now.
                    let wait = match self.service {
                        Service::Tfc => chrono::TimeDelta::milliseconds(800),
                        Service::Pulumi => chrono::TimeDelta::seconds(1),
                    };
                    world
                        .lock()
                        .facts
                        .blocked_until
                        .insert(b, world_now() + wait);
                }
                return Ok(self.synthetic(429, &req));
            }
            WireFault::RefuseProbe => return Ok(self.synthetic(401, &req)),
            WireFault::LostBefore => {
                tokio::time::sleep(TIMEOUT).await;
                return Err(WireError {
                    sent: true,
                    refused_certificate: None,
                    message: "timed out".into(),
                });
            }
            WireFault::Slow => {
                let extra = world.lock().faults.latency(1_000, 10_000);
                tokio::time::sleep(extra).await;
            }
            _ => {}
        }
        if let Some(id) = self.revoked_id(&req) {
            world.check_revoke(&id);
        }
        let mut request = axum::http::Request::builder()
            .method(req.method.clone())
            .uri(req.url.as_str());
        for (k, v) in &req.headers {
            request = request.header(k, v);
        }
        let request = request
            .body(Body::from(req.body.clone().unwrap_or_default()))
            .expect("a valid request");
        let response = match self.service {
            Service::Tfc => world.tfc.dispatch(request).await,
            Service::Pulumi => world.pulumi.dispatch(request).await,
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        self.note_answer(&req, scope.as_deref(), status, &answer);
        match fault {
            WireFault::LostAfter { timeout } => {
                if timeout {
                    tokio::time::sleep(TIMEOUT).await;
                }
                return Err(WireError {
                    sent: true,
                    refused_certificate: None,
                    message: "connection reset".into(),
                });
            }
            WireFault::CutAfter => {
                return Ok(WireResponse {
                    status,
                    headers,
                    body: Err("unexpected end of body".into()),
                })
            }
            WireFault::CommitThen503 => return Ok(self.synthetic(503, &req)),
            _ => {}
        }
        self.note_delivered(&req, scope.as_deref(), status, &answer);
        if self.is_probe(&req) && status == 200 {
            for name in world.policy.tokens.keys() {
                world.note_complete(name);
            }
        }
        world.check_step();
        Ok(WireResponse {
            status,
            headers,
            body: Ok(bytes),
        })
    }
}
