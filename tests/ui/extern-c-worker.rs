#[kamisama::main]
extern "C" fn worker() {}
