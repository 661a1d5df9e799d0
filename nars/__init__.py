"""NARS: Network Architecture Recipe Search, and the FBNetV3IS instance segmentor it produces."""

__version__ = "0.1.0"
