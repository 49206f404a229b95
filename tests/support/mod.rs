//! Helpers shared by the integration tests; each test binary uses only some of them.
#![allow(dead_code)]

pub mod gateway;
pub mod interop;
pub mod mock_upstream;
pub mod signin;
