//! Building blocks shared by the models: named-weight loading, layers, attention and its steering interface.

mod attention;
mod layers;
mod weights;

pub use attention::{attend, Attention, AttentionControl, Condition, LayerId};
pub use layers::{sigmoid, softmax_last_dim, Activation, Conv2d, GroupNorm, LayerNorm, Linear};
pub use weights::{read_json, Weights};
