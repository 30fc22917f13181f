#!/bin/sh
# Render Kong's declarative config: the committed routes and plugins (SRC) plus
# one consumer per entry of API_KEYS ("key:role,key:role", the gateway's format),
# and the service token (INTERNAL_TOKEN) Kong presents to the gRPC adapter.
# Kong's key-auth cannot read keys from env vault references, hence this step.
#   API_KEYS=... INTERNAL_TOKEN=... sh render.sh gateway/kong/kong.yml /tmp/kong.yml
set -euf  # -f: no globbing when API_KEYS is split below
src=${1:?usage: render.sh SRC DEST}
dest=${2:?usage: render.sh SRC DEST}
: "${API_KEYS:?API_KEYS is empty: set it in .env (key:role,...)}"
: "${INTERNAL_TOKEN:?INTERNAL_TOKEN is empty: set it in .env (the service token of the internal services)}"
# It goes into a double-quoted YAML scalar and a sed replacement: plain characters only.
case $INTERNAL_TOKEN in *[!A-Za-z0-9._~-]*)
  echo "render.sh: INTERNAL_TOKEN has characters outside A-Z a-z 0-9 . _ ~ -" >&2; exit 1 ;;
esac

tmp="$dest.tmp"
sed "s/__INTERNAL_TOKEN__/$INTERNAL_TOKEN/g" "$src" >"$tmp"
chmod 600 "$tmp"
printf '\nconsumers:\n' >>"$tmp"
count=0
old_ifs=$IFS
IFS=',
'
for entry in $API_KEYS; do
  IFS=$old_ifs
  entry=$(printf '%s' "$entry" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
  [ -n "$entry" ] || continue
  key=${entry%:*}
  role=${entry##*:}
  case $role in client | dpo | admin) ;; *)
    echo "render.sh: API_KEYS entry with role '$role': must be key:client|dpo|admin" >&2; exit 1 ;;
  esac
  # Keys go into a double-quoted YAML scalar: only characters that need no escaping.
  case $key in '' | *[!A-Za-z0-9._~-]*)
    echo "render.sh: API key for role '$role' is empty or has characters outside A-Z a-z 0-9 . _ ~ -" >&2; exit 1 ;;
  esac
  count=$((count + 1))
  printf '  - username: %s-%d\n    tags: [%s]\n    keyauth_credentials:\n      - key: "%s"\n' \
    "$role" "$count" "$role" "$key" >>"$tmp"
done
[ "$count" -gt 0 ] || { echo "render.sh: API_KEYS holds no key:role entry" >&2; exit 1; }
mv "$tmp" "$dest"
echo "render.sh: $dest with $count consumer(s)" >&2
