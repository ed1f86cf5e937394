//! Ownership: everything rug-lite creates in Neutron and Nova carries two tags, so that a
//! restarted rug-lite (or orphan cleanup) can find it again without any local state.
//!
//! - `rug-lite`: "this is rug-lite's" (listing filter);
//! - `rug-lite-router:<router id>`: which router it serves.
//!
//! Nova server tags are at most 60 characters and may not contain `/` or `,`; a UUID router id
//! makes the second tag 52 characters.

pub(crate) const OWNER_TAG: &str = "rug-lite";
const ROUTER_TAG_PREFIX: &str = "rug-lite-router:";

/// Name prefix of the Nova servers (Astara's `ak-router-<id>`, kept for operators' habits).
const SERVER_NAME_PREFIX: &str = "ak-router-";

pub(crate) fn router_tag(router_id: &str) -> String {
    format!("{ROUTER_TAG_PREFIX}{router_id}")
}

/// The router a set of tags names, if the tags mark the resource as rug-lite's.
pub(crate) fn router_of_tags<'a>(tags: impl IntoIterator<Item = &'a String>) -> Option<String> {
    let mut owned = false;
    let mut router = None;
    for tag in tags {
        if tag == OWNER_TAG {
            owned = true;
        } else if let Some(id) = tag.strip_prefix(ROUTER_TAG_PREFIX) {
            if !id.is_empty() {
                router = Some(id.to_string());
            }
        }
    }
    if owned {
        router
    } else {
        None
    }
}

/// The tags to put on a resource serving `router_id`.
pub(crate) fn tags_for(router_id: &str) -> [String; 2] {
    [OWNER_TAG.to_string(), router_tag(router_id)]
}

pub(crate) fn server_name(router_id: &str) -> String {
    format!("{SERVER_NAME_PREFIX}{router_id}")
}

/// Port names say what each port is for, for operators reading `openstack port list`.
pub(crate) fn management_port_name(router_id: &str) -> String {
    format!("AKANDA:MGT:{router_id}")
}

pub(crate) fn data_port_name(router_id: &str) -> String {
    format!("AKANDA:VRRP:{router_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_need_the_owner_tag() {
        let id = "81a51c84-25a3-4180-8e1c-4d10e1aaebd3";
        let tags = tags_for(id);
        assert_eq!(router_of_tags(tags.iter()), Some(id.to_string()));
        assert!(tags
            .iter()
            .all(|t| t.len() <= 60 && !t.contains('/') && !t.contains(',')));
        // A router tag without the owner tag is someone else's resource.
        let foreign = [router_tag(id)];
        assert_eq!(router_of_tags(foreign.iter()), None);
        let only_owner = [OWNER_TAG.to_string()];
        assert_eq!(router_of_tags(only_owner.iter()), None);
    }
}
