//! `sluice replay`: dead-letter records sent back through a pipeline.
