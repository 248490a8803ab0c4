//! Presence across nodes. Each node knows its own sessions ([`super::PresenceState`]); what
//! others see of a user is the merge of every node's part:
//!
//! - per platform, the highest status any node has (dnd > online > idle), `invisible` on
//!   any node hides the user everywhere;
//! - custom status and activity from the node where they were set last;
//! - a node in a user's reconnect grace keeps its part until the grace ends, so a user
//!   moving from one node to another does not flap offline → online.
//!
//! The parts live in Redis ([`redis::RedisRegistry`]): a hash per user (node → part), written
//! and read back atomically by the node whose part changed; that node publishes the merge
//! with a per-user version, and receivers drop a version older than one they delivered. Each
//! node renews a liveness key; when one dies its parts are removed by a surviving node, which
//! publishes the transitions. This file is the sans-IO half: parts, their bytes and the
//! merge.

pub mod redis;

use quaver_proto::codec::{decode, encode_payload};
use quaver_proto::{ClientStatus, Presence, PresenceStatus};

use super::rank;

/// One node's part of a user's presence: raw statuses (`invisible` kept, not yet hidden).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Per platform, the highest raw status of the node's sessions (offline: none).
    pub client_status: ClientStatus,
    /// Custom status text.
    pub custom_status: Option<String>,
    /// Activity.
    pub activity: Option<String>,
    /// When custom status and activity were set (ms since the epoch; 0 = never here).
    pub set_at_ms: u64,
}

impl Part {
    /// The bytes stored in the registry.
    pub fn encode(&self) -> Vec<u8> {
        let p = Presence {
            user_id: 0,
            status: PresenceStatus::Offline,
            client_status: self.client_status.clone(),
            custom_status: self.custom_status.clone(),
            activity: self.activity.clone(),
        };
        let mut out = self.set_at_ms.to_be_bytes().to_vec();
        out.extend_from_slice(&encode_payload(&p));
        out
    }

    /// Reads stored bytes; `None` when they are not a part (logged by the caller).
    pub fn decode(b: &[u8]) -> Option<Part> {
        let (at, rest) = b.split_first_chunk::<8>()?;
        let p: Presence = decode(rest).ok()?;
        Some(Part {
            client_status: p.client_status,
            custom_status: p.custom_status,
            activity: p.activity,
            set_at_ms: u64::from_be_bytes(*at),
        })
    }

    /// Whether the part shows nothing (no session, or only offline ones).
    pub fn is_empty(&self) -> bool {
        let c = &self.client_status;
        [c.desktop, c.mobile, c.web]
            .iter()
            .all(|s| *s == PresenceStatus::Offline)
    }
}

/// `user` as others see them with nothing to show.
pub fn offline(user: u64) -> Presence {
    Presence {
        user_id: user,
        status: PresenceStatus::Offline,
        client_status: ClientStatus {
            desktop: PresenceStatus::Offline,
            mobile: PresenceStatus::Offline,
            web: PresenceStatus::Offline,
        },
        custom_status: None,
        activity: None,
    }
}

fn max(a: PresenceStatus, b: PresenceStatus) -> PresenceStatus {
    if rank(b) > rank(a) { b } else { a }
}

/// What others see of `user`, from every node's part.
pub fn merge<'a>(user: u64, parts: impl IntoIterator<Item = &'a Part>) -> Presence {
    let mut cs = ClientStatus {
        desktop: PresenceStatus::Offline,
        mobile: PresenceStatus::Offline,
        web: PresenceStatus::Offline,
    };
    let mut latest: Option<&Part> = None;
    for p in parts {
        cs.desktop = max(cs.desktop, p.client_status.desktop);
        cs.mobile = max(cs.mobile, p.client_status.mobile);
        cs.web = max(cs.web, p.client_status.web);
        if !p.is_empty() && latest.is_none_or(|l| p.set_at_ms > l.set_at_ms) {
            latest = Some(p);
        }
    }
    let status = max(max(cs.desktop, cs.mobile), cs.web);
    if matches!(status, PresenceStatus::Invisible | PresenceStatus::Offline) {
        return offline(user);
    }
    Presence {
        user_id: user,
        status,
        client_status: cs,
        custom_status: latest.and_then(|p| p.custom_status.clone()),
        activity: latest.and_then(|p| p.activity.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PresenceStatus::*;

    fn part(desktop: PresenceStatus, mobile: PresenceStatus, custom: Option<&str>, at: u64) -> Part {
        Part {
            client_status: ClientStatus {
                desktop,
                mobile,
                web: Offline,
            },
            custom_status: custom.map(str::to_string),
            activity: None,
            set_at_ms: at,
        }
    }

    #[test]
    fn parts_round_trip_and_garbage_is_refused() {
        let p = part(Dnd, Invisible, Some("focus"), 42);
        assert_eq!(Part::decode(&p.encode()), Some(p));
        assert_eq!(Part::decode(b"short"), None);
        assert_eq!(Part::decode(&[0u8; 9]), None);
    }

    #[test]
    fn devices_on_two_nodes_merge_per_platform() {
        let a = part(Online, Offline, None, 0);
        let b = part(Offline, Idle, Some("on the train"), 5);
        let m = merge(7, [&a, &b]);
        assert_eq!(m.status, Online);
        assert_eq!((m.client_status.desktop, m.client_status.mobile), (Online, Idle));
        assert_eq!(m.custom_status.as_deref(), Some("on the train"));
        // The last set custom status wins, wherever it was set.
        let a2 = part(Dnd, Offline, Some("focus"), 9);
        let m = merge(7, [&a2, &b]);
        assert_eq!((m.status, m.custom_status.as_deref()), (Dnd, Some("focus")));
    }

    #[test]
    fn invisible_anywhere_hides_the_user_everywhere() {
        let a = part(Online, Offline, Some("x"), 1);
        let b = part(Offline, Invisible, None, 0);
        let m = merge(7, [&a, &b]);
        assert_eq!(m.status, Offline);
        assert_eq!(m.client_status.desktop, Offline, "nothing leaks");
        assert_eq!(m.custom_status, None);
    }

    #[test]
    fn no_parts_is_offline() {
        assert_eq!(merge(7, []).status, Offline);
        assert!(part(Offline, Offline, Some("x"), 3).is_empty());
    }
}
