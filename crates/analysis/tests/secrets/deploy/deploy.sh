#!/bin/sh
export DB_PASSWORD='sh-Pa55w0rd'
export REGISTRY_TOKEN="rt_7a8b9c0d1e"
curl -H "Authorization: Bearer ${API_TOKEN}" https://api.example.com/
PASSWORD=$(cat /run/secrets/db)
export TOKEN="$GITHUB_TOKEN"
mysql --password="$DB_PASSWORD" app
docker login -u ci --password-stdin < token.txt
