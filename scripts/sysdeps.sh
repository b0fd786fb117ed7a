#!/usr/bin/env bash
# Installs the system libraries for offscreen MuJoCo rendering (Mesa EGL, OSMesa
# fallback) and ffmpeg, when missing and when we are root. Idempotent.
set -euo pipefail
need=()
for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libglfw3 ffmpeg; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "sysdeps: missing ${need[*]} (not root: install them yourself for offscreen rendering)" >&2
  exit 0
fi
echo "sysdeps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
