"""CMake compiles as C++20 with a LibTorch of 2.13 or later, and as C++17 before.

LibTorch 2.13 and later stop with `#error C++20 or later compatible compiler is
required` below C++20, and their imported target does not pass the standard on. The
LibTorch here is Debian's 1.13, so the test configures the project (configure only,
no build) against a package that is Debian's with another version number.

Usage: /usr/bin/python3 cxx_standard_test.py --source DIR --torch_dir DIR
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import unittest

ARGS = None


class CxxStandardTest(unittest.TestCase):

    def configure(self, torch_version, *flags):
        """Configures the project against LibTorch `torch_version`; the standard used."""
        work = tempfile.mkdtemp(prefix="cxx_standard_test_")
        self.addCleanup(subprocess.run, ["rm", "-rf", work])
        package = os.path.join(work, "torch")
        os.mkdir(package)
        # Debian's config, found through this folder: its paths are its own.
        real_config = os.path.join(ARGS.torch_dir, "TorchConfig.cmake")
        with open(os.path.join(package, "TorchConfig.cmake"), "w") as f:
            f.write(f'include("{real_config}")\n')
        with open(os.path.join(package, "TorchConfigVersion.cmake"), "w") as f:
            f.write(f'set(PACKAGE_VERSION "{torch_version}")\n'
                    "set(PACKAGE_VERSION_COMPATIBLE TRUE)\n")
        build = os.path.join(work, "build")
        result = subprocess.run(
            ["cmake", "-S", ARGS.source, "-B", build, "-DBUILD_TESTING=OFF",
             f"-DTorch_DIR={package}", *flags],
            capture_output=True, text=True, timeout=300)
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr)
        with open(os.path.join(build, "compile_commands.json")) as f:
            units = json.load(f)
        standards = {a for u in units for a in shlex.split(u["command"])
                     if a.startswith("-std=")}
        self.assertEqual(len(standards), 1, standards)
        standard = standards.pop()
        # The configure step says which standard it picked.
        status = next((line for line in result.stdout.splitlines()
                       if "clipserve: LibTorch" in line), "")
        self.assertIn(f"clipserve: LibTorch {torch_version},", status)
        self.assertIn(f"C++{standard[-2:]}", status)
        return standard

    def test_libtorch_2_13_and_later_get_cxx20(self):
        self.assertEqual(self.configure("2.13.0"), "-std=c++20")

    def test_older_libtorch_keeps_cxx17(self):
        self.assertEqual(self.configure("2.12.1"), "-std=c++17")

    def test_a_standard_asked_for_is_kept(self):
        self.assertEqual(self.configure("1.13.0", "-DCMAKE_CXX_STANDARD=20"), "-std=c++20")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--torch_dir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
