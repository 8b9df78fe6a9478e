"""Evaluation-time caching of class text features.

Prompt learners without image-conditioned prompts produce the same text features for every
test image, so an evaluation encodes them once (CoOp-family code re-encodes them for every
test batch). Training never uses the cache: the prompts change after every step.
"""

from contextlib import contextmanager

import torch


class CachedTextFeatures:
    """Mixin for models with a `compute_text_features()` method that does not see images."""

    _text_cache = None

    def text_features(self):
        if self._text_cache is not None:
            return self._text_cache
        return self.compute_text_features()

    @contextmanager
    def cached_text_features(self):
        with torch.no_grad():
            self._text_cache = self.compute_text_features()
        try:
            yield
        finally:
            self._text_cache = None
