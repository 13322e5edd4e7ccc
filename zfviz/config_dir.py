"""Where the YAML configs are: the package ``zfviz.configs`` (the commands' Hydra apps and the library read them)."""

from __future__ import annotations

from importlib import resources


def config_dir() -> str:
    """The folder of the package ``zfviz.configs``: the repository's configs/, mapped there by pyproject.toml.

    A wheel installs it as ``zfviz/configs/``; an editable install points the package at the source
    folder. Found through the import system, so it does not matter where the package lies or the cwd.
    """
    try:
        return str(resources.files("zfviz.configs"))
    except ModuleNotFoundError:  # an editable install made before configs/ became a package
        raise ImportError(
            "zfviz.configs is not installed; reinstall zfviz: make install, or pip install -e ."
        ) from None


# An absolute path: Hydra's config_path, initialize_config_dir and the YAML readers all take it.
CONFIG_DIR = config_dir()
