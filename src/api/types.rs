//! What the API's JSON carries. Ids are decimal strings (they pass 2^53, which JSON numbers
//! in JavaScript do not hold); times are Unix milliseconds.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// An id: decimal digits of a number from 1 to 2^63 − 1 (a JSON number is taken too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id(pub u64);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

/// A `u64` as decimal digits in a string (ids and bit sets pass 2^53) or as a JSON number.
fn decimal<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        N(u64),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{what} fits in 64 bits"))),
        Raw::S(_) => Err(serde::de::Error::custom(format!("{what} is decimal digits"))),
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = decimal(d, "an id")?;
        if n == 0 || n > i64::MAX as u64 {
            return Err(serde::de::Error::custom("an id is from 1 to 2^63 - 1"));
        }
        Ok(Id(n))
    }
}

impl utoipa::PartialSchema for Id {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            // Every id from 1 to 9,219,999,999,999,999,999 (just under 2^63 − 1): a pattern
            // never promises an id the server refuses.
            .pattern(Some(
                "^([1-9][0-9]{0,17}|[1-8][0-9]{18}|9[01][0-9]{17}|92[01][0-9]{16})$",
            ))
            .description(Some("An id: decimal digits (1 to 2^63 - 1)"))
            .examples(["1234567890123"])
            .into()
    }
}

impl ToSchema for Id {}

impl From<u64> for Id {
    fn from(v: u64) -> Self {
        Id(v)
    }
}

/// Permission bits: a decimal string (or a number) of a 64-bit set; `"0"` is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bits(pub u64);

impl<'de> Deserialize<'de> for Bits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        decimal(d, "permission bits").map(Bits)
    }
}

impl utoipa::PartialSchema for Bits {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^(0|[1-9][0-9]{0,18}|1[0-7][0-9]{18})$"))
            .description(Some("Permission bits (PROTOCOL.md \"Permissions\"), decimal"))
            .examples(["3072"])
            .into()
    }
}

impl ToSchema for Bits {}

/// Who is mentioned in a message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Mentions {
    /// Users.
    pub users: Vec<Id>,
    /// Roles.
    pub roles: Vec<Id>,
    /// `@everyone` / `@here`.
    pub everyone: bool,
}

/// A reaction and how many gave it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many.
    pub count: u32,
}

/// A message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Message {
    /// Its id.
    pub id: Id,
    /// Its channel.
    pub channel_id: Id,
    /// Its author.
    pub author_id: Id,
    /// The nonce it was sent with.
    pub nonce: Id,
    /// Its text (`<@id>` mentions as written).
    pub content: String,
    /// The message it answers.
    pub reply_to: Option<Id>,
    /// Mentions parsed from the content.
    pub mentions: Mentions,
    /// Its channel seq (the order every viewer sees).
    pub seq: u64,
    /// Created, Unix ms.
    pub created_at_ms: u64,
    /// Last edited, Unix ms.
    pub edited_at_ms: Option<u64>,
    /// Deleted (a tombstone: no content).
    pub deleted: bool,
    /// Reactions.
    pub reactions: Vec<Reaction>,
}

impl From<quaver_proto::Message> for Message {
    fn from(m: quaver_proto::Message) -> Self {
        Message {
            id: Id(m.id),
            channel_id: Id(m.channel_id),
            author_id: Id(m.author_id),
            nonce: Id(m.nonce.max(1)),
            content: m.content,
            reply_to: m.reply_to.map(Id),
            mentions: Mentions {
                users: m.mentions.users.into_iter().map(Id).collect(),
                roles: m.mentions.roles.into_iter().map(Id).collect(),
                everyone: m.mentions.everyone,
            },
            seq: m.seq,
            created_at_ms: m.created_at_ms,
            edited_at_ms: m.edited_at_ms,
            deleted: m.deleted,
            reactions: m
                .reactions
                .into_iter()
                .map(|r| Reaction {
                    emoji: r.emoji,
                    count: r.count,
                })
                .collect(),
        }
    }
}

/// A status: `online`, `idle`, `dnd`, `offline` (invisible users are offline to others).
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Online.
    Online,
    /// Idle.
    Idle,
    /// Do not disturb.
    Dnd,
    /// Offline (or invisible).
    Offline,
}

impl From<quaver_proto::PresenceStatus> for Status {
    fn from(s: quaver_proto::PresenceStatus) -> Self {
        use quaver_proto::PresenceStatus as P;
        match s {
            P::Online => Status::Online,
            P::Idle => Status::Idle,
            P::Dnd => Status::Dnd,
            P::Invisible | P::Offline => Status::Offline,
        }
    }
}

/// A user's presence as others see it (merged across devices and nodes).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Presence {
    /// The user.
    pub user_id: Id,
    /// Overall.
    pub status: Status,
    /// Per platform.
    pub desktop: Status,
    /// Per platform.
    pub mobile: Status,
    /// Per platform.
    pub web: Status,
    /// Custom status text.
    pub custom_status: Option<String>,
    /// Activity text.
    pub activity: Option<String>,
}

impl From<quaver_proto::Presence> for Presence {
    fn from(p: quaver_proto::Presence) -> Self {
        Presence {
            user_id: Id(p.user_id),
            status: p.status.into(),
            desktop: p.client_status.desktop.into(),
            mobile: p.client_status.mobile.into(),
            web: p.client_status.web.into(),
            custom_status: p.custom_status,
            activity: p.activity,
        }
    }
}

/// Empty: what a change that returns nothing answers (`204` has no body; this is for
/// documents that want an object).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Done {
    /// Always true.
    pub ok: bool,
}

/// A page size: `limit` if given (it must be within `1..=max`), else `default`.
pub fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, super::error::Problem> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(super::error::Problem::bad("limit", format!("limit is 1 to {max}"))),
    }
}
