"""The FBNetV3IS model: architecture specs, FBNet blocks, builder, segmentor, costs, weights."""
