//! Keystone v3 for rug-lite: the credentials and the token come from the workspace's one
//! Keystone client, `akanda-openstack-auth`; this module picks the endpoints rug-lite uses.

#[cfg(test)]
pub(crate) use akanda_openstack_auth::from_env;
pub(crate) use akanda_openstack_auth::{credentials, Credentials, KeystoneError};

/// A token and the endpoints rug-lite uses.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub token: String,
    pub network: String,
    pub compute: String,
    pub image: String,
}

pub(crate) async fn authenticate(
    http: &reqwest::Client,
    c: &Credentials,
) -> Result<Session, KeystoneError> {
    let token = akanda_openstack_auth::authenticate(http, c).await?;
    let mut network = token.endpoint("network", c)?;
    // Neutron's catalog entry is usually the bare service root.
    if !network.ends_with("/v2.0") {
        network.push_str("/v2.0");
    }
    Ok(Session {
        network,
        compute: token.endpoint("compute", c)?,
        image: token.endpoint("image", c)?,
        token: token.token,
    })
}
