"""Data for FBNetV3IS: COCO-format datasets, the synthetic shapes generator, and loaders."""
