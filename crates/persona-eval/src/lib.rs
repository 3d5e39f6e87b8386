//! Evaluation of personalized generation (the Celeb Basis protocol).
