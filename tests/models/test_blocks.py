"""The oneDNN convolutions against PyTorch's own: same values, same gradients, same parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biplanar.models.blocks import OneDnnConv2d, OneDnnConv3d, conv_3d

# (input shape, output channels, stride): batch-1 sizes that PyTorch's own CPU choice sends to its
# reference kernel (N * C * H <= 20480), and one it sends to oneDNN anyway.
CASES_3D = [
    ((1, 8, 12, 20, 14), 8, 1),
    ((1, 2, 16, 24, 18), 2, 1),
    ((1, 32, 4, 7, 5), 16, 1),
    ((1, 24, 40, 30, 8), 4, 1),
]
CASES_2D = [((1, 16, 28, 20), 8, 1), ((1, 8, 56, 40), 16, 2), ((2, 3, 64, 48), 4, 2)]


def _same_as_torch(convolution: nn.Module, reference, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(shape, generator=generator, requires_grad=True)
    output = convolution(images)
    expected = reference(images, convolution.weight, convolution.bias, convolution.stride, convolution.padding)
    assert output.shape == expected.shape
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(output.shape, generator=generator)
    got = torch.autograd.grad(output, (images, convolution.weight), upstream)
    want = torch.autograd.grad(expected, (images, convolution.weight), upstream)
    for mine, theirs in zip(got, want, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("shape", "out_channels", "stride"), CASES_3D)
def test_onednn_conv3d_matches_torch(shape, out_channels, stride):
    torch.manual_seed(1)
    convolution = OneDnnConv3d(shape[1], out_channels, 3, stride=stride, padding=1)
    _same_as_torch(convolution, F.conv3d, shape)


@pytest.mark.parametrize(("shape", "out_channels", "stride"), CASES_2D)
def test_onednn_conv2d_matches_torch(shape, out_channels, stride):
    torch.manual_seed(2)
    convolution = OneDnnConv2d(shape[1], out_channels, 3, stride=stride, padding=1, bias=False)
    _same_as_torch(convolution, F.conv2d, shape)


def test_channels_last_weights_match_torch():
    torch.manual_seed(3)
    convolution = conv_3d(8, 4)
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last_3d)
    _same_as_torch(convolution, F.conv3d, (1, 8, 10, 12, 9))


def test_float64_takes_torchs_path_and_passes_gradcheck():
    torch.manual_seed(4)
    convolution = OneDnnConv3d(2, 2, 3, padding=1).double()
    images = torch.randn(1, 2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(convolution, (images,))


def test_parameters_and_checkpoints_are_torchs():
    torch.manual_seed(5)
    plain = nn.Conv3d(4, 6, 3, padding=1)
    ours = OneDnnConv3d(4, 6, 3, padding=1)
    assert list(ours.state_dict()) == list(plain.state_dict())
    ours.load_state_dict(plain.state_dict())
    images = torch.randn(1, 4, 6, 7, 5)
    torch.testing.assert_close(ours(images), plain(images), rtol=1e-5, atol=1e-5)


def test_autocast_keeps_torchs_casting():
    torch.manual_seed(6)
    convolution = OneDnnConv3d(4, 4, 3, padding=1)
    images = torch.randn(1, 4, 6, 7, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = convolution(images)
        expected = F.conv3d(images, convolution.weight, convolution.bias, padding=1)
    assert output.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(output, expected)


def test_small_batch_one_convolution_runs_on_onednn():
    """The size PyTorch would send to its reference kernel runs on oneDNN (skipped without it)."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    convolution = OneDnnConv3d(8, 8, 3, padding=1)
    images = torch.randn(1, 8, 12, 20, 14)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        convolution(images)
    kernels = {event.key for event in profile.key_averages()}
    assert "aten::mkldnn_convolution" in kernels
    assert "aten::slow_conv3d_forward" not in kernels
