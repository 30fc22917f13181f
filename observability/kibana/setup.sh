#!/usr/bin/env bash
# One-shot setup of the observability profile (docker compose service kibana-setup):
#   1. waits for Elasticsearch and Kibana;
#   2. PUTs the ILM policy and the composable index template for the data stream
#      logs-car_detection-* (Logstash writes logs-car_detection-default);
#   3. imports the data view, saved search, visualisations and dashboard through
#      Kibana's saved-objects _import API with overwrite=true.
# Idempotent: run it again after editing any of the files.
#
# Environment: ELASTICSEARCH_URL (http://elasticsearch:9200), KIBANA_URL (http://kibana:5601),
# SETUP_DIR (directory holding the four files; default: this script's repo layout),
# ES_USER/ES_PASSWORD (optional basic auth for both), WAIT_TIMEOUT_S (300).
set -euo pipefail

ES="${ELASTICSEARCH_URL:-http://elasticsearch:9200}"
KIBANA="${KIBANA_URL:-http://kibana:5601}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${SETUP_DIR:-}" ]]; then
  TEMPLATE="$SETUP_DIR/index-template.json"; ILM="$SETUP_DIR/ilm-policy.json"; NDJSON="$SETUP_DIR/dashboard.ndjson"
else
  TEMPLATE="$HERE/../elasticsearch/index-template.json"; ILM="$HERE/../elasticsearch/ilm-policy.json"; NDJSON="$HERE/dashboard.ndjson"
fi
TIMEOUT="${WAIT_TIMEOUT_S:-300}"
AUTH=()
if [[ -n "${ES_USER:-}" ]]; then AUTH=(-u "$ES_USER:${ES_PASSWORD:-}"); fi

for file in "$TEMPLATE" "$ILM" "$NDJSON"; do
  [[ -f "$file" ]] || { echo "setup: missing $file" >&2; exit 1; }
done

wait_for() {  # name url grep-pattern
  local name=$1 url=$2 pattern=$3 waited=0
  until curl -fsS "${AUTH[@]}" "$url" 2>/dev/null | grep -q "$pattern"; do
    if (( waited >= TIMEOUT )); then echo "setup: $name not ready at $url after ${TIMEOUT}s" >&2; exit 1; fi
    sleep 5; waited=$((waited + 5))
  done
  echo "setup: $name is up"
}

# put METHOD URL FILE: fails loudly with Elasticsearch's/Kibana's answer.
put() {
  local method=$1 url=$2 file=$3 answer status
  answer=$(curl -sS "${AUTH[@]}" -X "$method" "$url" -H 'Content-Type: application/json' --data-binary "@$file" \
           -w '\n%{http_code}')
  status=${answer##*$'\n'}
  if [[ "$status" != 2* ]]; then echo "setup: $method $url -> $status: ${answer%$'\n'*}" >&2; exit 1; fi
  echo "setup: $method $url -> $status"
}

wait_for Elasticsearch "$ES/_cluster/health" '"status":"\(green\|yellow\)"'
put PUT "$ES/_ilm/policy/car-detection-logs" "$ILM"
put PUT "$ES/_index_template/car-detection-logs" "$TEMPLATE"

wait_for Kibana "$KIBANA/api/status" '"level":"available"'
answer=$(curl -sS "${AUTH[@]}" -X POST "$KIBANA/api/saved_objects/_import?overwrite=true" \
         -H 'kbn-xsrf: true' --form "file=@$NDJSON" -w '\n%{http_code}')
status=${answer##*$'\n'}
body=${answer%$'\n'*}
if [[ "$status" != 200 ]] || ! grep -q '"success":true' <<<"$body"; then
  echo "setup: saved-objects import failed ($status): $body" >&2
  exit 1
fi
echo "setup: imported $(grep -o '"successCount":[0-9]*' <<<"$body" | cut -d: -f2) saved objects; dashboard \"Car detection — operations\" at $KIBANA/app/dashboards#/view/car-detection-operations"
