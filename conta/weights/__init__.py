"""Weight files: ImageNet backbones (torchvision, hub cache, the shipped synthetic ones) and
conversions of Caffe and deeplab-pytorch files. Here, not in `conta.models`, because models know
nothing of files."""
