#!/usr/bin/env bash
# Downloads (here, where Debian's registry is reachable) the runtime libraries our programs load,
# into .debs/ (git-ignored), for the GPU machine, which has no package registry: carry .debs and
# build/ with the device tool and run scripts/gpu_session.sh there. Needs `apt-get update` once.
set -eu
cd "$(dirname "$0")/.."
pkgs="libzmq5 libsodium23 libpgm-5.3-0 libnorm1 libbsd0 libmd0 libmsgpackc2 libturbojpeg0 libuv1
      libcjson1 libopenblas0-openmp libgomp1 libgfortran5 libquadmath0 libcmocka0"
mkdir -p .debs
cd .debs
for p in $pkgs; do apt-get download "$p" >/dev/null 2>&1 || echo "failed: $p"; done
ls -1 *.deb | wc -l | xargs echo "debs:"
du -sh . | cut -f1 | xargs echo "size:"
