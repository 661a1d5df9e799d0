"""Joint architecture + training-recipe search spaces for FBNetV3IS, declared in YAML.

``load_space("fbnetv3is_quick")`` (a shipped name or a path) gives a ``SearchSpace``:
candidates (plain dicts) to configs and back, ids, costs, encodings; ``sample`` draws
candidates under MFLOPs / params limits.
"""

from search_spaces.sampling import METHODS, Sample, sample
from search_spaces.space import SPACE_DIR, SearchSpace, load_space

__all__ = ["METHODS", "SPACE_DIR", "Sample", "SearchSpace", "load_space", "sample"]
