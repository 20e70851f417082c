struct NotDebug;

#[kamisama::main]
fn worker(index: usize) -> Result<(), NotDebug> {
    let _ = index;
    Err(NotDebug)
}
