#!/usr/bin/env bash
# Generates a throwaway PKI for tests/tls/session_test.cc (run by meson at
# build time; nothing here is committed):
#   ca.pem/ca.key              trust anchor the client loads
#   server.pem/server.key      EC P-256, SAN DNS:upstream.test,IP:127.0.0.1, signed by ca
#   other_ca.pem/other_ca.key  an unrelated CA
#   other_server.pem/.key      same names, signed by other_ca (must be rejected)
#   client.pem/client.key      EC P-256 client certificate (clientAuth), signed by ca
#   other_client.pem/.key      a client certificate signed by other_ca (refused)
#   server.pin, other_server.pin  base64 SHA-256 of each server's DER SPKI
#                              (RFC 7858 §4.2; same as tools/spki-pin.sh)
# Usage: make_test_pki.sh OUTPUT_DIR
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTPUT_DIR" >&2
  exit 2
fi
out=$1
mkdir -p "$out"
cd "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

make_ca() {  # name subject
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1.key" -out "$1.pem" -days 3650 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

make_server() {  # name ca
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1.key" -out "$work/$1.csr" -subj "/CN=upstream.test" 2>/dev/null
  cat >"$work/$1.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:upstream.test,IP:127.0.0.1
EXT
  openssl x509 -req -in "$work/$1.csr" -CA "$2.pem" -CAkey "$2.key" \
    -CAcreateserial -CAserial "$work/$2.srl" -days 3650 -sha256 \
    -extfile "$work/$1.ext" -out "$1.pem" 2>/dev/null
}

make_client() {  # name ca
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1.key" -out "$work/$1.csr" -subj "/CN=client.test" 2>/dev/null
  cat >"$work/$1.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
EXT
  openssl x509 -req -in "$work/$1.csr" -CA "$2.pem" -CAkey "$2.key" \
    -CAcreateserial -CAserial "$work/$2.srl" -days 3650 -sha256 \
    -extfile "$work/$1.ext" -out "$1.pem" 2>/dev/null
}

make_ca ca "dotproxy test CA"
make_server server ca
make_ca other_ca "dotproxy other test CA"
make_server other_server other_ca
make_client client ca
make_client other_client other_ca
for name in server other_server; do
  openssl x509 -in "$name.pem" -pubkey -noout | openssl pkey -pubin -outform DER |
    openssl dgst -sha256 -binary | base64 >"$name.pin"
done
