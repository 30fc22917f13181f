#!/usr/bin/env bash
# A local certificate authority and one server certificate for 127.0.0.1 / localhost,
# for trying and testing TLS on every hop (docs/reliability.md, "TLS"). Never for production.
#
#   scripts/make_dev_certs.sh [DIR]     # default DIR: $VAR_DIR/tls or <repo>/var/tls
#
# Writes DIR/ca.pem (TLS_CA_FILE), DIR/server.pem (TLS_CERT_FILE) and DIR/server.key
# (TLS_KEY_FILE, mode 0600). Existing files are kept; delete DIR to start over.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
DIR="${1:-${VAR_DIR:-$REPO_ROOT/var}/tls}"
DAYS="${CERT_DAYS:-30}"
# Names the server certificate is valid for; compose adds its service names.
SANS="${CERT_SANS:-IP:127.0.0.1,DNS:localhost}"
mkdir -p "$DIR"
chmod 700 "$DIR"
cd "$DIR"

if [[ -s ca.pem && -s server.pem && -s server.key ]]; then
  echo "certificates already in $DIR"
  exit 0
fi

umask 077
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$DAYS" \
  -keyout ca.key -out ca.pem -subj "/CN=car-detection dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 -keyout server.key -out server.csr \
  -subj "/CN=localhost" 2>/dev/null
cat > server.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$SANS
EXT
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$DAYS" -sha256 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
chmod 644 ca.pem server.pem
echo "CA:          $DIR/ca.pem      (TLS_CA_FILE)"
echo "certificate: $DIR/server.pem  (TLS_CERT_FILE, GRPC_TLS_CERT_FILE)"
echo "key:         $DIR/server.key  (TLS_KEY_FILE, GRPC_TLS_KEY_FILE)"
