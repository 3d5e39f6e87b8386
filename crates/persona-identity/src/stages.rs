//! SeFi-IDE's per-stage tokens as identity files store them, and the [`LearnedTokens`] generation builds from
//! them (the method itself is `persona_train::methods::sefi`).

use persona_diffusion::pipeline::LearnedTokens;

use crate::{Identity, IdentityError as Error, Result};

/// Identity-file tensor of the per-stage key embeddings `[S, n, d]`.
pub const KEYS: &str = "stages.keys";
/// Identity-file tensor of the per-stage value embeddings `[S, n, d]`.
pub const VALUES: &str = "stages.values";
/// SDXL: identity-file tensor of the per-stage key embeddings of `text_encoder_2` `[S, n, d2]`.
pub const KEYS_2: &str = "stages.keys_2";
/// SDXL: identity-file tensor of the per-stage value embeddings of `text_encoder_2` `[S, n, d2]`.
pub const VALUES_2: &str = "stages.values_2";

/// The per-stage tokens of a SeFi identity (`None` for a plain token identity); an error naming the identity
/// when its stage tensors are inconsistent.
pub fn staged_tokens(identity: &Identity) -> Result<Option<LearnedTokens>> {
    let m = &identity.modules;
    let named =
        |e: persona_diffusion::Error| Error::Invalid(format!("identity {}: {e}", identity.token));
    let names = identity.tokens.clone();
    match (
        m.get(KEYS),
        m.get(VALUES),
        m.get(KEYS_2),
        m.get(VALUES_2),
        identity.is_sdxl(),
    ) {
        (None, None, None, None, _) => Ok(None),
        (Some(k), Some(v), None, None, false) => {
            LearnedTokens::staged(names, k, v).map(Some).map_err(named)
        }
        (Some(k), Some(v), Some(k2), Some(v2), true) => {
            LearnedTokens::staged_sdxl(names, (k, v), (k2, v2))
                .map(Some)
                .map_err(named)
        }
        _ => Err(Error::Invalid(format!(
            "identity {} has an incomplete set of stage tensors ({KEYS}, {VALUES}{})",
            identity.token,
            if identity.is_sdxl() {
                format!(", {KEYS_2}, {VALUES_2}")
            } else {
                String::new()
            }
        ))),
    }
}
