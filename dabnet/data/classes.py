"""Class names, colours and normalisation statistics of the datasets dabnet knows."""

from __future__ import annotations

from typing import List, Tuple

CAMVID_CLASSES: List[str] = [
    "Sky", "Building", "Pole", "Road", "Sidewalk", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip
# The SegNet colour code for these classes.
CAMVID_PALETTE: List[Tuple[int, int, int]] = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
CAMVID_IGNORE_INDEX = 11
# RGB mean and std (0-255) of the 367 CamVid train frames in ../shared/data/camvid.
CAMVID_MEAN: Tuple[float, float, float] = (105.03, 108.41, 110.33)
CAMVID_STD: Tuple[float, float, float] = (78.30, 79.46, 78.34)

CITYSCAPES_CLASSES: List[str] = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]  # fmt: skip
CITYSCAPES_PALETTE: List[Tuple[int, int, int]] = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip
CITYSCAPES_IGNORE_INDEX = 255
# Cityscapes labelId of each of the 19 train ids (the official benchmark's mapping).
CITYSCAPES_TRAIN_TO_LABEL_ID: List[int] = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
# ImageNet statistics, the usual normalisation for Cityscapes.
IMAGENET_MEAN: Tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: Tuple[float, float, float] = (58.395, 57.12, 57.375)


def default_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """A distinct colour per class for datasets that bring none (golden-angle hues)."""
    import colorsys

    colours = []
    for i in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours
