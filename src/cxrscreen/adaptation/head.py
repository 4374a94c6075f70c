"""A head for the site's classes, initialised from the parent model's head.

When the site merges some of the model's classes (``covid,other`` from ``covid,normal,viral``), the merged class's
row is the mean of the rows it is made of and its bias the ``logsumexp`` of their biases: where the rows agree, the
merged logit is exactly the ``logsumexp`` of their logits, i.e. the merged class's probability is the sum of its
parts'. It is a start for fine-tuning, never a random head.
"""

from __future__ import annotations

import numpy as np
import torch

from cxrscreen.models.registry import XrayClassifier


def merged_head(model: XrayClassifier, merge: np.ndarray) -> XrayClassifier:
    """``model`` with its head replaced by one of ``merge.shape[1]`` classes (in place; returned for chaining).

    ``merge`` (C_model, C_site) is 0/1 with one 1 per row (see
    :func:`cxrscreen.evaluation.evaluate.class_merge_matrix`); an identity matrix keeps the head as it is.
    """
    old = model.head
    merge_t = torch.as_tensor(merge, dtype=old.weight.dtype)
    counts = merge_t.sum(dim=0)
    # log(sum_i exp(b_i)) over each merged class's rows; -inf masks the rows of other classes.
    masked_bias = old.bias[:, None].expand_as(merge_t).masked_fill(merge_t == 0, -torch.inf)
    new = torch.nn.Linear(old.in_features, merge_t.shape[1])
    with torch.no_grad():
        new.weight.copy_((merge_t.T @ old.weight) / counts[:, None])
        new.bias.copy_(torch.logsumexp(masked_bias, dim=0))
    model.head = new
    return model
