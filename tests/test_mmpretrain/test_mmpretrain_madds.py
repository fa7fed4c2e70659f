"""MADDs of the Table 1 networks at 224 x 224, counted by drconv_mmdet.analysis, against the
paper's figures, and the table of docs/classification.md as the counter gives it."""
from functools import partial

import pytest
import torch
from helpers import REPO_ROOT

pytest.importorskip('mmpretrain',
                    reason='needs mmpretrain and torchvision: make setup-compat '
                    'installs them (the torch 2.13 CPU wheel cannot load torchvision)')

from mmengine.analysis import parameter_count  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

from drconv_mmdet.analysis import DRCONV_OP_NAME, MaddAnalyzer  # noqa: E402
from drconv_mmdet.nn import DRConv2d  # noqa: E402

CONFIGS = REPO_ROOT / 'configs' / 'mmpretrain'
# Table 1: (name in the docs, baseline MADDs, DRConv MADDs), millions.
TABLE_1 = {
    'shufflenet-v2-0.5x': ('ShuffleNetV2 0.5x', 42, 46),
    'shufflenet-v2-1x': ('ShuffleNetV2 1x', 147, 157),
    'mobilenet-v2': ('MobileNetV2 1x', 300, 328),
}


def _count(config: str) -> dict:
    """Total MADDs of the classifier on one 224 x 224 image, its DRConvs' guide convs and filter
    generators, and its parameters."""
    cfg = Config.fromfile(str(CONFIGS / config))
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    model.forward = partial(model.forward, mode='tensor')
    analyzer = MaddAnalyzer(model, torch.rand(1, 3, 224, 224))
    with torch.no_grad():
        madds = analyzer.by_module()
    by_operator = analyzer.by_module_and_operator()
    guide = generator = 0
    for name, module in model.named_modules():
        if isinstance(module, DRConv2d):
            generator += madds[f'{name}.generator']
            guide += madds[name] - madds[f'{name}.generator'] - by_operator[name][DRCONV_OP_NAME]
    assert not analyzer.unsupported_ops()
    return dict(total=madds[''],
                guide=guide,
                generator=generator,
                params=parameter_count(model)[''])


@pytest.mark.slow
@pytest.mark.parametrize('network', sorted(TABLE_1))
def test_madds_against_table_1(network):
    name, paper_plain, paper_drconv = TABLE_1[network]
    plain = _count(f'{network}_16xb64-240e_in1k.py')
    drconv = _count(f'{network}-drconv-8r_16xb64-240e_in1k.py')
    assert plain['guide'] == plain['generator'] == 0
    # One conv per output pixel: the region-wise convs cost what the plain 1x1 convs cost.
    assert drconv['total'] - drconv['guide'] - drconv['generator'] == plain['total']
    assert plain['total'] / 1e6 == pytest.approx(paper_plain, rel=0.05)
    # The paper's figure counts the guide convs, not the generators' per-image products.
    without_generators = drconv['total'] - drconv['generator']
    assert without_generators / 1e6 == pytest.approx(paper_drconv, rel=0.05)
    row = (f'| {name} | {paper_plain} | {plain["total"] / 1e6:.1f} | {plain["params"] / 1e6:.2f} '
           f'| {paper_drconv} | {without_generators / 1e6:.1f} | {drconv["guide"] / 1e6:.1f} '
           f'| {drconv["generator"] / 1e6:.1f} | {drconv["total"] / 1e6:.1f} '
           f'| {drconv["params"] / 1e6:.2f} |')
    assert row in (REPO_ROOT / 'docs' / 'classification.md').read_text(), row
