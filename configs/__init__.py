"""Not code: marks configs/ as the package ``zfviz.configs`` (pyproject.toml maps it), so an installed
zfviz finds its YAML files through the import system, in a wheel and in an editable install alike."""
