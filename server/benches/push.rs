//! Push benchmark (written below).
fn main() {}
