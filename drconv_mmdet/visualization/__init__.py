from .guided_masks import REGION_PALETTE, colorize_regions, crop_to_image, draw_guided_mask

__all__ = ['REGION_PALETTE', 'colorize_regions', 'crop_to_image', 'draw_guided_mask']
