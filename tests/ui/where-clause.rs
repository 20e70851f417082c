#[kamisama::main]
fn worker()
where
    u8: Copy,
{
}
