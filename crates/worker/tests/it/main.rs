//! The pipeline's integration tests, one test binary: the generated
//! workload through the real worker code over in-memory stores.

mod pipeline_memory;
