//! Building blocks shared by the models: named-weight loading, layers, attention and its steering interface.

mod attention;
mod buffers;
mod conv;
mod few_rows;
pub mod grad;
mod kernels;
mod layers;
mod norm_cpu;
pub mod sdpa;
mod sdpa_cpu;
mod weights;

pub use attention::{attend, Attention, AttentionControl, Condition, LayerId};
pub use grad::softmax_last_dim;
pub use layers::{
    conv_input_grad, conv_input_grad_with, geglu_linear, norm_act_conv, sigmoid, upsample_nearest,
    Activation, Conv2d, GroupNorm, LayerNorm, Linear, StridedGrad,
};
pub use weights::{all_finite, read_json, Weights};
