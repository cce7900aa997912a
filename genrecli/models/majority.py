"""``majority``: the floor every report shows -- the most frequent training class (label frequencies for multi-label).

Scores are the training frequencies of the classes, the same for every track, so ``predict`` gives the most
frequent class and a multi-label ranking orders labels by frequency (its macro AUC is 0.5).
"""

from __future__ import annotations

import numpy as np

from genrecli.models.base import GenreModel


class MajorityModel(GenreModel):
    """The most frequent training class; takes any inputs and only uses their row count."""

    def fit(self, inputs, y, *, validation=None):
        self.input_names_ = self._check_inputs(inputs, fitting=True)
        y = np.asarray(y)
        self.multilabel_ = y.ndim == 2
        if self.multilabel_:
            self.classes_ = np.arange(y.shape[1])
            self.prior_ = y.astype(np.float64).mean(axis=0).astype(np.float32)
        else:
            self.classes_, counts = np.unique(y, return_counts=True)
            self.prior_ = (counts / counts.sum()).astype(np.float32)
        return self

    def decision_function(self, inputs) -> np.ndarray:
        self._check_inputs(inputs, fitting=False)
        scores = np.broadcast_to(self.prior_, (self._n_rows(inputs), len(self.prior_))).copy()
        # multi-label: positive score = predicted present; only labels on more than half the tracks
        return scores - 0.5 if self.multilabel_ else scores

    def get_state(self):
        return {"prior": self.prior_}

    def set_state(self, state, meta):
        super().set_state(state, meta)
        self.prior_ = np.asarray(state["prior"], dtype=np.float32)
        return self
