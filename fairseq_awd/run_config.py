"""The run's configuration seen from one of its groups."""

from typing import Any, Optional

from omegaconf import DictConfig


def run_config(cfg: Any) -> Optional[DictConfig]:
    """The whole run configuration that ``cfg`` belongs to: fairseq passes components a group
    of it (``cfg.task``, ``cfg.optimizer``, ...), whose omegaconf root is the run's (with
    ``common``, ``task``, ...). None for a configuration that is not an omegaconf one (a
    component built directly from its dataclass); a detached group is its own root."""
    return cfg._get_root() if isinstance(cfg, DictConfig) else None
