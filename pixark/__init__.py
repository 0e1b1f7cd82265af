"""pixark: lossless archiving of image datasets with learned and classical codecs.

Subpackages: ``pixark.codec`` (one image <-> one bitstream), ``pixark.pipeline`` (many images <-> shards on
any fsspec store, on Ray), ``pixark.jobs`` (archive, verify, restore, audit, bench, train; the CLI).
"""

__version__ = "0.1.0"
