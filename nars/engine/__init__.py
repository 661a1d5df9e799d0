"""Training, evaluation and inference of FBNetV3IS (``nars train``, ``nars eval``, ``nars predict``)."""
