"""Cutting an image into rectangles coded on their own (mspsm tiles, msr version-3 tiles)."""

from __future__ import annotations


def balanced(h: int, w: int, max_tile: int) -> tuple[int, int]:
    """Tile height and width for an h x w image: as many tiles per side as ``max_tile`` needs, of about equal size
    (576 -> 2 x 288, not 512 + 64; the last row and column at most a few pixels smaller)."""
    ny, nx = -(-h // max_tile), -(-w // max_tile)
    return -(-h // ny), -(-w // nx)


def grid(h: int, w: int, th: int, tw: int) -> list[tuple[int, int, int, int]]:
    """(y, x, height, width) of every tile of at most th x tw, raster order."""
    return [(y, x, min(th, h - y), min(tw, w - x)) for y in range(0, h, th) for x in range(0, w, tw)]
