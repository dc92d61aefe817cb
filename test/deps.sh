#!/usr/bin/env bash
# Installs the Debian 12 packages that building, testing and the demo need,
# and only those that are missing (apt-get runs only when something is).
set -euo pipefail

pkgs=(make gcc pkg-config postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap
      libtap-parser-sourcehandler-pgtap-perl libcurl4-openssl-dev python3 curl openssl nginx)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "lava: missing packages: ${missing[*]} (run as root to install them)" >&2
		exit 1
	fi
	echo "lava: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# the tests start nginx on ports of their own: the system service that
	# installing the package may have started (on port 80) is not wanted
	if [[ " ${missing[*]} " == *" nginx "* ]] && [ -s /run/nginx.pid ]; then
		/usr/sbin/nginx -s quit 2>/dev/null || true
	fi
fi
