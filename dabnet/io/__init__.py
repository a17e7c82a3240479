"""Bytes in and out: checkpoints, images and video, pixel conversion, colouring; may import models and util."""
