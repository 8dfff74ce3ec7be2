//! Calibration: the data (`data.rs`), the statistics observed on each
//! linear layer's input (`stats.rs`), and the sequential block-by-block
//! pipeline that quantizes a model with them (`pipeline.rs`), which
//! resumes after the last finished block (`checkpoint.rs`).
pub mod awq_pipeline;
pub mod checkpoint;
pub mod data;
pub mod pipeline;
pub mod prepare;
pub mod stats;
pub mod w8;
