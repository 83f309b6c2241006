"""Packaging beyond pyproject.toml: the wheel carries firmware/ and boards/ as host_tools/_data/.

The CLI needs both (`fota build --board sim` freezes firmware/, every command reads boards/);
host_tools/resources.py finds them there in an installed wheel and beside host_tools/ in a checkout.
An editable install copies nothing (the checkout is the data).
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("firmware", "boards", "examples")  # examples: `make demo` runs examples/sensor
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


class BuildPyWithData(build_py):
    """build_py, then firmware/ and boards/ copied to host_tools/_data/ in the build tree."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = os.path.dirname(os.path.abspath(__file__))
        for name in DATA_DIRS:
            target = os.path.join(self.build_lib, "host_tools", "_data", name)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(os.path.join(root, name), target, ignore=SKIP)


setup(cmdclass={"build_py": BuildPyWithData})
