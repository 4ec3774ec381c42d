"""Where LF-ViT's regions and tokens lie: the coarse h1 x h1 grid of the half-resolution image,
its m x m windows (numbered row-major by their top-left corner), the fine 2h1 x 2h1 grid, and pixel
boxes (ymin, xmin, ymax, xmax; max exclusive) of the full image. Array operators only (plus `xp`
for concatenation), so the same arithmetic serves numpy on the host and jnp under jit.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Grid:
    h1: int  # coarse grid side
    m: int  # region side, in coarse tokens
    patch: int  # patch size of the full-resolution image, in pixels

    @property
    def windows_per_side(self):
        return self.h1 - self.m + 1

    def corner(self, region):
        """(row, col) of window `region`'s top-left coarse token."""
        return region // self.windows_per_side, region % self.windows_per_side

    def window_of_corner(self, row, col):
        return row * self.windows_per_side + col

    def window_tokens(self, region):
        """(..., m*m) coarse indices inside window `region`, row-major."""
        i, j = self.corner(region)
        offsets = np.array([a * self.h1 + b for a in range(self.m) for b in range(self.m)],
                           np.int32)
        return (i * self.h1 + j)[..., None] + offsets

    def fine_children(self, coarse, xp=np):
        """(..., 4k) fine indices of the four children of coarse tokens (..., k), as
        [top-left | top-right | bottom-left | bottom-right], each quarter in `coarse` order."""
        h2 = 2 * self.h1
        top_left = 2 * (coarse // self.h1) * h2 + 2 * (coarse % self.h1)
        return xp.concatenate([top_left, top_left + 1, top_left + h2, top_left + h2 + 1], axis=-1)

    def region_boxes(self, region):
        """Pixel boxes (..., 4) of windows `region`."""
        i, j = self.corner(np.asarray(region))
        step = 2 * self.patch
        return np.stack([i * step, j * step, (i + self.m) * step, (j + self.m) * step], axis=-1)

    def centre_hits(self, region, bbox):
        """Whether each window contains the centre of the object's box (N, 4)."""
        box, bbox = self.region_boxes(region), np.asarray(bbox)
        cy, cx = (bbox[:, 0] + bbox[:, 2]) / 2, (bbox[:, 1] + bbox[:, 3]) / 2
        return (box[:, 0] <= cy) & (cy < box[:, 2]) & (box[:, 1] <= cx) & (cx < box[:, 3])

    def contains(self, region, bbox):
        """Whether each window contains the object's whole box (a stricter hit)."""
        return _inside(self.region_boxes(region), np.asarray(bbox))

    def any_window_contains(self, bbox):
        """Whether some window contains the whole box: the best any region choice can do."""
        windows = self.region_boxes(np.arange(self.windows_per_side ** 2))
        return _inside(windows[None], np.asarray(bbox)[:, None]).any(axis=1)


def _inside(outer, inner):
    """Whether boxes `inner` (..., 4) lie wholly inside `outer`; both max-exclusive."""
    return ((outer[..., 0] <= inner[..., 0]) & (outer[..., 1] <= inner[..., 1])
            & (inner[..., 2] <= outer[..., 2]) & (inner[..., 3] <= outer[..., 3]))
