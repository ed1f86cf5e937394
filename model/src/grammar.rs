//! The grammars of the document's free strings. Every string that reaches a daemon's file, an
//! HTTP header, a kernel name, an nf_tables comment or a log line follows one of these, or the
//! config is refused with a 422 naming the field; so does every string the agent only stores
//! and shows, so that no later use of it needs a check of its own. Addresses, prefixes, MACs,
//! NIC names and enumerations are not here: they are parsed into typed values, and rendered
//! from those. docs/config.md ("Grammars") lists which field follows which, and where it goes.
//!
//! None of the grammars lets through a line break, a NUL or another control character.

/// A grammar, with the words a refusal uses for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grammar {
    /// The router's own host name (`sethostname(2)`, `/etc/hostname`, `/etc/hosts`): RFC 1123,
    /// dot-separated labels of letters, digits and inner `-`, at most 64 characters (the
    /// kernel's limit).
    Hostname,
    /// A DNS name as dnsmasq takes it in a `dhcp-host` line: dot-separated labels of 1 to 63
    /// letters, digits, `-` or `_`, at most 253 characters, an optional final dot. Hyphens may
    /// lead, end and repeat a label (Astara names allocations `2001-db8-4b--.local`).
    DnsName,
    /// A Neutron or Astara id: 1 to 255 of `A-Z a-z 0-9 - _ . :` (UUIDs, `mgt-subnet-id`).
    Id,
    /// An HTTP header value: 1 to 255 printable ASCII characters, no space.
    HeaderValue,
    /// A name the firewall renders into rule comments (and may one day use for nf_tables sets
    /// and chains): 1 to 64 of `A-Z a-z 0-9 _ - .`, the first not `-` or `.`.
    Name,
    /// Free text, stored and shown only: at most 255 characters (Neutron's limit for names
    /// and descriptions), none of them a control character (U+0000–U+001F, U+007F–U+009F) or a
    /// line or paragraph separator (U+2028, U+2029). Empty is fine.
    Text,
    /// A value an IPsec daemon will read between double quotes (a pre-shared key, a peer
    /// identity): 1 to 255 printable ASCII characters (space included), no `"` and no `\`.
    Quoted,
}

impl Grammar {
    #[cfg(test)]
    const ALL: [Grammar; 7] = [
        Grammar::Hostname,
        Grammar::DnsName,
        Grammar::Id,
        Grammar::HeaderValue,
        Grammar::Name,
        Grammar::Text,
        Grammar::Quoted,
    ];

    /// Whether `s` follows the grammar.
    pub fn matches(self, s: &str) -> bool {
        match self {
            Grammar::Hostname => is_hostname(s),
            Grammar::DnsName => is_dns_name(s),
            Grammar::Id => is_identifier(s),
            Grammar::HeaderValue => is_header_safe(s) && !s.is_empty(),
            Grammar::Name => is_name(s),
            Grammar::Text => is_text(s),
            Grammar::Quoted => is_quoted(s),
        }
    }

    /// What a refusal says the value is not, e.g. `an id: 1 to 255 letters, ...`.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Grammar::Hostname => {
                "a valid host name (letters, digits and '-' in dot-separated labels, at most 64 characters)"
            }
            Grammar::DnsName => {
                "a valid host name (dot-separated labels of 1 to 63 letters, digits, '-' or '_', at most 253 characters)"
            }
            Grammar::Id => {
                "an id: 1 to 255 letters, digits, '-', '_', '.' or ':' (it reaches daemon config files and HTTP headers)"
            }
            Grammar::HeaderValue => {
                "a header value: 1 to 255 printable ASCII characters without spaces (it is sent in HTTP headers)"
            }
            Grammar::Name => {
                "a name: 1 to 64 letters, digits, '_', '-' or '.', not starting with '-' or '.' (it reaches firewall rules)"
            }
            Grammar::Text => {
                "text: at most 255 characters, none of them a control character or a line separator"
            }
            Grammar::Quoted => {
                "a quotable value: 1 to 255 printable ASCII characters, no '\"' and no '\\' (an IPsec daemon reads it between quotes)"
            }
        }
    }
}

/// RFC 1123 host name of at most 64 characters: [`Grammar::Hostname`].
pub(crate) fn is_hostname(s: &str) -> bool {
    s.len() <= 64
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An allocation's host name, as dnsmasq takes it in a `dhcp-host` line: [`Grammar::DnsName`].
///
/// Hyphens may lead, trail and repeat, unlike RFC 1123: Astara's orchestrator names an
/// allocation after its lowest address with `:` and `.` replaced by `-`, so the gateway
/// `2001:db8:4b::` becomes `2001-db8-4b--.local` and `::ffff:10.0.0.5` becomes
/// `--ffff-10-0-0-5.local`. dnsmasq accepts everything here but a first label that starts with
/// `-` or `_`; the agent hands such a lease out without a name.
///
/// None of the characters that could break a daemon's file (`,` `#` `=` `/` quotes, spaces,
/// control characters, non-ASCII) can pass.
pub fn is_allocation_hostname(s: &str) -> bool {
    is_dns_name(s)
}

/// [`Grammar::DnsName`].
pub(crate) fn is_dns_name(s: &str) -> bool {
    let name = s.strip_suffix('.').unwrap_or(s);
    s.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// [`Grammar::Id`]: 1 to 255 of `A-Z a-z 0-9 - _ . :`.
pub(crate) fn is_identifier(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Printable ASCII without spaces, at most 255 bytes (empty included): the agent sends these
/// values in HTTP headers (the metadata proxy's `X-Tenant-ID`, `X-Instance-ID`).
/// [`Grammar::HeaderValue`] is the same, non-empty.
pub fn is_header_safe(s: &str) -> bool {
    s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// [`Grammar::Name`].
pub(crate) fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// [`Grammar::Text`].
pub fn is_text(s: &str) -> bool {
    s.chars().count() <= 255
        && !s
            .chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

/// [`Grammar::Quoted`].
pub(crate) fn is_quoted(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an attacker puts in a string to end a line, a quoted value, a directive or a
    /// block in a daemon's file, a header, or a C string.
    const INJECTIONS: &[&str] = &[
        "a\nb",
        "a\r\nX-Injected: 1",
        "a\rb",
        "a\0b",
        "a\tb",
        "a\u{7f}",
        "a\u{85}b",
        "a\u{2028}b",
    ];

    fn overlong(limit: usize) -> String {
        "a".repeat(limit + 1)
    }

    /// Refused by every grammar: control characters and line breaks of every kind.
    #[test]
    fn no_grammar_takes_a_line_break_a_nul_or_a_control_character() {
        for g in Grammar::ALL {
            for bad in INJECTIONS {
                assert!(!g.matches(bad), "{g:?} takes {bad:?}");
            }
        }
    }

    /// The characters that mean something in a daemon's file: quotes, comments, separators,
    /// blocks, escapes, spaces.
    const SPECIALS: &[&str] = &[
        "a\"b", "a'b", "a#b", "a;b", "a{b", "a}b", "a,b", "a=b", "a b", "a\\b", "a/b", "a$b",
        "a`b", "a%b",
    ];

    fn refuses_all(g: Grammar, bad: &[&str]) {
        for b in bad {
            assert!(!g.matches(b), "{g:?} takes {b:?}");
        }
    }

    fn takes_all(g: Grammar, good: &[&str]) {
        for s in good {
            assert!(g.matches(s), "{g:?} refuses {s:?}");
        }
    }

    #[test]
    fn hostname() {
        let g = Grammar::Hostname;
        refuses_all(g, SPECIALS);
        refuses_all(g, &["", "-a", "a-", "a..b", "a_b", "Ω", &overlong(64)]);
        takes_all(g, &["ak-d22b149c", "router.example", "a", &"a".repeat(63)]);
    }

    #[test]
    fn dns_name() {
        let g = Grammar::DnsName;
        refuses_all(g, SPECIALS);
        refuses_all(g, &["", "a..b", ".a", "Ω", &"a".repeat(64), &overlong(253)]);
        takes_all(
            g,
            &[
                "192-168-0-2.local",
                "2001-db8-4b--.local",
                "--.local",
                "_x.local.",
                "orchestrator-1",
            ],
        );
    }

    #[test]
    fn id() {
        let g = Grammar::Id;
        refuses_all(g, SPECIALS);
        refuses_all(g, &["", "Ω", &overlong(255)]);
        takes_all(
            g,
            &[
                "b7fc9b39-401c-47cc-a07d-9f8cde75ccbf",
                "mgt-subnet-id",
                "a.b:c_d",
            ],
        );
    }

    #[test]
    fn header_value() {
        let g = Grammar::HeaderValue;
        // Quotes, '#', ';' and braces mean nothing in a header value: they pass. What ends the
        // header or the request (line breaks, NUL, control characters) does not, nor spaces.
        refuses_all(g, &["", "a b", "Ω", &overlong(255)]);
        takes_all(
            g,
            &[
                "d22b149cee9b4eac8349c517eda00b89",
                "a\"b",
                "a#b;{c}",
                "dhcp-1",
            ],
        );
    }

    #[test]
    fn name() {
        let g = Grammar::Name;
        refuses_all(g, SPECIALS);
        refuses_all(g, &["", "-a", ".a", "a:b", "Ω", &overlong(64)]);
        takes_all(
            g,
            &[
                "ssh",
                "outside-admins",
                "book0",
                "_x",
                "a.b",
                &"a".repeat(64),
            ],
        );
    }

    #[test]
    fn text() {
        let g = Grammar::Text;
        // Free text is shown, never written into a file or a header: quotes and the like are
        // fine, and so is any printable character.
        refuses_all(g, &[&"é".repeat(256)]);
        takes_all(
            g,
            &[
                "",
                "My network",
                "a\"b#c;{d}",
                "réseau « privé »",
                &"é".repeat(255),
            ],
        );
    }

    #[test]
    fn quoted() {
        let g = Grammar::Quoted;
        // Inside double quotes, '#', ';', braces and spaces are plain characters; a quote or a
        // backslash would end or escape the value.
        refuses_all(g, &["", "a\"b", "a\\b", "Ω", &overlong(255)]);
        takes_all(
            g,
            &[
                "secrete",
                "a#b;{c} d",
                "CN=peer, O=Example",
                "@peer.example",
            ],
        );
    }
}
