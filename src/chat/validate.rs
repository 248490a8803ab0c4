//! Input validation and mention parsing for chat: pure functions, each refusal a specific
//! error code.

use quaver_proto::{ErrorBody, ErrorCode, Mentions};

/// Longest message, in characters.
pub const MAX_CONTENT_CHARS: usize = 4000;
/// Longest guild/channel/role name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest channel topic.
pub const MAX_TOPIC_CHARS: usize = 1024;
/// Most mentions of each kind kept from one message.
pub const MAX_MENTIONS: usize = 50;

/// Message content: 1–4,000 characters, not blank, no control characters but `\n`, `\t`.
pub fn content(s: &str) -> Result<(), ErrorBody> {
    let n = s.chars().count();
    if n == 0 || s.trim().is_empty() {
        return Err(ErrorBody::new(ErrorCode::INVALID_CONTENT, "content is empty"));
    }
    if n > MAX_CONTENT_CHARS {
        return Err(ErrorBody::new(
            ErrorCode::INVALID_CONTENT,
            format!("content over {MAX_CONTENT_CHARS} characters"),
        ));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ErrorBody::new(
            ErrorCode::INVALID_CONTENT,
            "content has control characters",
        ));
    }
    Ok(())
}

/// A name: 1–100 characters, not blank, no control characters.
pub fn name(s: &str) -> Result<(), ErrorBody> {
    let n = s.chars().count();
    if n == 0 || s.trim().is_empty() || n > MAX_NAME_CHARS || s.chars().any(char::is_control) {
        return Err(ErrorBody::new(
            ErrorCode::INVALID_NAME,
            format!("names are 1–{MAX_NAME_CHARS} printable characters"),
        ));
    }
    Ok(())
}

/// A topic: up to 1024 characters, no control characters but newline.
pub fn topic(s: &str) -> Result<(), ErrorBody> {
    if s.chars().count() > MAX_TOPIC_CHARS || s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ErrorBody::new(
            ErrorCode::INVALID_NAME,
            "topics are up to 1024 printable characters",
        ));
    }
    Ok(())
}

fn pictographic(c: char) -> bool {
    matches!(c as u32,
        0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x2194..=0x21AA | 0x231A..=0x23FF
        | 0x24C2 | 0x25AA..=0x25FE | 0x2600..=0x27BF | 0x2934 | 0x2935 | 0x2B05..=0x2B55
        | 0x3030 | 0x303D | 0x3297 | 0x3299 | 0x1F000..=0x1FAFF)
}

fn component(c: char) -> bool {
    matches!(c as u32,
        0x200D            // zero-width joiner
        | 0xFE0F | 0xFE0E // variation selectors
        | 0x20E3          // combining keycap
        | 0x1F3FB..=0x1F3FF // skin tones
        | 0x1F1E6..=0x1F1FF // regional indicators (flags)
        | 0xE0020..=0xE007F) // tag sequences (subdivision flags)
        || c.is_ascii_digit() || c == '#' || c == '*' // keycap bases
}

/// A single Unicode emoji (possibly a ZWJ sequence, flag, keycap or skin-tone variant):
/// at most 32 bytes, made only of pictographs and emoji components, with at least one
/// pictograph or a keycap/flag.
pub fn emoji(s: &str) -> Result<(), ErrorBody> {
    let bad = || ErrorBody::new(ErrorCode::INVALID_EMOJI, "not a single Unicode emoji");
    if s.is_empty() || s.len() > 32 {
        return Err(bad());
    }
    let mut has_base = false;
    for c in s.chars() {
        if pictographic(c) || (0x1F1E6..=0x1F1FF).contains(&(c as u32)) || c == '\u{20E3}' {
            has_base = true;
        } else if !component(c) {
            return Err(bad());
        }
    }
    // Bare digits are components only as keycap bases.
    if !has_base {
        return Err(bad());
    }
    Ok(())
}

/// Parses `<@user>`, `<@!user>`, `<@&role>`, `@everyone`, `@here`. Whether `everyone` may
/// stand is decided by the caller (it needs the mention-everyone permission).
pub fn mentions(s: &str) -> Mentions {
    let mut m = Mentions::default();
    let mut rest = s;
    while let Some(i) = rest.find("<@") {
        rest = &rest[i + 2..];
        let (is_role, body) = match rest.as_bytes().first() {
            Some(b'&') => (true, &rest[1..]),
            Some(b'!') => (false, &rest[1..]),
            _ => (false, rest),
        };
        let digits: &str = &body[..body.find(|c: char| !c.is_ascii_digit()).unwrap_or(body.len())];
        if !digits.is_empty()
            && body[digits.len()..].starts_with('>')
            && let Ok(id) = digits.parse::<u64>()
        {
            let list = if is_role { &mut m.roles } else { &mut m.users };
            if !list.contains(&id) && list.len() < MAX_MENTIONS {
                list.push(id);
            }
        }
    }
    m.everyone = s.contains("@everyone") || s.contains("@here");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_rules() {
        assert!(content("hi").is_ok());
        assert!(content("line\nnext\ttab").is_ok());
        assert_eq!(content("").unwrap_err().code, ErrorCode::INVALID_CONTENT);
        assert_eq!(content("  \n ").unwrap_err().code, ErrorCode::INVALID_CONTENT);
        assert_eq!(content("bell\u{7}").unwrap_err().code, ErrorCode::INVALID_CONTENT);
        assert!(content(&"é".repeat(4000)).is_ok(), "characters, not bytes");
        assert!(content(&"a".repeat(4001)).is_err());
    }

    #[test]
    fn names() {
        assert!(name("general").is_ok());
        assert!(name("").is_err() && name("   ").is_err() && name("a\nb").is_err());
        assert!(name(&"x".repeat(101)).is_err());
    }

    #[test]
    fn emojis() {
        for ok in [
            "👍",
            "👍🏽",
            "❤️",
            "🇫🇷",
            "👩‍👩‍👧",
            "1️⃣",
            "☕",
            "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
        ] {
            assert!(emoji(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "1", ":)", "👍 ", "👍a", "<script>", "\u{200D}"] {
            assert!(emoji(bad).is_err(), "{bad:?}");
        }
        assert!(emoji(&"👍".repeat(9)).is_err(), "too long");
    }

    #[test]
    fn mention_parsing() {
        let m = mentions("hi <@12> and <@!12> <@&7> <@x> <@99 @everyone");
        assert_eq!(m.users, vec![12]);
        assert_eq!(m.roles, vec![7]);
        assert!(m.everyone);
        assert!(!mentions("email@here.com").users.contains(&0));
        assert!(mentions("ping @here").everyone);
        assert_eq!(mentions("<@").users, Vec::<u64>::new());
    }
}
