"""tools/detectron2/train_net.py on the toy COCO set: train, checkpoint, resume, evaluate."""
import importlib.util
import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip('detectron2',
                    reason='detectron2 is not installed; `make setup-core` builds it '
                    'from its source tarball into .venv-core')
# Training runs and a subprocess.
pytestmark = pytest.mark.slow

from d2_helpers import REPO_ROOT, TOY_CONFIG  # noqa: E402

from drconv_mmdet.nn import DRConv2d  # noqa: E402

TRAIN_NET = REPO_ROOT / 'tools' / 'detectron2' / 'train_net.py'


def load_train_net():
    spec = importlib.util.spec_from_file_location('drconv_train_net', TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = load_train_net()


def tiny_args(toy_root, out_dir, max_iter, *extra):
    """The toy config shrunk to seconds: 128 px, batch 2, a few iterations, no workers."""
    return train_net.parse_args([
        '--config-file',
        str(TOY_CONFIG),
        '--toy-coco-root',
        toy_root,
        *extra,
        'OUTPUT_DIR',
        str(out_dir),
        'SOLVER.MAX_ITER',
        str(max_iter),
        'SOLVER.IMS_PER_BATCH',
        '2',
        'SOLVER.CHECKPOINT_PERIOD',
        '2',
        'SOLVER.WARMUP_ITERS',
        '2',
        'SOLVER.STEPS',
        '(1000,)',
        'INPUT.MIN_SIZE_TRAIN',
        '(128,)',
        'INPUT.MAX_SIZE_TRAIN',
        '128',
        'INPUT.MIN_SIZE_TEST',
        '128',
        'INPUT.MAX_SIZE_TEST',
        '128',
        'DATALOADER.NUM_WORKERS',
        '0',
        # Every box counts, so that a barely trained model still has detections to score.
        'MODEL.ROI_HEADS.SCORE_THRESH_TEST',
        '0.0'
    ])


@pytest.fixture(scope='module')
def trained(toy_coco_root, tmp_path_factory):
    """A trainer that ran 4 iterations (and the evaluation detectron2 runs at the end)."""
    out_dir = tmp_path_factory.mktemp('d2_train')
    cfg = train_net.setup(tiny_args(toy_coco_root, out_dir, 4))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer, out_dir


def test_losses_are_finite_and_every_drconv_parameter_learns(trained):
    trainer, _ = trained
    losses = [value for value, _ in trainer.storage.history('total_loss').values()]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    drconvs = {name: m for name, m in trainer.model.named_modules() if isinstance(m, DRConv2d)}
    assert sorted(drconvs) == ['backbone.fpn_output2', 'backbone.fpn_output3']
    for name, layer in drconvs.items():
        for param_name, param in layer.named_parameters():
            assert param.grad is not None, f'{name}.{param_name} got no gradient'
            assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, \
                f'{name}.{param_name}'


def test_checkpoints_and_resume(trained, toy_coco_root):
    _, out_dir = trained
    assert {'model_0000001.pth', 'model_0000003.pth',
            'model_final.pth'} <= {p.name
                                   for p in out_dir.iterdir()}
    assert (out_dir / 'last_checkpoint').read_text() == 'model_final.pth'
    cfg = train_net.setup(tiny_args(toy_coco_root, out_dir, 6))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 4
    final = torch.load(out_dir / 'model_final.pth', map_location='cpu')['model']
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, final[key], rtol=0, atol=0)
    trainer.train()
    assert [it for _, it in trainer.storage.history('total_loss').values()] == [4, 5]
    assert (out_dir / 'model_0000005.pth').is_file()


def test_eval_only_returns_coco_bbox_and_segm_ap(trained, toy_coco_root):
    _, out_dir = trained
    results = train_net.main(
        tiny_args(toy_coco_root, out_dir / 'eval', 4, '--eval-only', 'MODEL.WEIGHTS',
                  str(out_dir / 'model_final.pth')))
    assert set(results) == {'bbox', 'segm'}
    for task in ('bbox', 'segm'):
        assert {'AP', 'AP50', 'AP75'} <= set(results[task])
        assert all(0 <= results[task][k] <= 100 for k in ('AP', 'AP50', 'AP75')), results[task]


def test_command_line_eval_only(trained, toy_coco_root):
    _, out_dir = trained
    args = [
        '--config-file',
        str(TOY_CONFIG), '--toy-coco-root', toy_coco_root, '--eval-only', 'MODEL.WEIGHTS',
        str(out_dir / 'model_final.pth'), 'OUTPUT_DIR',
        str(out_dir / 'cli'), 'INPUT.MIN_SIZE_TEST', '128', 'INPUT.MAX_SIZE_TEST', '128',
        'DATALOADER.NUM_WORKERS', '0'
    ]
    result = subprocess.run([sys.executable, str(TRAIN_NET), *args],
                            cwd=REPO_ROOT,
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'copypaste: Task: bbox' in log and 'copypaste: Task: segm' in log, log[-3000:]
