const DB_PASSWORD: &str = "hunter2-rust";
static API_TOKEN: &'static str = "r8Kq2LmZ7vX1";
let client_secret = String::from("cs_9x8y7z6w5v");
let access_key = "AKx9-dk38-qpz1".to_string();
let signing_key = b"s1gn1ng-k3y-bytes";

let password = env!("DB_PASSWORD");
let token = std::env::var("TOKEN").unwrap_or_default();
pub struct Config {
    pub token: String,
    pub api_key: Option<String>,
    password: SecretString,
}
fn connect(password: &str) -> Result<(), Error> {
    Self { token: token.clone(), password }
}
let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
assert_eq!(sha256(b"test"), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
let token = Token::new(&settings.token);
if password.is_empty() {
let api_key = "";
const TOKEN_ENV: &str = "GITHUB_TOKEN";
#[error("invalid token: {0}")]
