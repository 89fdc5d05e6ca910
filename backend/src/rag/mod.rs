//! Retrieval-augmented generation: the one prompt format that training, evaluation and chat share.
//! (The vector index and the chat loop come here too.)

pub mod prompt;
