#!/usr/bin/env bash
# Installs every build and test dependency of effdet-c from Debian's packages. Used by both README
# commands and by .ci/run. Idempotent: it skips apt entirely when everything is already present.
set -eu
pkgs="build-essential pkg-config libzmq3-dev libmsgpack-dev libturbojpeg0-dev libjpeg62-turbo-dev
      libuv1-dev libcjson-dev libpng-dev libopenblas-openmp-dev libcmocka-dev valgrind"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "deps: installing$missing"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
