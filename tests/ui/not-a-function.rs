#[kamisama::main]
struct Worker;
