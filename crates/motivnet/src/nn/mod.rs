//! The model's building blocks above the ops: parameters by checkpoint name with their seeded
//! init ([`params`]), Linear, LayerNorm, ReLU, dropout, attention and the train/eval mode
//! ([`layers`]), and the cross-entropy loss ([`loss`]).

pub mod layers;
pub mod loss;
pub mod params;
