"""Training the learned codecs (``pixark train`` is a thin command over it): data (``data``), the plug-in
interface each codec provides (``hooks``), plain-data checkpoints (``checkpoint``) and the loop (``loop``)."""

from . import checkpoint
from .data import TrainingError, list_images, load_rgb
from .loop import export_checkpoint, train

__all__ = ["TrainingError", "checkpoint", "export_checkpoint", "list_images", "load_rgb", "train"]
