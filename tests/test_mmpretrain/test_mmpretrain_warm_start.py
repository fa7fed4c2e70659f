"""Warm start: a plain mmpretrain ImageClassifier checkpoint (``backbone.``/``neck.``/``head.``
keys, as mmpretrain's pretrained ShuffleNetV2 and MobileNetV2 are) becomes a checkpoint of the
DRConv config through tools/model_converters/plain_to_drconv.py, equal at load; a checkpoint of
another architecture or width is refused."""
import re
import sys

import pytest
import torch
from helpers import REPO_ROOT, run_tool

pytest.importorskip('mmpretrain',
                    reason='needs mmpretrain and torchvision: make setup-compat '
                    'installs them (the torch 2.13 CPU wheel cannot load torchvision)')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

from drconv_mmdet.nn import DRConv2d  # noqa: E402

TOOL = 'tools/model_converters/plain_to_drconv.py'
CONFIGS = 'configs/mmpretrain'
PAIRS = {
    'shufflenet-v2-0.5x':
    ('shufflenet-v2-0.5x_16xb64-240e_in1k.py', 'shufflenet-v2-0.5x-drconv-8r_16xb64-240e_in1k.py'),
    'mobilenet-v2':
    ('mobilenet-v2_16xb64-240e_in1k.py', 'mobilenet-v2-drconv-8r_16xb64-240e_in1k.py'),
}
SHUFFLENET_1X = 'shufflenet-v2-1x_16xb64-240e_in1k.py'


def _build(config: str):
    cfg = Config.fromfile(str(REPO_ROOT / CONFIGS / config))
    init_default_scope(cfg.default_scope)
    return MODELS.build(cfg.model)


def _plain_checkpoint(config: str, path) -> torch.nn.Module:
    """A randomly initialised plain classifier, saved as mmpretrain saves its checkpoints."""
    torch.manual_seed(0)
    model = _build(config)
    model.init_weights()
    for name, tensor in model.state_dict().items():
        if name.endswith('running_mean'):
            tensor.normal_(0, 0.1)
        elif name.endswith('running_var'):
            tensor.uniform_(0.5, 1.5)
    torch.save(dict(meta=dict(mmpretrain_version='1.2.0'), state_dict=model.state_dict()),
               str(path))
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize('network', sorted(PAIRS))
def test_plain_checkpoint_starts_the_drconv_config(network, tmp_path):
    plain_config, drconv_config = PAIRS[network]
    plain = _plain_checkpoint(plain_config, tmp_path / 'plain.pth')
    out = tmp_path / 'drconv.pth'
    result = run_tool(sys.executable, TOOL, str(tmp_path / 'plain.pth'),
                      f'{CONFIGS}/{drconv_config}', str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    model = _build(drconv_config)
    state = torch.load(str(out), map_location='cpu')['state_dict']
    model.load_state_dict(state, strict=True)
    model.eval()
    started = sum(isinstance(m, DRConv2d) for m in model.modules())
    assert f'{started} DRConv layers start from the plain convs' in result.stdout
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain(images), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('plain_config, message', [
    (SHUFFLENET_1X, r'backbone\.layers\.0\.0\.branch1\.1\.conv\.weight has shape \(58, 24, 1, 1\), '
     r'but the DRConv at backbone\.layers\.0\.0\.branch1\.1\.conv needs a conv weight of shape '
     r'\(24, 24, 1, 1\)'),
    (PAIRS['mobilenet-v2'][0], r'the plain checkpoint has no backbone\.layers\.0\.0\.branch1\.1\.'
     r'conv\.weight: no conv at the DRConv position'),
])
def test_checkpoint_of_another_network_is_refused(plain_config, message, tmp_path):
    _plain_checkpoint(plain_config, tmp_path / 'plain.pth')
    result = run_tool(sys.executable, TOOL, str(tmp_path / 'plain.pth'),
                      f'{CONFIGS}/{PAIRS["shufflenet-v2-0.5x"][1]}', str(tmp_path / 'out.pth'))
    assert result.returncode == 1
    assert re.search(message, result.stderr), result.stderr[-3000:]
    assert not (tmp_path / 'out.pth').exists()
