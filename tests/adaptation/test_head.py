"""The site's head starts from the parent's: merged classes sum the probabilities of their parts."""

from __future__ import annotations

import torch
from torch import nn

from cxrscreen.adaptation.head import merged_head
from cxrscreen.data.labels import LabelSet
from cxrscreen.evaluation.evaluate import class_merge_matrix


class ToyModel(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)


def test_merging_agreeing_rows_gives_the_sum_of_their_probabilities():
    torch.manual_seed(0)
    weight = torch.randn(3, 8)
    weight[2] = weight[1]  # normal and viral rows agree (biases differ): the merge is exact
    bias = torch.tensor([0.3, -0.2, 0.5])
    merge = class_merge_matrix(["covid", "normal", "viral"], LabelSet.parse("covid,other"))
    features = torch.randn(5, 8)
    parent_probs = torch.softmax(features @ weight.T + bias, dim=1)
    model = merged_head(ToyModel(weight, bias), merge)
    probs = torch.softmax(model.head(features), dim=1)
    assert model.head.out_features == 2
    torch.testing.assert_close(probs[:, 0], parent_probs[:, 0])
    torch.testing.assert_close(probs[:, 1], parent_probs[:, 1] + parent_probs[:, 2])


def test_merged_row_is_the_mean_of_its_parts_and_other_rows_are_kept():
    weight, bias = torch.randn(3, 4), torch.randn(3)
    merge = class_merge_matrix(["covid", "normal", "viral"], LabelSet.parse("covid,other"))
    head = merged_head(ToyModel(weight, bias), merge).head
    torch.testing.assert_close(head.weight[0], weight[0])
    torch.testing.assert_close(head.weight[1], (weight[1] + weight[2]) / 2)
    torch.testing.assert_close(head.bias[1], torch.logsumexp(bias[1:], dim=0))


def test_the_same_classes_keep_the_head():
    weight, bias = torch.randn(3, 4), torch.randn(3)
    merge = class_merge_matrix(["covid", "normal", "viral"], LabelSet.parse("covid,normal,viral"))
    head = merged_head(ToyModel(weight, bias), merge).head
    torch.testing.assert_close(head.weight, weight)
    torch.testing.assert_close(head.bias, bias)
