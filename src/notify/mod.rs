//! Who gets notified of what — a pure decision, tested on its own. The chat layer gathers
//! the candidates (mentioned users, role holders, viewers for `@everyone`, the replied-to
//! author, DM recipients, a reacted message's author) and the facts (who can view the
//! channel, who blocked the actor, who muted the guild or channel); this module applies the
//! rules: never for your own actions, never from someone you blocked, never for a channel
//! you cannot view, never for something you muted, and one notification per person per
//! event (the most specific kind wins).

use std::collections::{HashMap, HashSet};

use quaver_proto::NotificationKind;

fn precedence(k: NotificationKind) -> u8 {
    match k {
        NotificationKind::Mention => 5,
        NotificationKind::Reply => 4,
        NotificationKind::DirectMessage => 3,
        NotificationKind::Reaction => 2,
        NotificationKind::FriendRequest | NotificationKind::FriendAccepted => 1,
    }
}

/// The facts the rules need.
#[derive(Debug, Default)]
pub struct Facts {
    /// Users who blocked the actor.
    pub blocked_actor: HashSet<u64>,
    /// Users who muted the guild or channel.
    pub muted: HashSet<u64>,
}

/// Filters and deduplicates candidates; `can_view(user)` says whether the user can see the
/// channel the event happened in (always true for events outside channels).
pub fn recipients(
    actor: u64,
    candidates: impl IntoIterator<Item = (u64, NotificationKind)>,
    can_view: impl Fn(u64) -> bool,
    facts: &Facts,
) -> Vec<(u64, NotificationKind)> {
    let mut best: HashMap<u64, NotificationKind> = HashMap::new();
    for (user, kind) in candidates {
        if user == actor || facts.blocked_actor.contains(&user) || facts.muted.contains(&user) {
            continue;
        }
        best.entry(user)
            .and_modify(|k| {
                if precedence(kind) > precedence(*k) {
                    *k = kind;
                }
            })
            .or_insert(kind);
    }
    let mut out: Vec<(u64, NotificationKind)> = best.into_iter().filter(|(u, _)| can_view(*u)).collect();
    out.sort_unstable_by_key(|(u, _)| *u);
    out
}

/// The first characters of a message, for the notification preview.
pub fn preview(content: &str) -> String {
    const MAX: usize = 100;
    let mut s: String = content.chars().take(MAX).collect();
    if content.chars().count() > MAX {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use NotificationKind::*;

    #[test]
    fn own_blocked_muted_and_invisible_are_dropped() {
        let facts = Facts {
            blocked_actor: [3].into(),
            muted: [4].into(),
        };
        let got = recipients(
            1,
            [(1, Mention), (2, Mention), (3, Mention), (4, Mention), (5, Mention)],
            |u| u != 5,
            &facts,
        );
        assert_eq!(got, vec![(2, Mention)]);
    }

    #[test]
    fn one_per_person_most_specific_kind() {
        let got = recipients(
            1,
            [(2, Reply), (2, Mention), (3, DirectMessage), (3, Reply), (4, Reaction)],
            |_| true,
            &Facts::default(),
        );
        assert_eq!(got, vec![(2, Mention), (3, Reply), (4, Reaction)]);
    }

    #[test]
    fn previews_are_bounded() {
        assert_eq!(preview("hi"), "hi");
        let long = "é".repeat(150);
        assert_eq!(preview(&long).chars().count(), 101);
    }
}
