"""Ship the example rules and configurations (rules/) inside the wheel, as holdgate/shipped/rules.

Everything else is declared in pyproject.toml; a checkout (editable install) reads rules/ in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithRules(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "holdgate" / "shipped" / "rules"
        shutil.copytree(Path(__file__).parent / "rules", target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithRules})
