#!/usr/bin/env bash
# Prints the SPKI pin (base64 SHA-256 of the DER SubjectPublicKeyInfo,
# RFC 7858 §4.2) of a certificate, for dotproxy's `^PIN` / `pins = [...]`.
#
#   tools/spki-pin.sh cert.pem              # a PEM file (first certificate)
#   tools/spki-pin.sh --chain chain.pem     # every certificate in a PEM bundle
#   tools/spki-pin.sh --server 127.0.0.1:853 [NAME]
#                                           # each certificate a DoT server presents
#
# Pin the issuing CA's key as a backup as well as the leaf's, so a leaf key
# rotation does not take the upstream out.
set -euo pipefail

pin_of_pem() {  # stdin: one PEM certificate
  openssl x509 -pubkey -noout | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | openssl enc -base64
}

each_certificate() {  # stdin: PEM bundle; prints "pin  subject" per certificate
  local block="" line
  while IFS= read -r line; do
    block+="$line"$'\n'
    if [[ "$line" == "-----END CERTIFICATE-----" ]]; then
      local subject
      subject=$(printf '%s' "$block" | openssl x509 -noout -subject)
      printf '%s  %s\n' "$(printf '%s' "$block" | pin_of_pem)" "$subject"
      block=""
    fi
  done
}

case "${1:-}" in
  --server)
    [[ $# -ge 2 ]] || { echo "usage: $0 --server HOST:PORT [NAME]" >&2; exit 2; }
    sni=()
    [[ $# -ge 3 ]] && sni=(-servername "$3")
    openssl s_client -connect "$2" "${sni[@]}" -showcerts </dev/null 2>/dev/null | each_certificate
    ;;
  --chain)
    [[ $# -eq 2 ]] || { echo "usage: $0 --chain BUNDLE.pem" >&2; exit 2; }
    each_certificate < "$2"
    ;;
  ""|-h|--help)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    [[ -r "$1" ]] || { echo "$0: cannot read $1" >&2; exit 2; }
    pin_of_pem < "$1"
    ;;
esac
