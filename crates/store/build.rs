// `sqlx::migrate!` embeds the migration files at compile time but does not tell cargo to
// rebuild when one is added; this does.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
