"""Generate the toy COCO instance-segmentation set used by the tests and the CPU demo.

Does nothing when the output folder already holds a set made with the same arguments.
"""
import argparse
import time

from drconv_mmdet.datasets import ensure_toy_coco


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description='Generate the deterministic toy COCO instance-segmentation set',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out-dir', default='data/toy_coco', help='folder of the set')
    parser.add_argument('--num-train', type=int, default=200, help='number of training images')
    parser.add_argument('--num-val', type=int, default=50, help='number of validation images')
    parser.add_argument('--seed', type=int, default=0, help='seed of the whole set')
    parser.add_argument('--min-size', type=int, default=128, help='smallest image side')
    parser.add_argument('--max-size', type=int, default=256, help='largest image side')
    parser.add_argument('--force',
                        action='store_true',
                        help='regenerate even if the set is up to date')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    generated = ensure_toy_coco(args.out_dir,
                                force=args.force,
                                num_train=args.num_train,
                                num_val=args.num_val,
                                min_size=args.min_size,
                                max_size=args.max_size,
                                seed=args.seed)
    if generated:
        print(f'Generated {args.num_train} train and {args.num_val} val images in '
              f'{args.out_dir} ({time.perf_counter() - start:.1f} s)')
    else:
        print(f'{args.out_dir} is up to date')


if __name__ == '__main__':
    main()
