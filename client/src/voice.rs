//! Joining a voice channel wherever it lives. In a cluster a voice channel is served by one
//! node at a time; a `JoinVoice` sent to another node is answered `VoiceServer` with that
//! node's endpoint (its `host:port`, or for a session on the WebSocket framing its WebSocket
//! URL). [`join_voice`] follows it: it opens a session on that node with the same token
//! (trusting the certificate hashes it names as well) and joins there, so the caller
//! gets one answer either way and sends and receives voice on [`VoiceJoin::client`].

use quaver_proto::{ErrorBody, Lane, RequestBody, ResponseBody};

use crate::{Client, Config, Error, LaneStream, Transport, Trust, connect};

/// A voice channel joined.
pub struct VoiceJoin {
    /// The session on the channel's node and its voice lane, when that node is not the
    /// caller's (keep them: the channel's voice datagrams travel on that session, and
    /// leave, mute and stats go on that lane).
    pub remote: Option<(Client, LaneStream)>,
    /// The `VoiceJoined` answer.
    pub joined: ResponseBody,
}

impl VoiceJoin {
    /// The session voice datagrams go through: the remote one, else `local`.
    pub fn client<'a>(&'a self, local: &'a Client) -> &'a Client {
        self.remote.as_ref().map(|(c, _)| c).unwrap_or(local)
    }
}

/// Asks for datagrams with the previous frame in front (`SetVoiceOptions`) when
/// `cfg.voice_redundancy` is on. A server that does not know the request answers an error:
/// voice then comes without copies, which is no reason not to join.
async fn ask_redundancy(voice: &mut LaneStream, cfg: &Config) -> Result<(), Error> {
    if cfg.voice_redundancy
        && let Err(e) = voice.request(RequestBody::SetVoiceOptions { redundancy: true }).await?
    {
        tracing::debug!(error = %e.message, "the server declined voice redundancy");
    }
    Ok(())
}

/// Joins `channel_id` on `voice` (the voice lane of `client`, connected with `cfg`),
/// following a `VoiceServer` answer to the node the channel lives on; asks each node it
/// joins on for redundant datagrams when `cfg.voice_redundancy` is on.
pub async fn join_voice(
    voice: &mut LaneStream,
    cfg: &Config,
    channel_id: u64,
    self_mute: bool,
    self_deaf: bool,
) -> Result<Result<VoiceJoin, ErrorBody>, Error> {
    let join = RequestBody::JoinVoice {
        channel_id,
        self_mute,
        self_deaf,
    };
    ask_redundancy(voice, cfg).await?;
    let (endpoint, cert_hashes) = match voice.request(join.clone()).await? {
        Ok(ResponseBody::VoiceServer {
            endpoint, cert_hashes, ..
        }) => (endpoint, cert_hashes),
        Ok(joined) => return Ok(Ok(VoiceJoin { remote: None, joined })),
        Err(e) => return Ok(Err(e)),
    };
    let mut there = cfg.clone();
    there.resume = None;
    there.alternates = Vec::new();
    if endpoint.contains("://") {
        // A session on the WebSocket framing is sent to the node's WebSocket URL.
        there.transport = Transport::WebSocket;
        there.ws_url = Some(endpoint);
    } else {
        there.addr = tokio::net::lookup_host(endpoint.as_str())
            .await
            .map_err(|e| Error::Transport(format!("voice server {endpoint}: {e}")))?
            .next()
            .ok_or_else(|| Error::Transport(format!("voice server {endpoint}: no address")))?;
        // Our node's WebSocket URL would lead back here, not to the channel's node.
        there.ws_url = None;
    }
    if let Trust::Hashes(h) = &mut there.trust {
        h.extend(
            cert_hashes
                .iter()
                .filter_map(|b| <[u8; 32]>::try_from(b.as_slice()).ok()),
        );
    }
    let remote = connect(&there).await?;
    let mut lane = remote.open_lane(Lane::Voice).await?;
    ask_redundancy(&mut lane, &there).await?;
    match lane.request(join).await? {
        Ok(ResponseBody::VoiceServer { .. }) => Err(Error::Transport(
            "the voice channel moved again while joining; retry".into(),
        )),
        Ok(joined) => Ok(Ok(VoiceJoin {
            remote: Some((remote, lane)),
            joined,
        })),
        Err(e) => Ok(Err(e)),
    }
}
