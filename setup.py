"""The package list: every ``zfviz*`` package, plus ``zfviz.configs`` mapped from the top-level configs/.

Everything else is in pyproject.toml; only this line cannot be said there (``packages.find`` does not
see a package whose folder lies outside ``zfviz/``).
"""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["zfviz*"], exclude=["*__pycache__*"]), "zfviz.configs"])
