//! Retrieval-augmented generation: the one prompt format that training, evaluation and chat share,
//! and the passage index chat retrieves from.

pub mod bm25;
pub mod hybrid;
pub mod index;
pub mod prompt;
