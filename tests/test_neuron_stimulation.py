"""benchmarks.neuron_stimulation raises one channel at a time and counts where the images go."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmarks.neuron_stimulation import LEVELS, label_scores, pair_scores, stimulation_counts


def wired_model() -> nn.Sequential:
    """Two channels of one convolutional stage: channel 0 feeds label 2 alone; channel 1's map splits images between
    labels 0 and 1 by where it is bright, and raised evenly it ties them (argmax: label 0)."""
    conv = nn.Conv2d(1, 2, kernel_size=1)
    linear = nn.Linear(2 * 4 * 4, 3)
    with torch.no_grad():
        conv.weight.fill_(0.1)
        conv.bias.zero_()
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
        linear.weight[2, :16] = 1.0  # channel 0's map -> label 2
        linear.weight[0, 16:] = torch.linspace(-1, 1, 16)  # channel 1's map splits images between labels 0 and 1
        linear.weight[1, 16:] = -torch.linspace(-1, 1, 16)
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear)


def test_a_channel_wired_to_a_label_sends_every_other_image_there():
    torch.manual_seed(0)
    model = wired_model().eval()
    images = torch.rand(6, 1, 4, 4)
    sources = model(images).argmax(dim=1).numpy()
    tables = stimulation_counts(model, model, images, sources, 3)

    assert len(tables) == 1 and tables[0].shape == (2, len(LEVELS), 3, 3)
    assert tables[0].sum() == 2 * len(LEVELS) * len(images)  # every image lands somewhere at every channel and level
    raised_zero = tables[0][0]  # level, source, label
    assert (raised_zero[:, :, 2].sum(axis=1) == len(images)).all()  # every image to label 2 at every level

    scores = label_scores(tables, sources, 3)
    # label 2 through channel 0; label 0 through channel 1 too, as natural classes did on the zoo's small networks
    assert scores.tolist() == [1.0, 0.0, 1.0]

    pairs = pair_scores(tables, sources, 3)
    assert np.isnan(np.diag(pairs)).all()
    # channel 0 moves every source alike, so no pair into label 2 is specific to its source
    assert np.nanmax(np.abs(pairs[:, 2])) < 1e-9
