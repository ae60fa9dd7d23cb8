"""Configuration: typed dataclass <-> dict helpers and dotted overrides (:mod:`.typed`); the presets that build a
``TrainerConfig`` for a capture (:mod:`.presets`, imported on its own: it depends on the trainer)."""

from nerf_mapping.config.typed import from_dict, override, to_dict

__all__ = ["from_dict", "override", "to_dict"]
