//! Which local users need which topics, sans-IO. A user is local while this node holds a
//! session of theirs (attached or awaiting a resume); while local, they follow their own
//! user topic, a topic per guild they are in and per DM they are part of. The node is
//! subscribed to a topic exactly while some local user follows it: every change reports the
//! topics the node must newly subscribe to or may drop.

use std::collections::{HashMap, HashSet};

use crate::cluster::pubsub::Topic;

#[derive(Debug, Default)]
struct LocalUser {
    sessions: usize,
    topics: HashSet<Topic>,
}

/// A topic's local followers: asked about for each of a channel's viewers (ten thousand per
/// message in a large guild), so hashed fast (ids the server or its backend assigns; the
/// hasher is seeded per process).
type Followers = HashSet<u64, foldhash::fast::RandomState>;

/// The topic index of one node.
#[derive(Debug, Default)]
pub struct TopicIndex {
    users: HashMap<u64, LocalUser>,
    topics: HashMap<Topic, Followers>,
}

/// What the node's bus subscriptions must change by.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Topics now needed (subscribe).
    pub subscribe: Vec<Topic>,
    /// Topics no longer needed (unsubscribe).
    pub unsubscribe: Vec<Topic>,
}

impl TopicIndex {
    /// A session of `user` opened; on their first, they follow `topics` (their user topic
    /// is always among them).
    pub fn open(&mut self, user: u64, topics: impl IntoIterator<Item = Topic>) -> Change {
        let u = self.users.entry(user).or_default();
        u.sessions += 1;
        let mut change = Change::default();
        if u.sessions == 1 {
            for t in topics.into_iter().chain([Topic::user(user)]) {
                self.follow_inner(user, t, &mut change);
            }
        }
        change
    }

    /// A session of `user` ended; after their last, they follow nothing here.
    pub fn close(&mut self, user: u64) -> Change {
        let mut change = Change::default();
        let Some(u) = self.users.get_mut(&user) else {
            return change;
        };
        u.sessions = u.sessions.saturating_sub(1);
        if u.sessions > 0 {
            return change;
        }
        let topics: Vec<Topic> = self
            .users
            .remove(&user)
            .map(|u| u.topics.into_iter().collect())
            .unwrap_or_default();
        for t in topics {
            self.drop_follower(user, &t, &mut change);
        }
        change
    }

    /// `user` now follows `topic` (joined a guild, a DM) — if they are local; idempotent.
    pub fn follow(&mut self, user: u64, topic: Topic) -> Change {
        let mut change = Change::default();
        if self.users.contains_key(&user) {
            self.follow_inner(user, topic, &mut change);
        }
        change
    }

    /// `user` no longer follows `topic` (left or was removed); idempotent.
    pub fn unfollow(&mut self, user: u64, topic: &Topic) -> Change {
        let mut change = Change::default();
        let removed = self.users.get_mut(&user).is_some_and(|u| u.topics.remove(topic));
        if removed {
            self.drop_follower(user, topic, &mut change);
        }
        change
    }

    fn follow_inner(&mut self, user: u64, topic: Topic, change: &mut Change) {
        let Some(u) = self.users.get_mut(&user) else { return };
        if !u.topics.insert(topic.clone()) {
            return;
        }
        let followers = self.topics.entry(topic.clone()).or_default();
        if followers.is_empty() {
            change.subscribe.push(topic);
        }
        followers.insert(user);
    }

    fn drop_follower(&mut self, user: u64, topic: &Topic, change: &mut Change) {
        if let Some(f) = self.topics.get_mut(topic) {
            f.remove(&user);
            if f.is_empty() {
                self.topics.remove(topic);
                change.unsubscribe.push(topic.clone());
            }
        }
    }

    /// The local users following `topic`.
    pub fn followers(&self, topic: &Topic) -> impl Iterator<Item = u64> + '_ {
        self.topics.get(topic).into_iter().flatten().copied()
    }

    /// How many local users follow `topic`.
    pub fn follower_count(&self, topic: &Topic) -> usize {
        self.topics.get(topic).map_or(0, |f| f.len())
    }

    /// Whether a local user follows `topic`, for many users (the topic looked up once).
    pub fn following(&self, topic: &Topic) -> impl Fn(u64) -> bool + '_ {
        let followers = self.topics.get(topic);
        move |user| followers.is_some_and(|f| f.contains(&user))
    }

    /// Whether the node is subscribed to `topic`.
    pub fn subscribed(&self, topic: &Topic) -> bool {
        self.topics.contains_key(topic)
    }

    /// Whether `user` has a session here.
    pub fn is_local(&self, user: u64) -> bool {
        self.users.contains_key(&user)
    }

    /// The topics the node is subscribed to.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> + '_ {
        self.topics.keys()
    }

    /// Topics the node is subscribed to.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_subscribes_while_any_local_user_follows() {
        let mut ix = TopicIndex::default();
        let g = Topic::guild(9);
        let c = ix.open(1, [g.clone()]);
        assert_eq!(c.subscribe, vec![g.clone(), Topic::user(1)]);
        // A second session of the same user changes nothing.
        assert_eq!(ix.open(1, [g.clone()]), Change::default());
        // Another user in the same guild: only their own topic is new.
        assert_eq!(ix.open(2, [g.clone()]).subscribe, vec![Topic::user(2)]);
        assert_eq!(ix.followers(&g).count(), 2);
        {
            let follows = ix.following(&g);
            assert!(follows(1) && follows(2) && !follows(3));
        }
        assert!(!ix.following(&Topic::guild(10))(1), "a topic nobody here follows");
        // User 1's first session ends: still local.
        assert_eq!(ix.close(1), Change::default());
        // Their last: only their own topic goes; the guild is still needed by user 2.
        assert_eq!(ix.close(1).unsubscribe, vec![Topic::user(1)]);
        assert!(ix.subscribed(&g));
        let c = ix.close(2);
        assert_eq!(c.unsubscribe.len(), 2);
        assert_eq!(ix.topic_count(), 0);
        assert_eq!(ix.close(2), Change::default(), "extra closes are ignored");
    }

    #[test]
    fn follows_apply_to_local_users_only_and_are_idempotent() {
        let mut ix = TopicIndex::default();
        let g = Topic::guild(5);
        assert_eq!(ix.follow(7, g.clone()), Change::default(), "user 7 has no session here");
        ix.open(7, []);
        assert_eq!(ix.follow(7, g.clone()).subscribe, vec![g.clone()]);
        assert_eq!(ix.follow(7, g.clone()), Change::default());
        assert_eq!(ix.unfollow(7, &g).unsubscribe, vec![g.clone()]);
        assert_eq!(ix.unfollow(7, &g), Change::default());
        assert!(ix.is_local(7));
    }
}
