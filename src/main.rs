//! The `rill` binary: CLI and node assembly. Thin: wiring only.

fn main() {
    println!("rill");
}
