#!/usr/bin/env bash
# Compiles every translation unit of the configured release build (syntax only)
# against a newer LibTorch's headers than Debian bookworm's 1.13: those of Debian
# unstable's libtorch-dev (2.14 when this was written), which need C++20.
#
#   scripts/check-libtorch-headers.sh            # all translation units, C++20
#   scripts/check-libtorch-headers.sh --cuda     # also server/model/device.cc with
#                                                # CUDA on (headers of Debian's
#                                                # nvidia-cuda-dev, a 0.9 GB download)
#   scripts/check-libtorch-headers.sh --libstdcxx=13   # with libstdc++ 13's headers
#
# Why: the GPU machine builds against the LibTorch inside its CUDA build of PyTorch
# (scripts/gpu-check.sh), a 2.x, and compiles with a newer GCC; a LibTorch API that
# changed, or a header our code forgot, fails there, where a rebuild costs scarce GPU
# time. This finds them here. It needs a configured build/ (cmake --preset release;
# its compile_commands.json gives the commands) and Debian's archive; it installs
# nothing: the packages are unpacked under build/libtorch-headers.
set -euo pipefail
shopt -s inherit_errexit  # failures inside $(...) stop the script too
cd "$(dirname "$0")/.."
root=$PWD
cuda=0
libstdcxx=
for arg in "$@"; do
  case $arg in
    --cuda) cuda=1 ;;
    --libstdcxx=*) libstdcxx=${arg#--libstdcxx=} ;;
    *) echo "usage: $0 [--cuda] [--libstdcxx=VERSION]" >&2; exit 2 ;;
  esac
done
[ -f build/compile_commands.json ] || {
  echo "check-libtorch-headers: no build/compile_commands.json; run cmake --preset release" >&2
  exit 1
}
work=$root/build/libtorch-headers
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
# Debian unstable (newest LibTorch, libstdc++) and its contrib/non-free (CUDA headers).
cat >"$work/sources.list" <<'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main contrib non-free
EOF
apt_options=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
  -o Dir::State::status=/dev/null -o APT::Sandbox::User=root)
apt-get "${apt_options[@]}" update >"$work/apt.log" 2>&1 || {
  tail -5 "$work/apt.log"; exit 1; }

# unpack PACKAGE: downloads the archive's current version of it (once) and prints the
# folder it is unpacked in.
unpack() {
  local version
  version=$(apt-cache "${apt_options[@]}" show --no-all-versions "$1" 2>/dev/null |
    sed -n 's/^Version: //p') || version=
  [ -n "$version" ] || { echo "check-libtorch-headers: no package $1" >&2; return 1; }
  local dir=$work/x/$1_${version//:/%}
  if [ ! -d "$dir" ]; then
    rm -rf "$work/debs/$1" "$dir.tmp"
    mkdir -p "$work/debs/$1" "$dir.tmp"
    (cd "$work/debs/$1" && apt-get "${apt_options[@]}" download "$1=$version") \
      >>"$work/apt.log" 2>&1 || {
      echo "check-libtorch-headers: cannot download $1 (see $work/apt.log)" >&2
      return 1
    }
    dpkg -x "$work/debs/$1/"*.deb "$dir.tmp"
    rm -rf "$work/debs/$1"
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

torch=$(unpack libtorch-dev)/usr/include
echo "LibTorch headers from Debian unstable's libtorch-dev: ${torch%/usr/include}"
extra=()
if [ -n "$libstdcxx" ]; then
  std=$(unpack "libstdc++-$libstdcxx-dev")/usr/include
  extra+=(-nostdinc++ -isystem "$std/c++/$libstdcxx"
    -isystem "$std/x86_64-linux-gnu/c++/$libstdcxx")
  echo "libstdc++ $libstdcxx headers"
fi

cuda_include=
if [ $cuda = 1 ]; then
  cuda_include=$(unpack nvidia-cuda-dev)/usr/include
  # A CPU LibTorch lacks the header its CUDA build generates; it defines one macro.
  mkdir -p "$work/cuda-stub/c10/cuda/impl"
  echo '#define C10_CUDA_BUILD_SHARED_LIBS' \
    >"$work/cuda-stub/c10/cuda/impl/cuda_cmake_macros.h"
  echo "CUDA headers from Debian unstable's nvidia-cuda-dev"
fi

CUDA_INCLUDE=$cuda_include CUDA_STUB=$work/cuda-stub \
  /usr/bin/python3 - "$torch" "${extra[@]}" <<'EOF'
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys

torch, extra = sys.argv[1], sys.argv[2:]
cuda = os.environ["CUDA_INCLUDE"]
api = "/usr/include/torch/csrc/api/include"  # bookworm's, in the build's commands


def rewrite(command, defines=()):
    args, out = shlex.split(command), []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-o", "-MF", "-MT", "-include"):  # outputs; the PCH of bookworm's headers
            i += 2
            continue
        if a in ("-c", "-MD", "-Winvalid-pch"):
            i += 1
            continue
        if a.startswith("-std="):
            a = "-std=c++20"
        if a == api:
            a = f"{torch}/torch/csrc/api/include"
            out += [a, "-isystem", torch]
            i += 1
            continue
        out.append(a)
        i += 1
    return out + list(defines) + extra + ["-fsyntax-only"]


units = json.load(open("build/compile_commands.json"))
jobs = [(u["file"], rewrite(u["command"]), u["directory"]) for u in units]
if cuda:
    device = next(u for u in units if u["file"].endswith("server/model/device.cc"))
    jobs.append(("device.cc with CUDA", rewrite(device["command"], [
        "-DCLIPSERVE_WITH_CUDA=1", "-isystem", os.environ["CUDA_STUB"],
        "-isystem", cuda]), device["directory"]))


def check(job):
    name, command, directory = job
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True)
    return name, result.returncode, result.stderr


failed = 0
with concurrent.futures.ThreadPoolExecutor(2) as pool:
    for name, code, errors in pool.map(check, jobs):
        if code != 0:
            failed += 1
            print(f"FAILED {name}\n{errors[:4000]}", flush=True)
print(f"{len(jobs)} translation units, {failed} failed")
sys.exit(1 if failed else 0)
EOF
