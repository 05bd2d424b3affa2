#!/usr/bin/env bash
# Installs the command-line tools `make test` and `make demo` need when they are missing, so
# both commands work on a fresh machine with only Rust, Python 3 with pip and a C compiler.
# Usage: ensure-tools.sh TOOL=DEBIAN_PACKAGE ...
# TOOL is a command, or an absolute path the package installs (a library's sources).
# A missing tool is installed with apt-get (after one `apt-get update`) when running as root
# on a Debian-like system; otherwise the script stops with the package to install.
# (Python tools — moto_server, kubernetes-validate, tritonclient — live in the project venv,
# installed from scripts/requirements.txt; Azurite comes from its npm lock file.)
set -euo pipefail
missing=()
for spec in "$@"; do
  tool=${spec%%=*} pkg=${spec#*=}
  if [[ $tool == /* ]]; then
    [[ -e $tool ]] || missing+=("$pkg")
  else
    command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-tools: installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "ensure-tools: missing tools; install these packages: ${missing[*]}" >&2
  exit 1
fi
