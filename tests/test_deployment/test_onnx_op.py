"""The DRConv op and layer exported to ONNX (standard ops only) and run by ONNX Runtime."""
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from helpers import NEEDS_DYNAMO_EXPORTER, make_args

from drconv_mmdet.deployment import check_standard_ops, export_onnx
from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.nn.adaptive_pooling import adaptive_avg_pool2d_lowered
from drconv_mmdet.ops import dr_conv2d, dr_conv2d_reference
from drconv_mmdet.ops.onnx_lowering import dr_conv2d_lowered

# (kernel, stride, padding, dilation, regions)
GEOMETRIES = [(3, 2, 1, 1, 4), (1, 1, 0, 1, 1), (3, 1, 2, 2, 4), (1, 2, 0, 1, 4)]
# Exports are slow: stride, padding and dilation in one case.
EXPORT_GEOMETRIES = [(3, 2, 2, 2, 4), (1, 1, 0, 1, 1)]
# The dynamo exporter takes seconds per file: the fast lane exports with the TorchScript one.
EXPORTERS = [pytest.param('dynamo', marks=[NEEDS_DYNAMO_EXPORTER, pytest.mark.slow]), 'torchscript']
# (batch, height, width): the export example first, then other sizes through the same file.
SIZES = [(2, 9, 7), (1, 13, 16), (3, 6, 11)]


def _op_inputs(batch, height, width, geometry, dtype=torch.float32, seed=0):
    """(input, weight, guide, bias) of 3 -> 5 channels for ``(kernel, stride, padding,
    dilation, regions)``."""
    *geo, regions = geometry
    return make_args(batch,
                     regions,
                     geo,
                     dtype,
                     seed,
                     channels=3,
                     out_channels=5,
                     size=(height, width))[:4]


def _run(path, names, inputs):
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})


@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_lowering_equals_reference(geometry):
    kernel, stride, padding, dilation, regions = geometry
    x, weight, guide, bias = _op_inputs(2, 9, 7, geometry, dtype=torch.float64)
    x = x.to(memory_format=torch.channels_last)
    expected = dr_conv2d_reference(x, weight, guide, bias, stride, padding, dilation)
    actual = dr_conv2d_lowered(x, weight, guide, bias, stride, padding, dilation)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_lowering_without_bias_and_non_contiguous_input():
    x, weight, guide, _ = _op_inputs(2, 7, 9, (3, 1, 1, 1, 4), dtype=torch.float64)
    x = x.transpose(2, 3).contiguous().transpose(2, 3)
    expected = dr_conv2d_reference(x, weight, guide, None, 1, 1, 1)
    torch.testing.assert_close(dr_conv2d_lowered(x, weight, guide, None, 1, 1, 1),
                               expected,
                               rtol=1e-12,
                               atol=1e-12)


def test_lowering_batch_zero():
    x, weight, guide, bias = _op_inputs(0, 9, 7, (3, 2, 1, 1, 4))
    assert dr_conv2d_lowered(x, weight, guide, bias, 2, 1, 1).shape == (0, 5, 5, 4)


@pytest.mark.parametrize('size', [(10, 8), (7, 11), (3, 3), (2, 5)])
def test_adaptive_pool_lowering(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool2d_lowered(x, (3, 3)),
                               F.adaptive_avg_pool2d(x, (3, 3)),
                               rtol=1e-12,
                               atol=1e-12)


class _Op(torch.nn.Module):

    def __init__(self, stride, padding, dilation):
        super().__init__()
        self.geometry = (stride, padding, dilation)

    def forward(self, x, weight, guide, bias):
        return dr_conv2d(x, weight, guide, bias, *self.geometry)


@pytest.mark.parametrize('exporter', EXPORTERS)
@pytest.mark.parametrize('geometry', EXPORT_GEOMETRIES)
def test_op_export_runs_in_onnxruntime(tmp_path, exporter, geometry):
    path = str(tmp_path / 'op.onnx')
    names = ['x', 'weight', 'guide', 'bias']
    dynamic_axes = {
        'x': {
            0: 'batch',
            2: 'height',
            3: 'width'
        },
        'weight': {
            0: 'batch'
        },
        'guide': {
            0: 'batch',
            2: 'out_height',
            3: 'out_width'
        }
    }
    module = _Op(*geometry[1:4])
    export_onnx(module,
                _op_inputs(*SIZES[0], geometry),
                path,
                names, ['y'],
                dynamic_axes,
                exporter=exporter)
    ops = check_standard_ops(path)
    assert 'MatMul' in ops and 'NonZero' in ops and 'Conv' not in ops
    for i, size in enumerate(SIZES):
        inputs = _op_inputs(*size, geometry, seed=i)
        if i == 1 and geometry[4] > 1:
            # A region empty in every sample (the export example had none empty).
            inputs[2][:, 1] -= 100
        (actual, ) = _run(path, names, inputs)
        torch.testing.assert_close(torch.from_numpy(actual), module(*inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('exporter', EXPORTERS)
@pytest.mark.parametrize('layer_args', [
    dict(kernel_size=3, stride=2, padding=1, region_num=4, generator='paper'),
    dict(kernel_size=1, region_num=4, generator='basis', num_bases=3),
])
def test_layer_export_runs_in_onnxruntime(tmp_path, exporter, layer_args):
    torch.manual_seed(0)
    layer = DRConv2d(3, 5, **layer_args).eval()
    path = str(tmp_path / 'layer.onnx')
    export_onnx(layer, (torch.randn(2, 3, 10, 8), ),
                path, ['x'], ['y'], {'x': {
                    0: 'batch',
                    2: 'height',
                    3: 'width'
                }},
                exporter=exporter)
    check_standard_ops(path)
    for size in SIZES:
        x = torch.randn(size[0], 3, *size[1:])
        (actual, ) = _run(path, ['x'], (x, ))
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(actual), layer(x), rtol=1e-5, atol=1e-5)


def test_unknown_exporter_is_reported(tmp_path):
    with pytest.raises(ValueError, match="exporter must be one of .* but got 'jit'"):
        export_onnx(_Op(1, 0, 1),
                    _op_inputs(1, 4, 4, (1, 1, 0, 1, 1)),
                    str(tmp_path / 'a.onnx'), ['x', 'weight', 'guide', 'bias'], ['y'], {},
                    exporter='jit')


def test_non_standard_ops_are_reported(tmp_path):
    from onnx import TensorProto, helper
    node = helper.make_node('MMCVRoiAlign', ['x'], ['y'], domain='mmcv')
    graph = helper.make_graph([node], 'g',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid('', 18),
                              helper.make_opsetid('mmcv', 1)])
    path = str(tmp_path / 'custom.onnx')
    onnx.save(model, path)
    with pytest.raises(ValueError,
                       match=r"ops outside the default ONNX domain: \['mmcv::MMCVRoiAlign'\]"):
        check_standard_ops(path)
