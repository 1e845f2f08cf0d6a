"""Networks as plain nn.Modules: ResNet backbones, DeepLab v2, and the CAM / IRN heads built on them."""
