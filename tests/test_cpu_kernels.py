"""The memory-layout guard against oneDNN's AVX2 strided-1x1 weight-gradient defect.

oneDNN 3.12 (torch 2.13) writes past a workspace in the weight gradient of a strided 1x1
convolution whose channels-last input has 2 to 7 channels, on CPUs whose best ISA is AVX2
(docs/cpu-notes.md). ``ONEDNN_MAX_CPU_ISA=AVX2`` makes oneDNN pick that kernel on any x86
CPU, so these tests run the dangerous shape the way an AVX2-only machine does, in a
subprocess, so that a heap corruption fails one test instead of aborting the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from facepoints_lib.core.model import ModelConfig, build_model, memory_format_for

from conftest import tiny_model_config

# The tests' narrowest network: its stage-1 projection is a stride-2 1x1 convolution
# reading 4 channels, the shape that breaks.
NARROW = ModelConfig(image_size=32, stem_width=4, widths=(4, 8, 8, 8), depths=(1, 1, 1, 1),
                     decoder_width=4, hidden=8, dropout=0.0)

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@pytest.mark.parametrize("channels, stride, expected", [
    (1, 2, torch.channels_last),           # one channel: no blocking problem
    (2, 2, torch.contiguous_format),
    (7, 2, torch.contiguous_format),
    (4, 4, torch.contiguous_format),
    (8, 2, torch.channels_last),           # a whole AVX2 block
    (4, 1, torch.channels_last),           # stride 1: the kernel needs no strided workspace
])
def test_memory_format_avoids_strided_1x1_convolutions_on_2_to_7_channels(channels, stride, expected):
    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.Conv2d(channels, 8, 1, stride))
    assert memory_format_for(net) == expected


def test_memory_format_of_the_recipe_and_the_test_networks():
    assert memory_format_for(build_model(ModelConfig())) == torch.channels_last
    assert memory_format_for(build_model(tiny_model_config())) == torch.channels_last
    assert memory_format_for(build_model(NARROW)) == torch.contiguous_format


_GRADIENTS = """
import json, sys, torch
from facepoints_lib.core.model import ModelConfig, build_model, memory_format_for
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
cfg = ModelConfig(**json.loads(sys.argv[2]))
model = build_model(cfg).train()
reference = build_model(cfg).train()
reference.load_state_dict(model.state_dict())
layout = memory_format_for(model)
model = model.to(memory_format=layout)
worst = 0.0
for step in range(8):
    images = torch.rand(8, 3, cfg.image_size, cfg.image_size)
    model.zero_grad(); reference.zero_grad()
    model(images.contiguous(memory_format=layout)).sum().backward()
    with torch.backends.mkldnn.flags(enabled=False):   # the reference: ATen's own kernels
        reference(images).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        scale = q.grad.abs().max().item()
        if scale > 1e-6:
            worst = max(worst, (p.grad - q.grad).abs().max().item() / scale)
print(json.dumps({"worst": worst, "layout": str(layout)}))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_narrow_network_gradients_are_right_with_the_avx2_kernels(threads):
    """Without the guard this aborts (1 thread) or gives gradients off by ~100 % (2 threads)."""
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in NARROW.__dict__.items()}
    proc = subprocess.run([sys.executable, "-c", _GRADIENTS, str(threads), json.dumps(config)],
                          env={**os.environ, **AVX2_ENV}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["worst"] < 1e-3, result
    assert result["layout"] == "torch.contiguous_format"
