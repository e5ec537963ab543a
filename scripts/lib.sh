# shellcheck shell=bash
# Shared by quickstart.sh, test.sh and .ci/run: `source scripts/lib.sh; bootstrap`.
#
# bootstrap makes a machine ready, doing only what is missing, so every script can
# call it unconditionally and a second run costs seconds:
#   - a Python >= 3.11 and a virtualenv (.venv, or $REPLICATOR_VENV) with
#     replicator installed editable, plus its test and bench extras;
#   - the pinned MinIO server, mc and nats-server (scripts/install-tools.sh, cached outside the repo);
#   - rclone (the benchmarks' peer), docker-compose (the packaging tests), tinyproxy
#     (the proxy tests) and promtool (the monitoring tests; Debian's prometheus package),
#     from apt.
#
# Why a virtualenv and not the interpreter's site-packages: `pip install -e` points
# the interpreter at one checkout. CI runs in a throwaway clone; installing there
# would leave every other checkout on the machine importing a deleted directory.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="${REPLICATOR_VENV:-$ROOT/.venv}"
export REPLICATOR_TOOLS_DIR="${REPLICATOR_TOOLS_DIR:-$HOME/.cache/replicator-tools}"

if [[ -t 1 ]]; then _B=$'\033[1m' _R=$'\033[31m' _0=$'\033[0m'; else _B='' _R='' _0=''; fi

say() { printf '%s[replicator]%s %s\n' "$_B" "$_0" "$*"; }
die() { printf '%s[replicator] error:%s %s\n' "$_R" "$_0" "$*" >&2; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

_python() { # the interpreter the virtualenv is made from
  local candidate
  for candidate in ${PYTHON:-} python3 python; do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  die "Python >= 3.11 is required (set PYTHON=/path/to/python3.11 if it is not first on PATH)"
}

ensure_apt_tools() {
  local missing=()
  command -v rclone >/dev/null || missing+=(rclone)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v tinyproxy >/dev/null || missing+=(tinyproxy) # a real forward proxy, for the proxy tests
  command -v promtool >/dev/null || missing+=(prometheus)   # promtool checks deploy/'s rules and /metrics
  if ((${#missing[@]} == 0)); then
    say "rclone, docker-compose, tinyproxy, promtool: present"
    return
  fi
  command -v apt-get >/dev/null || die "missing ${missing[*]}, and no apt-get to install them with"
  say "installing ${missing[*]} with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    _stop_packaged_prometheus
  fi
}

_stop_packaged_prometheus() {
  # Debian's prometheus package starts a Prometheus server on :9090 wherever an init
  # system runs (in a container without one, invoke-rc.d can't tell the runlevel and
  # starts nothing). The tests want only its promtool.
  if [[ -d /run/systemd/system ]]; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/prometheus ]] && pgrep -x prometheus >/dev/null; then
    as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
  if pgrep -x prometheus >/dev/null; then
    say "warning: a prometheus server still runs after installing promtool; stop it if it is not yours"
  fi
}

ensure_venv() {
  if [[ ! -x $VENV/bin/python ]]; then
    local py
    py=$(_python)
    say "creating a virtualenv in $VENV ($("$py" --version))"
    "$py" -m venv "$VENV"
  fi
  "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$VENV has Python < 3.11; remove it and run again"
  # Reinstall when pyproject.toml changes (a new dependency) or the venv belongs to
  # another checkout; otherwise pip would spend its time confirming what is there.
  local stamp="$VENV/.replicator-install" want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $ROOT"
  if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]] && "$VENV/bin/python" -c 'import replicator' 2>/dev/null; then
    say "python packages: installed ($VENV)"
    return
  fi
  say "installing replicator and its test and bench extras into $VENV"
  # PYTHONWARNINGS reaches the build backend too: its deprecation notices about
  # pyproject.toml fill a screen per install; `pip install -e .` by hand shows them.
  PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q --upgrade pip
  PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q -e "$ROOT[test,bench]"
  echo "$want" >"$stamp"
}

ensure_tools() {
  # Go is often installed without being put on PATH.
  if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  local bin
  bin=$(bash "$ROOT/scripts/install-tools.sh")
  export PATH="$bin:$PATH"
}

bootstrap() {
  if [[ ${REPLICATOR_BOOTSTRAPPED:-} == "$ROOT" ]]; then
    return # a parent script already did it, and exported the result
  fi
  ensure_apt_tools
  ensure_venv
  ensure_tools
  export VIRTUAL_ENV="$VENV"
  export PATH="$VENV/bin:$PATH"
  export REPLICATOR_BOOTSTRAPPED="$ROOT"
  say "ready: $(python --version), minio and mc in $REPLICATOR_TOOLS_DIR/bin"
}
