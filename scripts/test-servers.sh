#!/usr/bin/env bash
# Local object-store servers for tailor's integration tests (127.0.0.1 only).
#
#   scripts/test-servers.sh install   # venv + npm prefix under .tools/ (idempotent, quick when done)
#   scripts/test-servers.sh start     # start servers, create bucket "tailor-test", print `export ...` lines
#   scripts/test-servers.sh env       # print the `export ...` lines again
#   scripts/test-servers.sh status    # show which servers answer
#   scripts/test-servers.sh stop      # stop them (data is discarded)
#
# Typical use:   eval "$(scripts/test-servers.sh start)" && cargo test ... ; scripts/test-servers.sh stop
#
# Servers:
#   S3    moto (PyPI "moto[server]"), S3 service only           127.0.0.1:$TAILOR_S3_PORT    (default 29100)
#   Azure azurite-blob (npm "azurite"), blob service only       127.0.0.1:$TAILOR_AZURE_PORT (default 29101)
#   GCS   GCS XML-API shim: moto's S3 engine in-process behind a small WSGI
#         middleware that maps the x-goog-* headers object_store's GCS client
#         sends onto their x-amz-* equivalents                  127.0.0.1:$TAILOR_GCS_PORT   (default 29102)
#         (No GCS emulator on PyPI/npm speaks the XML API object_store >= 0.6 uses;
#          see the note at the end of this file.)
#   Proxy scripts/fault-proxy.py in front of S3: injects 503s, resets, short
#         bodies and delays by rule, for the retry tests  127.0.0.1:$TAILOR_FAULT_PROXY_PORT (default 29103)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="$TOOLS/venv"
NODE_PREFIX="$TOOLS/node"
RUN="$TOOLS/run"
BUCKET="${TAILOR_TEST_BUCKET:-tailor-test}"
HOST=127.0.0.1
# Fixed ports below Linux's ephemeral range (32768-60999): a port in it can
# be the local end of any outgoing connection when the server starts (a
# run failed so: Prometheus's bind to 41910, address already in use).
S3_PORT="${TAILOR_S3_PORT:-29100}"
AZ_PORT="${TAILOR_AZURE_PORT:-29101}"
GCS_PORT="${TAILOR_GCS_PORT:-29102}"
PROXY_PORT="${TAILOR_FAULT_PROXY_PORT:-29103}"

MOTO_SPEC="moto[server]==5.2.5"
AZURITE_SPEC="azurite@3.37.0"

# Well-known Azurite dev-account key (public, documented by Microsoft).
AZ_ACCOUNT=devstoreaccount1
AZ_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

log() { echo "test-servers: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- install
write_helpers() {
  mkdir -p "$TOOLS/bin"
  # GCS XML-API shim over moto's S3 backend (single process, in memory).
  cat > "$TOOLS/bin/gcs_xml_shim.py" <<'PY'
"""Minimal GCS *XML API* endpoint for object_store's GCS client, built on moto's S3 engine.

object_store's GoogleCloudStorage talks the GCS XML API (path-style URLs, ListObjectsV2 XML,
XML multipart uploads), which is wire-compatible with S3 except for a few x-goog-* headers.
This maps those headers and runs moto's S3 Flask app.  Not a general GCS emulator: no JSON API;
generations are moto's version ids (the bucket is versioned).
"""
import argparse
import os
from urllib.parse import quote, unquote

from moto.moto_server.werkzeug_app import create_backend_app
from werkzeug.serving import run_simple
from werkzeug.test import Client

META_IN, META_OUT = "HTTP_X_GOOG_META_", "x-amz-meta-"
FAKE_SIGV4 = ("AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/s3/aws4_request, "
              "SignedHeaders=host, Signature=" + "0" * 64)
PRECONDITION_FAILED = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PreconditionFailed</Code>"
    b"<Message>At least one of the pre-conditions you specified did not hold.</Message></Error>"
)


class GcsXmlShim:
    def __init__(self, app):
        self.app = app
        self.client = Client(app)

    def __call__(self, environ, start_response):
        # object_store percent-encodes bucket and object (incl. "/" as %2F), as GCS accepts;
        # moto parses the raw URI, so hand it a canonical, S3-style encoding instead.
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        path = unquote(raw.split("?", 1)[0])
        qs = environ.get("QUERY_STRING", "")
        canon = quote(path, safe="/~")
        environ["PATH_INFO"] = path.encode("utf-8").decode("latin-1")
        environ["RAW_URI"] = environ["REQUEST_URI"] = canon + ("?" + qs if qs else "")

        for k in [k for k in environ if k.startswith(META_IN)]:
            environ["HTTP_X_AMZ_META_" + k[len(META_IN):]] = environ.pop(k)
        src = environ.pop("HTTP_X_GOOG_COPY_SOURCE", None)
        if src is not None:
            environ["HTTP_X_AMZ_COPY_SOURCE"] = quote(unquote(src), safe="/~")
        environ.pop("HTTP_X_GOOG_STORAGE_CLASS", None)
        # GCS clients send "Bearer ..." or nothing; moto treats unsigned requests as anonymous
        # (403 on private objects) but does not verify SigV4 signatures, so present a dummy one.
        environ["HTTP_AUTHORIZATION"] = FAKE_SIGV4
        gen = environ.pop("HTTP_X_GOOG_IF_GENERATION_MATCH", None)
        if gen is not None:
            # Generations are moto's version ids (the bucket is versioned). 0 means "must not
            # exist"; another value "must be this generation". Checked with a HEAD first: not
            # atomic, which the tests' races (one process waits for the other) do not need.
            head = self.client.head(canon, headers={"Authorization": FAKE_SIGV4})
            exists = head.status_code == 200
            if gen.strip() == "0":
                failed = exists
            else:
                failed = not exists or head.headers.get("x-amz-version-id") != gen.strip()
            if failed:
                start_response("412 Precondition Failed", [("Content-Type", "application/xml")])
                return [PRECONDITION_FAILED]

        def sr(status, headers, exc_info=None):
            out = []
            for k, v in headers:
                lk = k.lower()
                if lk.startswith(META_OUT):
                    k = "x-goog-meta-" + k[len(META_OUT):]
                elif lk == "x-amz-version-id":
                    k = "x-goog-generation"
                out.append((k, v))
            return start_response(status, out, exc_info)

        return self.app(environ, sr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    os.environ.setdefault("MOTO_PORT", str(a.port))
    run_simple(a.host, a.port, GcsXmlShim(create_backend_app("s3")), threaded=True)
PY
  # Azure SharedKey-signed "create container" (stdlib only).
  cat > "$TOOLS/bin/azure_create_container.py" <<'PY'
import base64, hashlib, hmac, sys, urllib.request, urllib.error
from email.utils import formatdate

base, account, key, container = sys.argv[1:5]       # base = http://127.0.0.1:PORT
date, version = formatdate(usegmt=True), "2021-08-06"
resource = f"/{account}/{account}/{container}\nrestype:container"
ctype = "application/octet-stream"   # urllib would otherwise add a form content-type
# VERB, Content-Encoding, -Language, -Length (empty for 0), -MD5, Content-Type, Date, If-*, Range
to_sign = "PUT\n\n\n\n\n" + ctype + "\n" + "\n" * 6 + f"x-ms-date:{date}\nx-ms-version:{version}\n" + resource
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(f"{base}/{account}/{container}?restype=container", method="PUT", data=b"",
    headers={"Content-Type": ctype, "x-ms-date": date, "x-ms-version": version, "Authorization": f"SharedKey {account}:{sig}"})
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    if e.code == 409:      # ContainerAlreadyExists
        print(409)
    else:
        sys.exit(f"create container failed: {e.code} {e.read()[:300]!r}")
PY
}

cmd_install() {
  mkdir -p "$TOOLS" "$RUN"
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c 'import moto, flask, werkzeug, xmltodict; assert moto.__version__ == "5.2.5"' 2>/dev/null; then
    log "pip install $MOTO_SPEC"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$MOTO_SPEC"
  fi
  if [ ! -x "$NODE_PREFIX/bin/azurite-blob" ] || \
     [ "$("$NODE_PREFIX/bin/azurite-blob" --version 2>/dev/null)" != "${AZURITE_SPEC#azurite@}" ]; then
    command -v npm >/dev/null || die "npm not found (apt-get install nodejs npm)"
    log "npm install $AZURITE_SPEC into $NODE_PREFIX"
    npm install -g --silent --no-fund --no-audit --prefix "$NODE_PREFIX" "$AZURITE_SPEC" >&2
  fi
  write_helpers
  log "installed: moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)'), azurite $("$NODE_PREFIX/bin/azurite-blob" --version)"
}

# ---------------------------------------------------------------- start/stop
is_running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

launch() { # name port cmd...
  local name=$1 port=$2; shift 2
  if is_running "$name"; then log "$name already running (pid $(cat "$RUN/$name.pid"))"; return; fi
  port_busy "$port" && die "port $HOST:$port is in use by something else (set TAILOR_*_PORT)"
  setsid "$@" >"$RUN/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
  log "started $name pid $! on $HOST:$port (log $RUN/$name.log)"
}

wait_http() { # name url
  local name=$1 url=$2 i
  for i in $(seq 1 150); do
    if curl -s -o /dev/null --max-time 2 "$url"; then return 0; fi
    is_running "$name" || { tail -20 "$RUN/$name.log" >&2; die "$name exited"; }
    sleep 0.2
  done
  tail -20 "$RUN/$name.log" >&2; die "$name did not answer on $url within 30s"
}

s3_make_bucket() { # port  (moto does not verify signatures; unsigned PUT is fine)
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://$HOST:$1/$BUCKET")
  case "$code" in 200|409) ;; *) die "create bucket on :$1 returned HTTP $code";; esac
}

cmd_start() {
  [ -x "$VENV/bin/python" ] && [ -x "$NODE_PREFIX/bin/azurite-blob" ] && [ -f "$TOOLS/bin/gcs_xml_shim.py" ] \
    || die "not installed; run: $0 install"
  write_helpers   # cheap; keeps .tools/bin in sync with this script
  mkdir -p "$RUN"
  # moto keeps objects in SpooledTemporaryFiles (spill to disk past the buffer size): keep memory modest.
  export MOTO_S3_DEFAULT_KEY_BUFFER_SIZE="${MOTO_S3_DEFAULT_KEY_BUFFER_SIZE:-1048576}"
  export TMPDIR="$RUN/tmp"; mkdir -p "$TMPDIR"

  launch s3 "$S3_PORT" env MOTO_PORT="$S3_PORT" "$VENV/bin/moto_server" -H "$HOST" -p "$S3_PORT"

  if ! is_running azure; then rm -rf "$RUN/azurite-data"; fi
  mkdir -p "$RUN/azurite-data"
  launch azure "$AZ_PORT" env NODE_OPTIONS=--max-old-space-size=256 "$NODE_PREFIX/bin/azurite-blob" \
    --blobHost "$HOST" --blobPort "$AZ_PORT" --location "$RUN/azurite-data" \
    --skipApiVersionCheck --loose --disableTelemetry --disableProductStyleUrl --silent

  launch gcs "$GCS_PORT" "$VENV/bin/python" "$TOOLS/bin/gcs_xml_shim.py" --host "$HOST" --port "$GCS_PORT"
  # The fault-injecting proxy in front of S3 (scripts/fault-proxy.py), for the retry tests.
  launch proxy "$PROXY_PORT" python3 "$ROOT/scripts/fault-proxy.py" --host "$HOST" --port "$PROXY_PORT" \
    --upstream "http://$HOST:$S3_PORT"

  wait_http s3 "http://$HOST:$S3_PORT/"
  wait_http azure "http://$HOST:$AZ_PORT/"
  wait_http gcs "http://$HOST:$GCS_PORT/"
  wait_http proxy "http://$HOST:$PROXY_PORT/__faults__/stats"

  s3_make_bucket "$S3_PORT"
  s3_make_bucket "$GCS_PORT"
  # GCS objects have generations: moto's version ids stand for them.
  curl -s -o /dev/null -X PUT "http://$HOST:$GCS_PORT/$BUCKET?versioning" -H 'Content-Type: application/xml' \
    --data '<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>' 
  "$VENV/bin/python" "$TOOLS/bin/azure_create_container.py" "http://$HOST:$AZ_PORT" "$AZ_ACCOUNT" "$AZ_KEY" "$BUCKET" >/dev/null

  cat > "$RUN/gcs-service-account.json" <<EOF
{"client_email": "", "private_key": "", "private_key_id": "", "disable_oauth": true, "gcs_base_url": "http://$HOST:$GCS_PORT"}
EOF
  log "ready: s3://$BUCKET az://$BUCKET gs://$BUCKET"
  cmd_env
}

cmd_env() {
  cat <<EOF
export TAILOR_TEST_BUCKET=$BUCKET
export AWS_ENDPOINT=http://$HOST:$S3_PORT
export AWS_ALLOW_HTTP=true
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_BUCKET=$BUCKET
export AZURE_STORAGE_USE_EMULATOR=true
export AZURITE_BLOB_STORAGE_URL=http://$HOST:$AZ_PORT
export AZURE_STORAGE_ACCOUNT_NAME=$AZ_ACCOUNT
export AZURE_STORAGE_ACCOUNT_KEY=$AZ_KEY
export AZURE_CONTAINER_NAME=$BUCKET
export GOOGLE_SERVICE_ACCOUNT=$RUN/gcs-service-account.json
export TAILOR_FAULT_PROXY=http://$HOST:$PROXY_PORT
export GOOGLE_BASE_URL=http://$HOST:$GCS_PORT
export GOOGLE_BUCKET=$BUCKET
EOF
}

cmd_status() {
  local n p rc=0
  for n in s3:$S3_PORT azure:$AZ_PORT gcs:$GCS_PORT proxy:$PROXY_PORT; do
    p=${n#*:}; n=${n%%:*}
    if is_running "$n" && curl -s -o /dev/null --max-time 2 "http://$HOST:$p/"; then
      echo "$n: up (pid $(cat "$RUN/$n.pid"), http://$HOST:$p)"
    else echo "$n: down"; rc=1; fi
  done
  return $rc
}

cmd_stop() {
  local n pid i
  for n in s3 azure gcs proxy; do
    [ -f "$RUN/$n.pid" ] || continue
    pid=$(cat "$RUN/$n.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true   # setsid => own process group
      for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; }
      log "stopped $n (pid $pid)"
    fi
    rm -f "$RUN/$n.pid"
  done
  rm -rf "$RUN/azurite-data" "$RUN/tmp"
}

case "${1:-}" in
  install) cmd_install ;;
  start)   cmd_start ;;
  env)     cmd_env ;;
  status)  cmd_status ;;
  stop)    cmd_stop ;;
  *) echo "usage: $0 {install|start|env|status|stop}" >&2; exit 2 ;;
esac

# Note on GCS emulators (checked against object_store 0.13.2):
#  * object_store's GCS client uses only the GCS XML API: GET /<bucket>?list-type=2,
#    XML multipart (POST ?uploads / PUT ?partNumber&uploadId / POST ?uploadId),
#    PUT with x-goog-copy-source, HEAD/GET/PUT/DELETE /<bucket>/<object>.
#  * PyPI gcp-storage-emulator (2026.7.19) implements the JSON API plus only GET/PUT on
#    /<bucket>/<object>, matched on the *undecoded* path; object_store encodes "-", "." and
#    "/" (%2D %2E %2F), so every request, even GET/PUT, gets 501 Not Implemented.
#  * object_store 0.13.2 bug (apache/arrow-rs-object-store#712, fixed by PR #713): on GCS,
#    copy()/rename() send x-goog-if-generation-match: 0 (fail with AlreadyExists if the
#    destination exists) and copy_if_not_exists() sends none (overwrites). The shim
#    reproduces real GCS here, so tests see the same behaviour as production.
#  * fsouza/fake-gcs-server (the usual choice, Go/docker) is not on PyPI/npm, and
#    upstream lacks XML list/multipart too (object_store CI uses a patched fork).
