#![deny(unused_must_use)]

fn worker(_index: usize) {}

fn main() {
    kamisama::Supervisor::new().instances(4).run(worker);
}
