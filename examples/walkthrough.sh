#!/usr/bin/env bash
# A first session against a running Orchestra, with curl only:
# register (the first account becomes admin), create an agent from
# examples/agents/researcher.json, start a conversation, post a message,
# read it back, run a sandboxed tool, save a note, grant the http-fetch
# plugin a host, and create an API key.
#
#   ./scripts/serve &              # in another terminal
#   ./examples/walkthrough.sh      # ORCHESTRA_URL defaults to http://127.0.0.1:8080
set -euo pipefail
cd "$(dirname "$0")"
url=${ORCHESTRA_URL:-http://127.0.0.1:8080}
email=${ORCHESTRA_EMAIL:-admin@example.com}
password=${ORCHESTRA_PASSWORD:-change me at once}

field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }
api() { curl -sS -H 'Content-Type: application/json' -H "Authorization: Bearer ${token:-}" "$@"; }

echo "1. register $email (or log in if it exists)"
body="{\"email\":\"$email\",\"password\":\"$password\"}"
tokens=$(curl -sS -H 'Content-Type: application/json' -d "$body" "$url/api/v1/auth/register")
case "$tokens" in
  *access_token*) ;;
  *) tokens=$(curl -sS -H 'Content-Type: application/json' -d "$body" "$url/api/v1/auth/login") ;;
esac
token=$(printf '%s' "$tokens" | field access_token)
[ -n "$token" ] || { echo "could not log in: $tokens" >&2; exit 1; }

echo "2. create an agent"
agent=$(api -d @agents/researcher.json "$url/api/v1/agents")
case "$agent" in
  *'"error":"conflict"'*) agent=$(api "$url/api/v1/agents?q=researcher") ;;
esac
agent_id=$(printf '%s' "$agent" | field id | head -n 1)
echo "   agent $agent_id"

echo "3. start a conversation and post a message"
conversation=$(api -d "{\"agent_id\":\"$agent_id\",\"title\":\"First steps\"}" "$url/api/v1/conversations")
conversation_id=$(printf '%s' "$conversation" | field id)
api -d '{"content":"What is WebAssembly?"}' "$url/api/v1/conversations/$conversation_id/messages" >/dev/null
echo "   conversation $conversation_id"

echo "4. read the messages back"
api "$url/api/v1/conversations/$conversation_id/messages"
echo

echo "5. run a tool in the sandbox"
api -d '{"arguments":{"expression":"2 * (3 + 4) ^ 2"}}' "$url/api/v1/tools/calculator__evaluate/invoke"
echo
api -d '{"arguments":{"title":"walkthrough","body":"Orchestra runs every tool in a fresh WebAssembly instance."}}' \
  "$url/api/v1/tools/notes__save/invoke"
echo

echo "6. grant the http-fetch plugin one host (admins), and look at its rights"
api -X PATCH -d '{"grants":{"http_hosts":["example.com"]}}' "$url/api/v1/plugins/http-fetch" \
  | sed -n 's/.*\("effective":{[^}]*}\).*/   \1/p'

echo "7. create an API key (shown once)"
api -d '{"name":"walkthrough"}' "$url/api/v1/api-keys" | field key
echo "done: browse the API at $url/docs"
