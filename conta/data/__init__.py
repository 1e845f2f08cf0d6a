"""Datasets (VOC layout, COCO, folders of tagged images, the synthetic default) and transforms."""
