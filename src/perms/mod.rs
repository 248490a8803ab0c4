//! Permissions: 64-bit sets with Discord's bit positions, and their computation as a pure
//! function — the guild owner and administrators have everything; otherwise the base is the
//! union of `@everyone` and the member's roles, then channel overwrites apply in the order
//! `@everyone` → roles (denies, then allows) → the member (deny, then allow).

use quaver_proto::{Overwrite, OverwriteTarget};

/// A permission set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(pub u64);

macro_rules! bits {
    ($($(#[$doc:meta])* $name:ident = $bit:expr;)*) => {
        impl Perms {
            $($(#[$doc])* pub const $name: Perms = Perms(1 << $bit);)*
            /// Every defined bit.
            pub const ALL: Perms = Perms(0 $(| (1 << $bit))*);
        }
    };
}

bits! {
    /// Create invites.
    CREATE_INVITE = 0;
    /// Remove members.
    KICK_MEMBERS = 1;
    /// Ban members.
    BAN_MEMBERS = 2;
    /// Everything, bypassing overwrites.
    ADMINISTRATOR = 3;
    /// Create, change and delete channels.
    MANAGE_CHANNELS = 4;
    /// Rename the guild.
    MANAGE_GUILD = 5;
    /// Add reactions.
    ADD_REACTIONS = 6;
    /// See the channel (and receive its events).
    VIEW_CHANNEL = 10;
    /// Send messages.
    SEND_MESSAGES = 11;
    /// Delete others' messages.
    MANAGE_MESSAGES = 13;
    /// Read past messages.
    READ_MESSAGE_HISTORY = 16;
    /// Use `@everyone` / `@here`.
    MENTION_EVERYONE = 17;
    /// Join voice channels.
    CONNECT = 20;
    /// Speak in voice channels.
    SPEAK = 21;
    /// Server-mute members.
    MUTE_MEMBERS = 22;
    /// Server-deafen members.
    DEAFEN_MEMBERS = 23;
    /// Move members between voice channels.
    MOVE_MEMBERS = 24;
    /// Create, change, assign and delete roles; set channel overwrites.
    MANAGE_ROLES = 28;
    /// Time members out.
    MODERATE_MEMBERS = 40;
}

/// Each bit's name, as the server API spells it.
const NAMES: [(Perms, &str); 19] = [
    (Perms::CREATE_INVITE, "create_invite"),
    (Perms::KICK_MEMBERS, "kick_members"),
    (Perms::BAN_MEMBERS, "ban_members"),
    (Perms::ADMINISTRATOR, "administrator"),
    (Perms::MANAGE_CHANNELS, "manage_channels"),
    (Perms::MANAGE_GUILD, "manage_guild"),
    (Perms::ADD_REACTIONS, "add_reactions"),
    (Perms::VIEW_CHANNEL, "view_channel"),
    (Perms::SEND_MESSAGES, "send_messages"),
    (Perms::MANAGE_MESSAGES, "manage_messages"),
    (Perms::READ_MESSAGE_HISTORY, "read_message_history"),
    (Perms::MENTION_EVERYONE, "mention_everyone"),
    (Perms::CONNECT, "connect"),
    (Perms::SPEAK, "speak"),
    (Perms::MUTE_MEMBERS, "mute_members"),
    (Perms::DEAFEN_MEMBERS, "deafen_members"),
    (Perms::MOVE_MEMBERS, "move_members"),
    (Perms::MANAGE_ROLES, "manage_roles"),
    (Perms::MODERATE_MEMBERS, "moderate_members"),
];

impl Perms {
    /// The names of the bits set (`send_messages`, …).
    pub fn names(self) -> Vec<&'static str> {
        NAMES.iter().filter(|(p, _)| self.has(*p)).map(|(_, n)| *n).collect()
    }

    /// What `@everyone` gets in a new guild.
    pub const DEFAULT_EVERYONE: Perms = Perms(
        Perms::CREATE_INVITE.0
            | Perms::ADD_REACTIONS.0
            | Perms::VIEW_CHANNEL.0
            | Perms::SEND_MESSAGES.0
            | Perms::READ_MESSAGE_HISTORY.0
            | Perms::CONNECT.0
            | Perms::SPEAK.0,
    );

    /// What a timed-out member keeps (unless they own the guild or are administrators):
    /// seeing and reading.
    pub const WHILE_TIMED_OUT: Perms = Perms(Perms::VIEW_CHANNEL.0 | Perms::READ_MESSAGE_HISTORY.0);

    /// Whether every bit of `p` is set.
    pub fn has(self, p: Perms) -> bool {
        self.0 & p.0 == p.0
    }

    fn apply(self, allow: u64, deny: u64) -> Perms {
        Perms((self.0 & !deny) | allow)
    }
}

/// What permission computation needs to know about one member in one guild.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The user.
    pub user_id: u64,
    /// Whether they own the guild.
    pub is_owner: bool,
    /// Permissions of `@everyone`.
    pub everyone: u64,
    /// `(role id, permissions)` of each of their roles (not `@everyone`).
    pub roles: &'a [(u64, u64)],
}

/// Guild-level permissions.
pub fn base(s: &Subject<'_>) -> Perms {
    if s.is_owner {
        return Perms::ALL;
    }
    let p = s.roles.iter().fold(s.everyone, |acc, (_, r)| acc | r);
    if p & Perms::ADMINISTRATOR.0 != 0 {
        return Perms::ALL;
    }
    Perms(p)
}

/// Channel permissions: `base` with the channel's overwrites applied. `everyone_role` is the
/// guild's id (the `@everyone` role's id).
pub fn in_channel(s: &Subject<'_>, everyone_role: u64, overwrites: &[Overwrite]) -> Perms {
    let base = base(s);
    if base == Perms::ALL && (s.is_owner || base.has(Perms::ADMINISTRATOR)) {
        return Perms::ALL;
    }
    let mut p = base;
    if let Some(o) = overwrites
        .iter()
        .find(|o| o.target == OverwriteTarget::Role(everyone_role))
    {
        p = p.apply(o.allow, o.deny);
    }
    let (mut allow, mut deny) = (0u64, 0u64);
    for o in overwrites {
        if let OverwriteTarget::Role(id) = o.target
            && id != everyone_role
            && s.roles.iter().any(|(r, _)| *r == id)
        {
            allow |= o.allow;
            deny |= o.deny;
        }
    }
    p = p.apply(allow, deny);
    if let Some(o) = overwrites
        .iter()
        .find(|o| o.target == OverwriteTarget::Member(s.user_id))
    {
        p = p.apply(o.allow, o.deny);
    }
    // Implicit rules: without view, nothing; without send, no mentioning everyone.
    if !p.has(Perms::VIEW_CHANNEL) {
        return Perms(0);
    }
    if !p.has(Perms::SEND_MESSAGES) {
        p.0 &= !Perms::MENTION_EVERYONE.0;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_bit_has_a_name() {
        assert_eq!(Perms::ALL.names().len(), NAMES.len());
        assert_eq!(Perms::ALL.0.count_ones() as usize, NAMES.len());
        assert_eq!(Perms(0).names(), Vec::<&str>::new());
    }

    const G: u64 = 100;
    const MOD: u64 = 200;
    const MUTED: u64 = 300;

    fn ow(target: OverwriteTarget, allow: Perms, deny: Perms) -> Overwrite {
        Overwrite {
            target,
            allow: allow.0,
            deny: deny.0,
        }
    }

    fn subj(roles: &[(u64, u64)]) -> Subject<'_> {
        Subject {
            user_id: 7,
            is_owner: false,
            everyone: Perms::DEFAULT_EVERYONE.0,
            roles,
        }
    }

    #[test]
    fn owner_and_administrator_have_everything_despite_overwrites() {
        let deny_all = [ow(OverwriteTarget::Role(G), Perms(0), Perms::ALL)];
        let owner = Subject {
            is_owner: true,
            ..subj(&[])
        };
        assert_eq!(in_channel(&owner, G, &deny_all), Perms::ALL);
        let admin_roles = [(MOD, Perms::ADMINISTRATOR.0)];
        assert_eq!(in_channel(&subj(&admin_roles), G, &deny_all), Perms::ALL);
        let member_deny = [ow(OverwriteTarget::Member(7), Perms(0), Perms::ALL)];
        assert_eq!(in_channel(&subj(&admin_roles), G, &member_deny), Perms::ALL);
    }

    #[test]
    fn base_is_the_union_of_everyone_and_roles() {
        let roles = [(MOD, Perms::MANAGE_MESSAGES.0 | Perms::KICK_MEMBERS.0)];
        let p = base(&subj(&roles));
        assert!(p.has(Perms::SEND_MESSAGES) && p.has(Perms::MANAGE_MESSAGES) && p.has(Perms::KICK_MEMBERS));
        assert!(!p.has(Perms::BAN_MEMBERS));
    }

    #[test]
    fn overwrite_order_everyone_then_roles_then_member() {
        // @everyone cannot see the channel; the mod role can; one member is denied again.
        let ows = [
            ow(OverwriteTarget::Role(G), Perms(0), Perms::VIEW_CHANNEL),
            ow(OverwriteTarget::Role(MOD), Perms::VIEW_CHANNEL, Perms(0)),
        ];
        assert_eq!(in_channel(&subj(&[]), G, &ows), Perms(0), "everyone denied");
        let mods = [(MOD, 0)];
        assert!(
            in_channel(&subj(&mods), G, &ows).has(Perms::VIEW_CHANNEL),
            "role allow beats everyone deny"
        );
        let mut with_member = ows.to_vec();
        with_member.push(ow(OverwriteTarget::Member(7), Perms(0), Perms::VIEW_CHANNEL));
        assert_eq!(
            in_channel(&subj(&mods), G, &with_member),
            Perms(0),
            "member deny beats role allow"
        );
        // A member allow beats a role deny.
        let ows = [
            ow(OverwriteTarget::Role(MUTED), Perms(0), Perms::SEND_MESSAGES),
            ow(OverwriteTarget::Member(7), Perms::SEND_MESSAGES, Perms(0)),
        ];
        assert!(in_channel(&subj(&[(MUTED, 0)]), G, &ows).has(Perms::SEND_MESSAGES));
    }

    #[test]
    fn role_allow_wins_over_role_deny_at_the_same_level() {
        let ows = [
            ow(OverwriteTarget::Role(MUTED), Perms(0), Perms::SEND_MESSAGES),
            ow(OverwriteTarget::Role(MOD), Perms::SEND_MESSAGES, Perms(0)),
        ];
        assert!(in_channel(&subj(&[(MUTED, 0), (MOD, 0)]), G, &ows).has(Perms::SEND_MESSAGES));
    }

    #[test]
    fn implicit_denials() {
        let ows = [ow(OverwriteTarget::Role(G), Perms(0), Perms::SEND_MESSAGES)];
        let roles = [(MOD, Perms::MENTION_EVERYONE.0)];
        let p = in_channel(&subj(&roles), G, &ows);
        assert!(p.has(Perms::VIEW_CHANNEL));
        assert!(!p.has(Perms::SEND_MESSAGES));
        assert!(!p.has(Perms::MENTION_EVERYONE), "no mention-everyone without send");
        let hidden = [ow(OverwriteTarget::Role(G), Perms(0), Perms::VIEW_CHANNEL)];
        assert_eq!(in_channel(&subj(&roles), G, &hidden), Perms(0));
    }

    #[test]
    fn overwrites_for_other_members_and_roles_do_not_apply() {
        let ows = [
            ow(OverwriteTarget::Member(8), Perms(0), Perms::ALL),
            ow(OverwriteTarget::Role(MOD), Perms(0), Perms::ALL),
        ];
        assert_eq!(in_channel(&subj(&[]), G, &ows), Perms::DEFAULT_EVERYONE);
    }
}
