#!/usr/bin/env bash
# Healthcheck of the TF Serving container: healthy only when every servable named on the command
# line has a version AVAILABLE, as TF Serving's REST status API says (GET /v1/models/<name>).
#
#   bash /config/healthcheck.sh face_detection twingan_latent_encoder ...
#
# HTTP is spoken through bash's /dev/tcp because the CPU image of TF Serving has no curl (the GPU
# image has); bash is in both. TFS_HEALTH_HOST, TFS_HEALTH_PORT and TFS_HEALTH_TIMEOUT (seconds
# per read) point it elsewhere, as the tests do. Exit 0: healthy; 1: not (Docker reserves 2).
set -u
export LC_ALL=C # byte semantics for read -N and the pattern below

host="${TFS_HEALTH_HOST:-127.0.0.1}"
port="${TFS_HEALTH_PORT:-8501}"
timeout="${TFS_HEALTH_TIMEOUT:-5}"

if [ "$#" -eq 0 ]; then
  echo "usage: healthcheck.sh SERVABLE..." >&2
  exit 1
fi

# GET /v1/models/$1; sets $code (HTTP status) and $body. Fails when nothing answers.
fetch_status() {
  local name="$1" status_line header length=""
  code="" body=""
  exec 3<>"/dev/tcp/${host}/${port}" || return 1
  printf 'GET /v1/models/%s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$name" "$host" >&3
  IFS= read -r -t "$timeout" status_line <&3 || { exec 3<&-; return 1; }
  code="${status_line#* }" && code="${code%% *}"
  while IFS= read -r -t "$timeout" header <&3; do
    header="${header%$'\r'}"
    [ -z "$header" ] && break
    case "${header,,}" in
      content-length:*) length="${header#*:}" && length="${length//[[:space:]]/}" ;;
    esac
  done
  # Read the body by its length when given, so a server that keeps the connection open cannot
  # hold the check until its timeout; otherwise up to the end of the stream.
  if [ -n "$length" ]; then
    IFS= read -r -N "$length" -t "$timeout" body <&3
  else
    local line
    while IFS= read -r -t "$timeout" line <&3 || [ -n "$line" ]; do
      body+="$line"$'\n'
      line=""
    done
  fi
  exec 3<&-
  return 0
}

available='"state"[[:space:]]*:[[:space:]]*"AVAILABLE"'
healthy=0
for name in "$@"; do
  if ! fetch_status "$name" 2>/dev/null; then
    echo "$name: no answer from ${host}:${port}" >&2
    healthy=1
  elif [ "$code" != "200" ]; then
    echo "$name: HTTP ${code:-?} $(echo "$body" | tr -s '[:space:]' ' ')" >&2
    healthy=1
  elif [[ ! "$body" =~ $available ]]; then
    # One AVAILABLE version is enough: while a new version loads, the old one keeps serving.
    echo "$name: no version AVAILABLE: $(echo "$body" | tr -s '[:space:]' ' ')" >&2
    healthy=1
  fi
done
exit "$healthy"
