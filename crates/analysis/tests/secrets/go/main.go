package main

const dbPassword = "g0-s3cret-pass"
var apiKey = "ak_48fj29dk3l"
cfg := Config{Password: "pa55-w0rd-go"}
token := "8f14e45fceea167a5a36dedd4bea2543"

password := os.Getenv("DB_PASSWORD")
type Config struct {
	Password string `json:"password"`
	Token    string `yaml:"token"`
}
cfg := Config{Password: password}
if token == "" {
var secret []byte
