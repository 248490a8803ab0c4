//! Store conformance suite: the same checks against SQLite (always) and PostgreSQL (when
//! `DATABASE_URL` is set; in CI it must be, and a missing server fails the run).

mod common;

use quaver::store::{NewMessage, Store, StoreError};
use quaver_proto::*;

const OWNER: u64 = 10;
const BOB: u64 = 11;
const EVE: u64 = 12;

/// Each backend under test, with a fresh database.
async fn backends() -> Vec<(&'static str, Store)> {
    let mut out = Vec::new();
    for (name, url) in backend_urls().await {
        out.push((name, Store::open(&url).await.unwrap()));
    }
    out
}

/// The URL of a fresh database on each backend under test.
async fn backend_urls() -> Vec<(&'static str, String)> {
    let dir = common::tempdir("store");
    let mut out = vec![("sqlite", format!("sqlite://{}/q.db?mode=rwc", dir.display()))];
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => out.push(("postgres", fresh_postgres(&url).await)),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!("DATABASE_URL must be set in CI"),
        _ => eprintln!("SKIPPED: PostgreSQL conformance (set DATABASE_URL to run it)"),
    }
    out
}

/// Creates a uniquely named database on the server of `url`; returns its URL.
async fn fresh_postgres(url: &str) -> String {
    use sqlx::Connection;
    // Tests run concurrently in one process: a counter (not the clock, whose resolution
    // let two tests pick one name) keeps their databases apart.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "quaver_t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut admin = sqlx::PgConnection::connect(url)
        .await
        .expect("PostgreSQL at DATABASE_URL answers");
    // Drop what earlier runs left behind (never this process's own databases).
    let mine = format!("quaver_t{}_", std::process::id());
    let stale: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'quaver_t%'")
        .fetch_all(&mut admin)
        .await
        .unwrap_or_default();
    for db in stale.into_iter().filter(|d| !d.starts_with(&mine)) {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    format!("{base}/{name}")
}

fn msg(id: u64, channel: u64, author: u64, nonce: u64, content: &str) -> NewMessage {
    NewMessage {
        id,
        channel_id: channel,
        author_id: author,
        nonce,
        content: content.into(),
        reply_to: None,
        mentions: Mentions::default(),
        now_ms: 1_000 + id,
    }
}

#[tokio::test]
async fn guilds_members_roles_invites() {
    for (name, s) in backends().await {
        s.upsert_user(OWNER, "owner", 1).await.unwrap();
        s.upsert_user(BOB, "bob", 1).await.unwrap();
        s.upsert_user(BOB, "bobby", 2).await.unwrap();
        let g = s.create_guild(100, 101, "g", OWNER, 0x3000, 5).await.unwrap();
        assert_eq!(g.owner_id, OWNER);
        let st = s.guild_state(100).await.unwrap();
        assert_eq!(st.roles.len(), 1, "{name}: @everyone");
        assert_eq!(st.roles[0].id, 100);
        assert_eq!(st.channels.len(), 1);
        assert_eq!(st.channels[0].name, "general");
        assert!(st.members.contains_key(&OWNER));

        let inv = s.create_invite("abc", 100, OWNER, 1, None, 5).await.unwrap();
        assert_eq!(inv.max_uses, 1);
        assert_eq!(s.use_invite("abc", BOB, 6).await.unwrap(), (100, false));
        assert!(
            matches!(s.use_invite("abc", EVE, 6).await, Err(StoreError::InvalidInvite)),
            "{name}: used up"
        );
        s.create_invite("old", 100, OWNER, 0, Some(10), 5).await.unwrap();
        assert!(
            matches!(s.use_invite("old", EVE, 11).await, Err(StoreError::InvalidInvite)),
            "{name}: expired"
        );
        assert!(matches!(
            s.use_invite("nope", EVE, 6).await,
            Err(StoreError::InvalidInvite)
        ));

        let role = s.create_role(200, 100, "mods", 0x2000).await.unwrap();
        assert_eq!(role.position, 1);
        s.set_member_role(100, BOB, 200, true).await.unwrap();
        assert!(
            matches!(s.set_member_role(100, EVE, 200, true).await, Err(StoreError::NotFound)),
            "{name}: not a member"
        );
        let members = s.members(100, 0, 100).await.unwrap();
        assert_eq!(
            members
                .iter()
                .map(|m| (m.user_id, m.name.as_str(), m.roles.clone()))
                .collect::<Vec<_>>(),
            vec![(OWNER, "owner", vec![]), (BOB, "bobby", vec![200])]
        );
        let r = s.update_role(100, 200, "moderators", 0x6000).await.unwrap();
        assert_eq!((r.name.as_str(), r.permissions), ("moderators", 0x6000));

        // Protocol 2: order, deletion, timeouts, avatars.
        s.create_role(201, 100, "low", 0).await.unwrap();
        s.create_role(202, 100, "lower", 0).await.unwrap();
        // lower 1, low 2, moderators 3 → lower to the top: low 1, moderators 2, lower 3.
        let moved = s.move_role(100, 202, 9).await.unwrap();
        assert_eq!(
            moved.iter().map(|r| (r.id, r.position)).collect::<Vec<_>>(),
            vec![(201, 1), (200, 2), (202, 3)],
            "{name}"
        );
        assert!(
            matches!(s.move_role(100, 100, 1).await, Err(StoreError::NotFound)),
            "{name}: @everyone"
        );
        s.set_member_role(100, BOB, 201, true).await.unwrap();
        s.set_overwrite(101, quaver_proto::OverwriteTarget::Role(201), Some((0, 1 << 10)))
            .await
            .unwrap();
        s.delete_role(100, 201).await.unwrap();
        assert!(
            matches!(s.delete_role(100, 201).await, Err(StoreError::NotFound)),
            "{name}"
        );
        assert!(
            matches!(s.delete_role(100, 100).await, Err(StoreError::NotFound)),
            "{name}: @everyone"
        );
        let st = s.guild_state(100).await.unwrap();
        assert_eq!(st.members[&BOB], vec![200], "{name}: the role left its members");
        assert!(st.channels[0].overwrites.is_empty(), "{name}: and its overwrites");
        let later = quaver::ids::now_ms() + 60_000;
        assert!(s.set_timeout(100, BOB, later, OWNER, "spam").await.unwrap());
        assert!(
            !s.set_timeout(100, EVE, later, OWNER, "").await.unwrap(),
            "{name}: not a member"
        );
        assert!(s.set_avatar(BOB, "https://a.example/b.png", 9).await.unwrap());
        assert!(
            !s.set_avatar(EVE, "https://a.example/e.png", 9).await.unwrap(),
            "{name}: unknown"
        );
        let bob = s.members(100, BOB - 1, 1).await.unwrap().remove(0);
        assert_eq!(
            (bob.avatar_url.as_str(), bob.timed_out_until_ms),
            ("https://a.example/b.png", later),
            "{name}"
        );
        assert_eq!(s.guild_state(100).await.unwrap().timeouts.get(&BOB), Some(&later));
        assert!(s.set_timeout(100, BOB, 0, OWNER, "").await.unwrap());
        assert_eq!(
            s.members(100, BOB - 1, 1).await.unwrap()[0].timed_out_until_ms,
            0,
            "{name}: lifted"
        );

        // Ban: removed, and cannot rejoin.
        assert!(s.remove_member(100, BOB, OWNER, Some("spam"), 7).await.unwrap());
        s.create_invite("again", 100, OWNER, 0, None, 5).await.unwrap();
        assert!(
            matches!(s.use_invite("again", BOB, 8).await, Err(StoreError::Banned)),
            "{name}"
        );
        assert_eq!(s.member_count(100).await.unwrap(), 1);
        assert_eq!(s.guild_ids_of(OWNER).await.unwrap(), vec![100]);
        s.rename_guild(100, "renamed").await.unwrap();
        assert_eq!(s.guild(100).await.unwrap().name, "renamed");
        s.delete_guild(100).await.unwrap();
        assert!(matches!(s.guild(100).await, Err(StoreError::NotFound)));
        assert!(s.guild_ids_of(OWNER).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn messages_are_sequenced_deduplicated_and_logged() {
    for (name, s) in backends().await {
        s.create_guild(100, 101, "g", OWNER, 0, 5).await.unwrap();
        let (m1, st1) = s.send_message(msg(1, 101, OWNER, 77, "hello")).await.unwrap();
        let st1 = st1.expect("new");
        assert_eq!((m1.seq, st1.seq), (1, 1));
        // Same nonce again: the original, nothing new.
        let (again, none) = s.send_message(msg(2, 101, OWNER, 77, "hello")).await.unwrap();
        assert!(none.is_none(), "{name}");
        assert_eq!(again.id, 1);
        // Another author may use the same nonce.
        let (m2, st2) = s.send_message(msg(3, 101, BOB, 77, "hi")).await.unwrap();
        assert_eq!((m2.seq, st2.unwrap().seq), (2, 2));
        // Reply in the same channel is fine; to an unknown message it is refused.
        let mut r = msg(4, 101, BOB, 78, "re");
        r.reply_to = Some(1);
        assert_eq!(s.send_message(r).await.unwrap().0.reply_to, Some(1));
        let mut bad = msg(5, 101, BOB, 79, "re");
        bad.reply_to = Some(999);
        assert!(matches!(s.send_message(bad).await, Err(StoreError::InvalidReply)));
        assert!(matches!(
            s.send_message(msg(6, 999, BOB, 80, "x")).await,
            Err(StoreError::NotFound)
        ));

        let e = s
            .edit_message(101, 1, "hello!", &Mentions::default(), 50)
            .await
            .unwrap();
        assert_eq!(e.seq, 4);
        let a = s.add_reaction(101, 1, BOB, "👍", 51).await.unwrap().unwrap();
        assert_eq!(a.seq, 5);
        assert!(
            s.add_reaction(101, 1, BOB, "👍", 52).await.unwrap().is_none(),
            "{name}: twice is a no-op"
        );
        s.add_reaction(101, 1, OWNER, "👍", 53).await.unwrap().unwrap();
        s.remove_reaction(101, 1, OWNER, "👍", 54).await.unwrap().unwrap();
        assert!(s.remove_reaction(101, 1, OWNER, "👍", 55).await.unwrap().is_none());
        let d = s.delete_message(101, 3, 56).await.unwrap();
        assert!(
            matches!(s.delete_message(101, 3, 57).await, Err(StoreError::NotFound)),
            "{name}: deleted twice"
        );
        // The failed second delete rolled back: its seq was not consumed.
        let log = s.events_after(101, 0, 100, 0).await.unwrap();
        let seqs: Vec<u64> = log.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=d.seq).collect::<Vec<_>>(), "{name}: gap-free log");
        assert_eq!(s.channel(101).await.unwrap().last_seq, d.seq);
        // Each log entry decodes to an event carrying its own seq.
        for (seq, body) in &log {
            let ev: EventBody = codec::decode(body).unwrap();
            assert_eq!(ev.channel_seq(), Some((101, *seq)));
        }
        let m = s.message(101, 1).await.unwrap();
        assert_eq!((m.content.as_str(), m.edited_at_ms), ("hello!", Some(50)));
        let (page, _, _) = s.history(101, HistoryAnchor::Latest, 10).await.unwrap();
        let first = page.iter().find(|m| m.id == 1).unwrap();
        assert_eq!(
            first.reactions,
            vec![Reaction {
                emoji: "👍".into(),
                count: 1
            }]
        );
        assert!(page.iter().find(|m| m.id == 3).unwrap().deleted);
    }
}

#[tokio::test]
async fn reaction_limit_is_enforced() {
    for (name, s) in backends().await {
        s.create_guild(100, 101, "g", OWNER, 0, 5).await.unwrap();
        s.send_message(msg(1, 101, OWNER, 1, "m")).await.unwrap();
        for k in 0..20 {
            s.add_reaction(101, 1, OWNER, &format!("e{k}"), 10)
                .await
                .unwrap()
                .unwrap();
        }
        assert!(
            matches!(
                s.add_reaction(101, 1, OWNER, "e20", 10).await,
                Err(StoreError::TooManyReactions)
            ),
            "{name}"
        );
        // An existing emoji can still gain users.
        s.add_reaction(101, 1, BOB, "e0", 10).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn history_pages_are_exact_and_gap_free() {
    for (name, s) in backends().await {
        s.create_guild(100, 101, "g", OWNER, 0, 5).await.unwrap();
        for k in 1..=25u64 {
            s.send_message(msg(1000 + k, 101, OWNER, k, &format!("m{k}")))
                .await
                .unwrap();
        }
        let seqs = |v: &[Message]| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        let (p, before, after) = s.history(101, HistoryAnchor::Latest, 10).await.unwrap();
        assert_eq!((seqs(&p), before, after), ((16..=25).collect(), true, false), "{name}");
        let (p, before, after) = s.history(101, HistoryAnchor::Before(16), 10).await.unwrap();
        assert_eq!((seqs(&p), before, after), ((6..=15).collect(), true, true));
        let (p, before, after) = s.history(101, HistoryAnchor::Before(6), 10).await.unwrap();
        assert_eq!((seqs(&p), before, after), ((1..=5).collect(), false, true));
        let (p, before, after) = s.history(101, HistoryAnchor::After(20), 10).await.unwrap();
        assert_eq!((seqs(&p), before, after), ((21..=25).collect(), true, false));
        let (p, before, after) = s.history(101, HistoryAnchor::After(0), 10).await.unwrap();
        assert_eq!((seqs(&p), before, after), ((1..=10).collect(), false, true));
        let (p, before, after) = s.history(101, HistoryAnchor::Around(13), 6).await.unwrap();
        assert_eq!((seqs(&p), before, after), ((10..=15).collect(), true, true));
        // Walking backwards from the latest page covers everything exactly once.
        let mut all = Vec::new();
        let mut anchor = HistoryAnchor::Latest;
        loop {
            let (p, more, _) = s.history(101, anchor, 7).await.unwrap();
            anchor = HistoryAnchor::Before(p[0].seq);
            let mut chunk = seqs(&p);
            chunk.extend(all);
            all = chunk;
            if !more {
                break;
            }
        }
        assert_eq!(all, (1..=25).collect::<Vec<_>>(), "{name}");
    }
}

#[tokio::test]
async fn concurrent_senders_get_distinct_consecutive_seqs() {
    for (name, s) in backends().await {
        s.create_guild(100, 101, "g", OWNER, 0, 5).await.unwrap();
        let mut tasks = Vec::new();
        for sender in 0..5u64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for k in 0..20u64 {
                    let (m, st) = s
                        .send_message(msg(10_000 + sender * 100 + k, 101, 50 + sender, k, "x"))
                        .await
                        .unwrap();
                    assert!(st.is_some());
                    seqs.push(m.seq);
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            let seqs = t.await.unwrap();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{name}: each sender's seqs increase"
            );
            all.extend(seqs);
        }
        all.sort();
        assert_eq!(all, (1..=100).collect::<Vec<_>>(), "{name}: no gaps, no repeats");
    }
}

#[tokio::test]
async fn channels_overwrites_dms_read_states() {
    for (name, s) in backends().await {
        s.create_guild(100, 101, "g", OWNER, 0, 5).await.unwrap();
        let c = s
            .create_channel(
                quaver::store::NewChannel {
                    id: 102,
                    guild: 100,
                    kind: ChannelKind::Voice,
                    name: "voice",
                    topic: "talk",
                    user_limit: 5,
                },
                6,
            )
            .await
            .unwrap();
        assert_eq!((c.kind, c.user_limit), (ChannelKind::Voice, 5));
        s.set_overwrite(101, OverwriteTarget::Role(100), Some((0, 1 << 10)))
            .await
            .unwrap();
        s.set_overwrite(101, OverwriteTarget::Member(BOB), Some((1 << 10, 0)))
            .await
            .unwrap();
        s.set_overwrite(101, OverwriteTarget::Member(BOB), Some((1 << 11, 0)))
            .await
            .unwrap();
        let ch = s.channel(101).await.unwrap();
        assert_eq!(ch.overwrites.len(), 2, "{name}: upsert, not duplicate");
        assert!(ch.overwrites.contains(&Overwrite {
            target: OverwriteTarget::Member(BOB),
            allow: 1 << 11,
            deny: 0
        }));
        s.set_overwrite(101, OverwriteTarget::Member(BOB), None).await.unwrap();
        assert_eq!(s.guild_channels(100).await.unwrap()[0].overwrites.len(), 1);
        s.delete_channel(102).await.unwrap();
        assert_eq!(s.guild_channels(100).await.unwrap().len(), 1);

        let dm = s.open_dm(500, OWNER, BOB, 7).await.unwrap();
        assert_eq!((dm.kind, dm.recipients.clone()), (ChannelKind::Dm, vec![OWNER, BOB]));
        assert_eq!(
            s.open_dm(501, BOB, OWNER, 8).await.unwrap().id,
            500,
            "{name}: one DM per pair"
        );
        let g = s.create_group_dm(502, OWNER, &[BOB, EVE], "trio", 9).await.unwrap();
        assert_eq!(g.recipients, vec![OWNER, BOB, EVE]);
        assert_eq!(
            s.private_channels(BOB)
                .await
                .unwrap()
                .iter()
                .map(|c| c.id)
                .collect::<Vec<_>>(),
            vec![500, 502]
        );

        let mut m = msg(1, 500, OWNER, 1, "hi <@11>");
        m.mentions.users = vec![BOB];
        s.send_message(m).await.unwrap();
        let rs = s.read_states(BOB).await.unwrap();
        assert_eq!(
            rs,
            vec![ReadState {
                channel_id: 500,
                last_read_seq: 0,
                mention_count: 1
            }],
            "{name}"
        );
        let r = s.mark_read(BOB, 500, 1).await.unwrap();
        assert_eq!((r.last_read_seq, r.mention_count), (1, 0));
        assert_eq!(
            s.mark_read(BOB, 500, 0).await.unwrap().last_read_seq,
            1,
            "never backwards"
        );
        // A read that raced a newer mention (read up to 2, mentioned at 3) keeps it counted;
        // reading past it clears it.
        s.send_message(msg(2, 500, OWNER, 2, "plain")).await.unwrap();
        let mut m = msg(3, 500, OWNER, 3, "again <@11>");
        m.mentions.users = vec![BOB];
        s.send_message(m).await.unwrap();
        let r = s.mark_read(BOB, 500, 2).await.unwrap();
        assert_eq!(
            (r.last_read_seq, r.mention_count),
            (2, 1),
            "{name}: the mention at 3 is unread"
        );
        let r = s.mark_read(BOB, 500, 3).await.unwrap();
        assert_eq!((r.last_read_seq, r.mention_count), (3, 0), "{name}");
    }
}

#[tokio::test]
async fn relationships_mutes_and_notifications() {
    for (name, s) in backends().await {
        use RelationshipKind::*;
        s.set_relationship(OWNER, Some(OutgoingRequest), BOB, Some(IncomingRequest), 1)
            .await
            .unwrap();
        assert_eq!(
            s.relationship(BOB, OWNER).await.unwrap(),
            Some(IncomingRequest),
            "{name}"
        );
        s.set_relationship(OWNER, Some(Friend), BOB, Some(Friend), 2)
            .await
            .unwrap();
        assert_eq!(
            s.relationships(OWNER).await.unwrap(),
            vec![Relationship {
                user_id: BOB,
                kind: Friend
            }]
        );
        s.set_relationship(EVE, Some(Blocked), OWNER, None, 3).await.unwrap();
        assert_eq!(s.blockers_of(OWNER).await.unwrap(), vec![EVE]);
        assert_eq!(s.relationship(OWNER, EVE).await.unwrap(), None);

        s.set_mute(BOB, MuteTarget::Guild(100), true).await.unwrap();
        s.set_mute(EVE, MuteTarget::Channel(101), true).await.unwrap();
        s.set_mute(EVE, MuteTarget::Channel(101), true).await.unwrap();
        let mut muters = s.muters(Some(100), 101).await.unwrap();
        muters.sort();
        assert_eq!(muters, vec![BOB, EVE], "{name}");
        assert_eq!(s.muters(None, 101).await.unwrap(), vec![EVE]);
        s.set_mute(BOB, MuteTarget::Guild(100), false).await.unwrap();
        assert!(s.mutes(BOB).await.unwrap().is_empty());

        let n = |id: u64| Notification {
            id,
            kind: NotificationKind::Mention,
            actor_id: OWNER,
            guild_id: Some(100),
            channel_id: Some(101),
            message_id: Some(id * 10),
            preview: format!("n{id}"),
            created_at_ms: id,
            read: false,
        };
        s.create_notifications(&(1..=5).map(|k| (BOB, n(k))).collect::<Vec<_>>(), &Default::default())
            .await
            .unwrap();
        let page = s.notifications(BOB, 0, 3).await.unwrap();
        assert_eq!(
            page.iter().map(|n| n.id).collect::<Vec<_>>(),
            vec![5, 4, 3],
            "{name}: newest first"
        );
        let page = s.notifications(BOB, 3, 10).await.unwrap();
        assert_eq!(page.iter().map(|n| n.id).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(page[0], n(2));
        assert_eq!(s.ack_notifications(BOB, 3, 9).await.unwrap(), 3);
        assert_eq!(s.ack_notifications(BOB, 3, 9).await.unwrap(), 0, "acks are idempotent");
        assert_eq!(s.delivered_notifications(BOB).await.unwrap(), 3);
        s.read_notifications(BOB, &[1, 2], false, 10).await.unwrap();
        assert_eq!(s.unread_notifications(BOB).await.unwrap(), 3);
        s.read_notifications(BOB, &[], true, 11).await.unwrap();
        assert_eq!(s.unread_notifications(BOB).await.unwrap(), 0);
        assert!(s.notifications(BOB, 0, 10).await.unwrap().iter().all(|n| n.read));
    }
}

/// A small tmpfs mounted for one test (root only), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "2m"); `None` when this process may not mount.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = common::tempdir("tmpfs");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk under SQLite: sends fail (never acknowledged without being stored), the
/// connection that failed is not left inside a transaction, writes work again once space
/// is back, and after reopening every acknowledged message is there.
#[tokio::test]
async fn full_disk_loses_nothing_acknowledged_and_recovers() {
    let Some(fs) = Tmpfs::mount("3m") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the full-disk test needs to mount a tmpfs (run as root) in CI");
        }
        eprintln!("SKIPPED: full-disk test (cannot mount a tmpfs; run as root)");
        return;
    };
    let url = format!("sqlite://{}/q.db?mode=rwc", fs.0.display());
    let s = Store::open(&url).await.unwrap();
    s.create_guild(100, 101, "g", OWNER, 0, 5).await.unwrap();
    // Ballast that fills most of the disk, removed later to give space back.
    let ballast = fs.0.join("ballast");
    std::fs::write(&ballast, vec![7u8; 1536 * 1024]).unwrap();
    let content = "x".repeat(3000);
    let mut acked = Vec::new();
    let mut failures = 0;
    let mut id = 10_000u64;
    // Concurrent senders, like sessions: several pool connections hit the full disk.
    while failures < 60 && id < 12_000 {
        let mut tasks = Vec::new();
        for k in 0..4u64 {
            let s = s.clone();
            let m = msg(id + k, 101, 50 + k, id + k, &content);
            tasks.push(tokio::spawn(async move { s.send_message(m).await.map(|(m, _)| m.id) }));
        }
        id += 4;
        for t in tasks {
            match t.await.unwrap() {
                Ok(mid) => acked.push(mid),
                Err(_) => failures += 1,
            }
        }
    }
    assert!(failures > 0, "the disk never filled");
    eprintln!("full disk: {} sends acknowledged, {failures} refused", acked.len());
    // Another connection sees exactly what the server acknowledged so far.
    let other = Store::open(&url).await.unwrap();
    let (page, _, _) = other.history(101, HistoryAnchor::Latest, 100).await.unwrap();
    let mut seen: Vec<u64> = page.iter().map(|m| m.id).collect();
    let mut want: Vec<u64> = acked.iter().rev().take(100).copied().collect();
    seen.sort_unstable();
    want.sort_unstable();
    assert_eq!(seen, want, "another reader sees every acknowledged message");
    // Space comes back: writes succeed again on every connection.
    std::fs::remove_file(&ballast).unwrap();
    for k in 0..8u64 {
        let m = msg(20_000 + k, 101, 70 + k, k, "after");
        let (m, st) = s.send_message(m).await.expect("writes work once space is back");
        assert!(st.is_some());
        acked.push(m.id);
    }
    s.close().await;
    other.close().await;
    let s = Store::open(&url).await.unwrap();
    for mid in &acked {
        assert!(
            s.message(101, *mid).await.is_ok(),
            "acknowledged message {mid} survived"
        );
    }
    s.close().await;
}

/// A database that holds its locks: every call returns `Timeout` within the deadline
/// (nothing hangs, nothing is half-stored), and calls work again once the lock goes.
#[tokio::test]
async fn a_locked_database_times_out_within_the_deadline() {
    use sqlx::{Connection, Executor};
    for (name, url) in backend_urls().await {
        let opt = quaver::store::StoreOptions {
            timeout: std::time::Duration::from_millis(500),
            ..Default::default()
        };
        let s = Store::open_with(&url, &opt).await.unwrap();
        s.create_guild(100, 101, "g", OWNER, 0, 5).await.unwrap();
        s.send_message(msg(1000, 101, BOB, 1, "before")).await.unwrap();
        // Another client takes the lock a send needs and keeps it.
        let mut locker = sqlx::AnyConnection::connect(&url).await.unwrap();
        if name == "sqlite" {
            locker.execute("BEGIN IMMEDIATE").await.unwrap();
        } else {
            locker.execute("BEGIN").await.unwrap();
            locker
                .execute("LOCK TABLE channels IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
        }
        let t0 = std::time::Instant::now();
        let r = s.send_message(msg(1001, 101, BOB, 2, "during")).await;
        assert!(matches!(r, Err(StoreError::Timeout(_))), "{name}: {r:?}");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(2),
            "{name}: {:?}",
            t0.elapsed()
        );
        assert!(s.last_timeout_ms().is_some(), "{name}: readiness learns of it");
        locker.execute("ROLLBACK").await.unwrap();
        drop(locker);
        // The same nonce again: stored exactly once.
        let (m, st) = s.send_message(msg(1002, 101, BOB, 2, "during")).await.unwrap();
        assert!(st.is_some() || m.id == 1001, "{name}");
        let (page, _, _) = s.history(101, HistoryAnchor::Latest, 10).await.unwrap();
        let contents: Vec<&str> = page.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["before", "during"], "{name}");
        s.close().await;
    }
}

/// Replies (read, then write, in one transaction) from many connections at once on SQLite
/// used to fail with SQLITE_BUSY_SNAPSHOT; every one must succeed.
#[tokio::test]
async fn concurrent_replies_all_succeed() {
    for (name, s) in backends().await {
        s.create_guild(100, 101, "g", OWNER, 0, 5).await.unwrap();
        let (root, _) = s.send_message(msg(1000, 101, OWNER, 1, "root")).await.unwrap();
        let mut tasks = Vec::new();
        for sender in 0..8u64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for k in 0..15u64 {
                    let mut m = msg(20_000 + sender * 100 + k, 101, 60 + sender, k, "re");
                    m.reply_to = Some(root.id);
                    s.send_message(m).await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for t in tasks {
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("{name}: a reply failed: {e}"));
        }
        assert_eq!(s.channel(101).await.unwrap().last_seq, 121, "{name}");
    }
}

#[tokio::test]
async fn max_snowflake_is_the_highest_stored_id() {
    for (name, s) in backends().await {
        assert_eq!(s.max_snowflake().await.unwrap(), 0, "{name}: empty");
        s.create_guild(100, 101, "g", OWNER, 0, 5).await.unwrap();
        s.send_message(msg(5_000, 101, BOB, 1, "x")).await.unwrap();
        s.create_role(300, 100, "r", 0).await.unwrap();
        assert_eq!(s.max_snowflake().await.unwrap(), 5_000, "{name}");
    }
}
