//! `akanda-agent` with failpoints (`src/failpoint.rs`): the same program, built with the
//! `failpoints` feature, for the crash tests only. Never put it in an image.

include!("../main.rs");
