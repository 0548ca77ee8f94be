class Config {
    private static final String DB_PASSWORD = "j4va-Secret!";
    String password = System.getenv("DB_PASSWORD");
    private String apiKey;
    void set(String password) { this.password = password; }
}
