"""The segmenter's ONNX export runs its PReLUs as LeakyRelu (issue 17: ONNX Runtime keeps its blocked layout through
them, 5.5 instead of 7.2 ms per image on one thread) and gives the PRelu graph's probabilities to the bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from cxrscreen.data.imageio import load_xray
from cxrscreen.lungs import segmenter
from cxrscreen.lungs.network import LungProbabilityNet, build_network, with_leaky_relus
from cxrscreen.lungs.weights import DEFAULT_WEIGHTS
from cxrscreen.models.onnx import cpu_session, traced_onnx


def test_leaky_export_gives_the_prelu_graphs_probabilities(shared_data: Path):
    net, info = build_network(DEFAULT_WEIGHTS)
    x = torch.rand(3, 1, 64, 64)
    with torch.inference_mode():
        np.testing.assert_array_equal(with_leaky_relus(net)(x).numpy(), net(x).numpy())
    assert any(isinstance(m, torch.nn.PReLU) for m in net.modules())  # the copy's, not the network's

    exported = segmenter.exported_segmenter(DEFAULT_WEIGHTS)
    ops = {node.op_type for node in onnx.load(str(exported)).graph.node}
    assert "LeakyRelu" in ops and "PRelu" not in ops

    radiography = shared_data / "COVID-19_Radiography_Dataset"
    files = [p for folder in ("COVID", "Normal", "Viral Pneumonia")
             for p in sorted((radiography / folder / "images").glob("*.jpg"))[3:600:40]]
    files += sorted((shared_data / "chest_xray").rglob("*.jpg"))[11:4000:400]
    files += sorted((shared_data / "covid-chestxray-dataset" / "images").glob("*.jpg"))[1:500:50]
    leaky = segmenter.load_segmenter(backend="onnx", threads=1)
    batch = leaky.network_input([load_xray(p) for p in files])
    size = info["arch"]["img_size"]
    prelu_graph = traced_onnx(LungProbabilityNet(net), torch.rand(2, 1, size, size), ("lung_probability",))
    prelu = segmenter.session_predictor(cpu_session(prelu_graph, 1))  # as the PRelu graph ran before
    for start in range(0, len(batch), 32):
        np.testing.assert_array_equal(leaky.predict_probs(batch[start : start + 32]), prelu(batch[start : start + 32]))


class CountingSession:
    """An ONNX Runtime session that counts its runs and the images of each."""

    def __init__(self, session):
        self.session = session
        self.batches: list[int] = []

    def run(self, outputs, feeds):
        self.batches.append(len(next(iter(feeds.values()))))
        return self.session.run(outputs, feeds)


def test_a_one_thread_segmenter_runs_one_image_at_a_time_with_the_batchs_probabilities(shared_data: Path):
    files = sorted((shared_data / "COVID-19_Radiography_Dataset" / "COVID" / "images").glob("*.jpg"))[:4]
    files += sorted((shared_data / "covid-chestxray-dataset" / "images").glob("*.jpg"))[:3]
    graph = segmenter.exported_segmenter(DEFAULT_WEIGHTS)
    session = CountingSession(cpu_session(graph, 1, disabled=segmenter.UNFUSED))
    batch = segmenter.load_segmenter(backend="onnx", threads=1).network_input([load_xray(p) for p in files])
    whole = segmenter.session_predictor(session)(batch)
    assert session.batches == [7]
    one_at_a_time = segmenter.session_predictor(session, threads=1)(batch)
    assert session.batches[1:] == [segmenter.ONE_THREAD_CHUNK] * 7
    np.testing.assert_array_equal(one_at_a_time, whole)
    segmenter.session_predictor(session, threads=2)(batch)
    assert session.batches[-1] == 7  # more threads: the batch whole
