#!/usr/bin/env bash
# ./setup.sh serve   set up, then serve the API on http://127.0.0.1:${PORT:-5000}
# ./setup.sh test    set up, then run the whole test suite (extra arguments go to pytest)
#
# Set-up: a virtual environment in .venv with requirements.txt installed (and,
# for test, the test and lint tools of requirements-dev.txt), the database
# upgraded to the latest migration, the sample data loaded when the database is
# empty. Each step is skipped when already done, so a second run is fast and
# harmless.
set -euo pipefail
cd "$(dirname "$0")"

usage() { echo "usage: ./setup.sh serve|test [pytest arguments]" >&2; exit 2; }
[ $# -ge 1 ] || usage
mode=$1; shift
case $mode in serve|test) ;; *) usage ;; esac

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup.sh: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$python" -m venv .venv
fi
# Install a requirements file only when it, or requirements.txt that it
# includes, changed since its last install (a stamp per file).
install() {
  local file=$1 stamp=.venv/.$1.sha256 want
  want=$(.venv/bin/python -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(f,"rb").read() for f in sys.argv[1:])).hexdigest())' requirements.txt "$file")
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== installing $file"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$file"
    echo "$want" > "$stamp"
  fi
}
install requirements.txt
if [ "$mode" = test ]; then
  install requirements-dev.txt
fi

export FLASK_APP=app
flask=.venv/bin/flask
# A set-up step's output, less Alembic's INFO lines.
quietly() {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }
  echo "$out" | grep -v -e '^INFO' || true
}
# Stops the set-up with one line, not a traceback, when the database that the
# variable names (DATABASE_URL: as the app reads it, .env included) cannot be
# reached; for a PostgreSQL database that does not exist, how to create it.
check_database() {
  .venv/bin/python - "$1" <<'PYTHON'
import logging
import os
import re
import sys

logging.disable(logging.CRITICAL)  # a probe: none of the app's start-up lines
from app import create_app
from models import db

variable = sys.argv[1]
app = create_app() if variable == "DATABASE_URL" else create_app({"DATABASE_URL": os.environ[variable]})
with app.app_context():
    url = db.engine.url
    try:
        db.engine.connect().close()
    except Exception as error:  # any failure: said in one line
        reason = " ".join(str(getattr(error, "orig", error)).split())
        if url.get_backend_name() == "postgresql" and re.search(r'database ".*" does not exist', reason):
            create = " ".join(
                ["createdb", *(f"-h {url.host} -p {url.port or 5432}".split() if url.host else [])]
                + ([f"-U {url.username}"] if url.username else [])
                + [url.database]
            )
            sys.exit(
                f'setup.sh: the PostgreSQL database "{url.database}" ({variable}) does not exist: '
                f"create it with `{create}`, or set {variable} to one that exists"
            )
        sys.exit(f"setup.sh: cannot connect to {variable} ({url.render_as_string(hide_password=True)}): {reason}")
PYTHON
}

echo "== upgrading the database"
check_database DATABASE_URL
quietly "$flask" db upgrade
quietly "$flask" seed --if-empty

if [ "$mode" = test ]; then
  [ -z "${TEST_DATABASE_URL:-}" ] || check_database TEST_DATABASE_URL
  echo "== running the tests${TEST_DATABASE_URL:+ on \$TEST_DATABASE_URL}"
  exec .venv/bin/python -m pytest "$@"
fi

port=${PORT:-5000}
if "$flask" token casting-assistant >/dev/null 2>&1; then
  echo "== tokens from the local issuer (valid 24 h; 'flask token ROLE' prints more):"
  for role in casting-assistant casting-director executive-producer; do
    var=$(echo "$role" | tr a-z- A-Z_)
    echo "export ${var}_TOKEN=$("$flask" token "$role")"
  done
else
  echo "== tokens come from your Auth0 tenant (see the README)"
fi
echo "== serving on http://127.0.0.1:$port"
exec "$flask" run --host 127.0.0.1 --port "$port"
