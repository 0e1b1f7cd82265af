"""pixark.dataset: an archive as a training dataset (random access, a torch IterableDataset, Ray Data).

    from pixark.dataset import Archive, TorchDataset, DataLoader, read_pixark

Reading archives is pipeline work; the code lives in ``pixark.pipeline.dataset`` (docs/DATASET.md).
"""

from pixark.pipeline.dataset import (META_COLUMNS, Archive, CorruptRecord, DataLoader, NotByteExact, TorchDataset,
                                     collate, read_pixark)

__all__ = ["Archive", "TorchDataset", "DataLoader", "collate", "read_pixark", "CorruptRecord", "NotByteExact",
           "META_COLUMNS"]
