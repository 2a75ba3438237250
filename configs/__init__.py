"""Configs: each module defines get_config(); `load_config(name_or_path)` resolves either."""
from .registry import available, load_config
from .validate import check_config

__all__ = ["available", "load_config", "check_config"]
