#!/usr/bin/python3
"""Every LOG()/CHECK() in clipserve's own code is glog's, whatever LibTorch is used.

    /usr/bin/python3 tests/build/glog_not_c10_logging_test.py --build BUILD_DIR

A LibTorch built without glog (NVIDIA's and PyTorch's archives; Debian's uses glog)
defines its own LOG and CHECK in c10/util/Logging.h, and in a translation unit that
includes glog first and torch after, c10's win: LOG(INFO) is dropped and nothing
reaches the JSON log sink. Debian's build cannot show that, so this test preprocesses
every product translation unit of BUILD_DIR (its compile_commands.json) with a copy of
c10/macros/cmake_macros.h that lacks C10_USE_GLOG placed first on the include path, as
such a LibTorch has it, and fails on any line of clipserve's own sources that then
expands to c10's logger. Skips when the build has no compile_commands.json.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import unittest

ARGS = None
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MARKER = re.compile(r'# \d+ "([^"]+)"')


def product_commands(build):
    with open(os.path.join(build, "compile_commands.json"), encoding="utf-8") as f:
        commands = json.load(f)
    own = tuple(os.path.join(ROOT, d) + os.sep for d in ("server", "client"))
    return [c for c in commands if c["file"].startswith(own)]


def find_cmake_macros(commands):
    for c in commands:
        for arg in shlex.split(c["command"]):
            for prefix in ("-isystem", "-I"):
                if arg.startswith(prefix) and len(arg) > len(prefix):
                    path = os.path.join(arg[len(prefix):], "c10/macros/cmake_macros.h")
                    if os.path.exists(path):
                        return path
    for path in ("/usr/include/c10/macros/cmake_macros.h",):
        if os.path.exists(path):
            return path
    return None


def c10_logger_lines(command, overlay):
    """Lines of clipserve's sources in `command`'s translation unit that expand to
    c10's logger with `overlay` first on the include path."""
    args, skip = [], False
    for arg in shlex.split(command["command"]):
        if skip:
            skip = False
        elif arg == "-o":
            skip = True
        elif arg != "-c":
            args.append(arg)
    args = [args[0], "-I" + overlay] + args[1:] + ["-E", "-w"]
    result = subprocess.run(args, cwd=command["directory"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise AssertionError(f"{command['file']}: preprocessing failed:\n"
                             f"{result.stderr[:2000]}")
    source, line_no, found = None, 0, []
    for line in result.stdout.splitlines():
        m = MARKER.match(line)
        if m:
            source, line_no = m.group(1), int(line.split()[1]) - 1
            continue
        line_no += 1
        if source and source.startswith(ROOT + os.sep) and "::c10::MessageLogger" in line:
            found.append(f"{os.path.relpath(source, ROOT)}:{line_no}")
    return found


class GlogNotC10LoggingTest(unittest.TestCase):

    def test_own_log_lines_use_glog_under_a_libtorch_without_glog(self):
        if not os.path.exists(os.path.join(ARGS.build, "compile_commands.json")):
            self.skipTest("no compile_commands.json in " + ARGS.build)
        commands = product_commands(ARGS.build)
        self.assertGreater(len(commands), 10)
        macros = find_cmake_macros(commands)
        if macros is None:
            self.skipTest("no LibTorch headers in this build")
        with open(macros, encoding="utf-8") as f:
            without_glog = "".join(l for l in f if "define C10_USE_GLOG" not in l)
        with tempfile.TemporaryDirectory() as overlay:
            os.makedirs(os.path.join(overlay, "c10", "macros"))
            with open(os.path.join(overlay, "c10", "macros", "cmake_macros.h"), "w",
                      encoding="utf-8") as f:
                f.write(without_glog)
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
                found = [hit for hits in pool.map(
                    lambda c: c10_logger_lines(c, overlay), commands) for hit in hits]
        self.assertEqual(found, [], "LOG()/CHECK() lines that would use c10's logger "
                         "with a LibTorch built without glog: include "
                         "<c10/util/Logging.h> before glog in those files")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest])
