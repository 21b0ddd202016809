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
# A set-up step's output, less Alembic's INFO lines and the local issuer's
# start-up warning (the server prints that one when it starts).
quietly() {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }
  echo "$out" | grep -v -e '^INFO' -e 'LOCAL ISSUER IN USE' || true
}
echo "== upgrading the database"
quietly "$flask" db upgrade
quietly "$flask" seed --if-empty

if [ "$mode" = test ]; then
  echo "== running the tests${TEST_DATABASE_URL:+ on \$TEST_DATABASE_URL}"
  exec .venv/bin/python -m pytest "$@"
fi

port=${PORT:-5000}
if "$flask" token casting-assistant >/dev/null 2>&1; then
  echo "== tokens from the local issuer (valid 24 h; 'flask token ROLE' prints more):"
  for role in casting-assistant casting-director executive-producer; do
    var=$(echo "$role" | tr a-z- A-Z_)
    echo "export ${var}_TOKEN=$("$flask" token "$role" 2>/dev/null)"
  done
else
  echo "== tokens come from your Auth0 tenant (see the README)"
fi
echo "== serving on http://127.0.0.1:$port"
exec "$flask" run --host 127.0.0.1 --port "$port"
