//! edgeq host library
pub mod import;
