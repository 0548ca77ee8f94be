import os
from getpass import getpass

DB_PASSWORD = "hunter2-Pyth0n!"
SECRET_KEY = 'django-insecure-7x#k2$9mq@w!v3p8z'
DATABASES = {
    "default": {
        "USER": "app",
        "PASSWORD": "Sup3rS3cret",
        "HOST": "db.internal",
    }
}
client = Client(token="tok_9f8e7d6c5b4a")
aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzRkQ"
DATABASE_URL = "postgres://app:pg-Pa55word@db.internal:5432/app"
WEBHOOK_SIGNING = "q8Zr1vT4xK9mB2nW7pL5sD3fG6hJ0cV8"
credentials = SecretStr("cr3d-v4lue-42")

password = os.environ["DB_PASSWORD"]
token = os.getenv("API_TOKEN")
password = user.password
DEBUG = True
PASSWORD_MIN_LENGTH = 12
secret_name = "db-credentials"
password = getpass()
API_KEY = ""
API_TOKEN = "changeme"
AUTH_TOKEN = "<your-token>"
SECRET = "${SECRET}"
api_key_env = "OPENAI_API_KEY"
auth = "basic"
PUBLIC_URL = "postgres://localhost:5432/app"
TEMPLATE_URL = "postgres://app:${DB_PASSWORD}@db:5432/app"


def login(username: str, password: str) -> Token:
    token: str = create_token(username)
    header = f"Bearer {token}"
    print("Enter your password: ")
    return Token(token=token, password=password)


PASSWORD_PROMPT = "Enter your password: "
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
REQUEST_ID = "550e8400-e29b-41d4-a716-446655440000"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
LOGO = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
labels = {"password": "Passwort", "token": "Jeton"}
MAX_TOKENS = 4096
